"""attention_scores: the scores against a hand computation from the model's own
attention probabilities, the scalings' effect, plots and the CLI."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import probe
from probe.analysis.attention import attention_scores
from probe.analysis.plots import plot_attention
from probe.cli.attention import main as attention_cli
from probe.train.config import FinetuneConfig


@pytest.fixture(scope="module")
def setting():
    dsd = probe.render("aba_vs_abb", n_train=32, n_val=4, n_test=24, seed=0)
    tok = probe.data.dataset_tokenizer(dsd)
    model = probe.build_model(
        "gpt2",
        task=probe.get_task("aba_vs_abb"),
        tokenizer=tok,
        pretrained=False,
        n_layer=2,
        n_embd=16,
        n_head=2,
        seed=0,
    ).eval()
    return dsd, model


def hand_equality(model, dsd) -> np.ndarray:
    """[layers, heads]: the score from output_attentions, position by position."""
    rows = dsd["test"]
    ids = torch.tensor(rows["input_ids"])
    mask = torch.tensor(rows["attention_mask"])
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    model.set_attn_implementation("sdpa")
    total, count = np.zeros((len(att), att[0].shape[1])), 0
    readout = np.zeros_like(total)
    for b in range(ids.shape[0]):
        text = rows[b]["text"].split()  # the symbols; position len(text) is the readout
        for layer, a in enumerate(att):
            readout[layer] += a[b, :, len(text), : len(text)].sum(-1).numpy() / ids.shape[0]
        for q in range(len(text)):
            same = [k for k in range(q) if text[k] == text[q]]  # causal: earlier keys only
            if not same:
                continue
            count += 1
            for layer, a in enumerate(att):
                probs = a[b, :, q, : q + 1].numpy()  # [heads, keys q sees]
                total[layer] += probs[:, same].sum(-1) - len(same) / (q + 1)
    return total / count, readout


def test_equality_score_matches_a_hand_computation(setting):
    dsd, model = setting
    df = attention_scores(model, dsd, max_samples=None, batch_size=7)  # batches cut mid-split
    assert df["queries"].iloc[0] == 24  # one per row: the last token repeats an earlier one
    got = df.pivot(index="layer", columns="head", values="equality_score").to_numpy()
    equality, readout = hand_equality(model, dsd)
    np.testing.assert_allclose(got, equality, atol=1e-5)
    got = df.pivot(index="layer", columns="head", values="readout_to_symbols").to_numpy()
    np.testing.assert_allclose(got, readout, atol=1e-5)
    maps = df.attrs["maps"]
    assert sorted(df.attrs["templates"].values()) == ["a b a", "a b b"]
    assert np.allclose(maps[0].sum(-1)[..., :4], 1.0)  # each query row is a distribution


def test_a_negative_kq_scaling_avoids_the_equal_token(setting):
    dsd, model = setting
    model = copy.deepcopy(model)
    probe.inject_ab(model, kq=True, vo=False)
    with torch.no_grad():  # no positions: in layer 0 equal tokens have equal X
        model.transformer.wpe.weight.zero_()
    try:
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "a") and isinstance(m.a, torch.nn.Parameter):
                    m.a.fill_(-50.0)  # a_h X Xᵀ: equal tokens have the largest products
        df = attention_scores(model, dsd)
    finally:
        probe.remove_ab(model)
    # layer 0 reads the embeddings: in `a b a` the last `a` sees 3 keys, uniform attention
    # puts 1/3 on the first `a`, the head puts ~0 there (and on itself)
    first = df[df["layer"] == 0]
    np.testing.assert_allclose(first["equality_score"], -1 / 3, atol=1e-3)
    np.testing.assert_allclose(first["self_mass"], 0.0, atol=1e-3)


def test_plots_show_scores_and_maps(setting):
    dsd, model = setting
    df = attention_scores(model, dsd)
    fig = plot_attention(df)
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (2, 2)  # layers x heads
    assert np.allclose(image, df.pivot(index="layer", columns="head", values="equality_score"))
    assert fig.axes[0].get_title() == "gpt2 (from scratch): equality_score on data"
    fig = plot_attention(df, layer=1, head=0)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a b a", "a b b"]
    # a colour bar for the maps, and a title naming the model
    assert fig.axes[2].get_ylabel() == "attention probability"
    assert fig._suptitle.get_text() == "gpt2 (from scratch): layer 1, head 0: mean attention"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "a", "out"]
    with pytest.raises(ValueError, match="outside the model's 2 layers x 2 heads"):
        plot_attention(df, layer=5, head=0)
    with pytest.raises(ValueError, match="unknown score 'nope'"):
        plot_attention(df, "nope")


def test_cli_on_a_run_folder_renders_the_runs_own_data(tmp_path, capsys):
    run = tmp_path / "run"
    probe.finetune(
        FinetuneConfig(
            n_train=16,
            n_val=0,
            n_test=8,
            max_steps=2,
            n_layer=1,
            n_embd=16,
            n_head=2,
            ab="kq",
            save_model=True,
            progress=False,
            output_dir=str(run),
        )
    )
    attention_cli(["--model", str(run), "--out", str(tmp_path / "att")])
    files = sorted(p.name for p in (tmp_path / "att").iterdir())
    assert files[:3] == [
        "attention.csv",
        "heatmap_equality_score.png",
        "heatmap_readout_to_symbols.png",
    ]
    assert "samples" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        attention_cli(["--model", str(tmp_path / "att"), "--out", str(tmp_path / "x")])


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run saved with --save-model at probe finetune's own sizes (n_val 4, not the
    1000 of `probe data render`)."""
    run = tmp_path_factory.mktemp("fit") / "run"
    config = FinetuneConfig(
        n_train=16,
        n_val=4,
        n_test=8,
        max_steps=1,
        n_layer=1,
        n_embd=16,
        n_head=2,
        save_model=True,
        progress=False,
        output_dir=str(run),
    )
    probe.finetune(config)
    return run, config


def test_data_that_overruns_the_models_vocabulary_is_one_line_naming_the_fix(saved_run, tmp_path):
    run, config = saved_run
    model = probe.load_injected(run / "model")
    rows = model.get_input_embeddings().num_embeddings
    # "the same task at the same n", at probe data render's default sizes
    other = probe.render(config.task, n_train=16, n_val=1000, n_test=1000, seed=0)
    with pytest.raises(
        ValueError, match=rf"reach \d+ \(split 'test'\).* embeds {rows} ids.*--from-run"
    ):
        attention_scores(model, other)
    probe.save_dataset(other, tmp_path / "other", "aba_vs_abb")
    with pytest.raises(ValueError, match="probe data render --from-run RUN"):
        attention_cli(
            [
                "--model",
                str(run / "model"),
                "--dataset",
                str(tmp_path / "other"),
                "--out",
                str(tmp_path / "att"),
            ]
        )
    # data that fits runs; a selection is checked on its own rows
    attention_scores(model, probe.run_folder_dataset(run), max_samples=4)
    attention_scores(model, other["train"].select(range(4)), max_samples=4)


def test_render_from_run_gives_exactly_the_runs_data(saved_run, tmp_path, capsys):
    from probe.cli import main as cli

    run, config = saved_run
    cli(["data", "render", "--from-run", str(run), "--out", str(tmp_path / "d")])
    assert "the data of run" in capsys.readouterr().out
    mine = probe.load_dataset(tmp_path / "d", "aba_vs_abb")
    same = probe.run_folder_dataset(run / "model")  # the model/ folder names its run too
    assert {s: mine[s]["input_ids"] for s in mine} == {s: same[s]["input_ids"] for s in same}
    assert [mine[s].num_rows for s in ("train", "validation", "test")] == [16, 4, 8]
    attention_cli(
        [
            "--model",
            str(run / "model"),
            "--dataset",
            str(tmp_path / "d"),
            "--max-samples",
            "4",
            "--out",
            str(tmp_path / "att"),
        ]
    )
    with pytest.raises(SystemExit):  # --task with --from-run: the run fixes it
        cli(
            [
                "data",
                "render",
                "--from-run",
                str(run),
                "--task",
                "copy",
                "--out",
                str(tmp_path / "e"),
            ]
        )
    assert "drop --task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["data", "render", "--out", str(tmp_path / "e")])
    assert "pass --task and --n-train (or --from-run RUN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["data", "render", "--from-run", str(tmp_path), "--out", str(tmp_path / "e")])
    assert "is no run folder" in capsys.readouterr().err


def test_attention_on_a_checkpoint_names_its_run_folder(saved_run, tmp_path, capsys):
    run, _ = saved_run
    step = run / "checkpoints" / "step-1"
    assert step.is_dir()
    with pytest.raises(
        FileNotFoundError, match=f"training checkpoint .*pass its run folder '{run}'"
    ):
        attention_cli(["--model", str(step), "--out", str(tmp_path / "att")])
