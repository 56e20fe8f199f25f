"""linear_probe: a planted signal is found at its layer and the shuffled control stays at
chance; a random model does not read same_different off unseen symbols; the random twin,
the feature cache, symbolic labels, bad inputs and the CLI."""

from __future__ import annotations

import pytest
import torch

import probe
from probe.analysis.linear_probe import linear_probe
from probe.cli.linear_probe import main as linear_probe_cli
from probe.cli.linear_probe import parse_layers
from probe.models.build import fresh_weights

N = 160  # rows per split: chance is 0.5 +- about 0.08 (two standard errors)


@pytest.fixture(scope="module")
def same_different():
    dsd = probe.render("same_different", n_train=N, n_val=0, n_test=N, seed=0)
    tok = probe.data.dataset_tokenizer(dsd)
    return dsd, tok


def tiny_gpt2(tok, task="same_different", n_layer=3, seed=0):
    return probe.build_model(
        "gpt2",
        task=probe.get_task(task),
        tokenizer=tok,
        pretrained=False,
        n_layer=n_layer,
        n_embd=16,
        n_head=2,
        seed=seed,
    ).eval()


def plant_equality(model, block: int, scale: float = 20.0):
    """After ``block``, add ±scale along one direction to every position: + when the row's
    first two tokens are equal. hidden_states[block + 1] on carry the label linearly."""
    seen = {}
    direction = torch.zeros(model.config.n_embd)
    direction[0] = scale

    def remember(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    def add(module, args, output):
        ids = seen["ids"]
        sign = (ids[:, 0] == ids[:, 1]).float() * 2 - 1  # [batch]
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + sign[:, None, None] * direction
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    model.register_forward_pre_hook(remember, with_kwargs=True)
    model.transformer.h[block].register_forward_hook(add)
    return model


def test_a_planted_signal_is_found_at_its_layer_and_the_control_stays_at_chance(same_different):
    dsd, tok = same_different
    model = plant_equality(tiny_gpt2(tok), block=1)
    df = linear_probe(model, dsd, control="shuffle").set_index("layer")
    assert list(df.index) == [0, 1, 2, 3]  # the embeddings, then after each block
    assert (df.loc[[0, 1], "test"] < 0.62).all(), df  # before the plant: nothing
    assert (df.loc[[2, 3], "test"] > 0.97).all(), df  # the plant and after it
    assert (df.loc[[2, 3], "train"] > 0.97).all(), df
    assert (df["control_test"].between(0.38, 0.62)).all(), df  # shuffled labels: chance
    assert (df.loc[[2, 3], "selectivity"] > 0.35).all(), df
    assert (df["metric"] == "accuracy").all() and (df["n_test"] == N).all()


def test_a_random_model_is_at_chance_on_same_different(same_different):
    dsd, tok = same_different
    df = linear_probe(tiny_gpt2(tok, seed=1), dsd, control=None)
    assert {"control_test", "random_test"}.isdisjoint(df.columns)
    assert df["test"].between(0.38, 0.62).all(), df
    assert df["chance"].between(0.4, 0.6).all()


def test_the_random_twin_has_fresh_weights_drawn_under_the_seed(same_different):
    dsd, tok = same_different
    model = plant_equality(tiny_gpt2(tok), block=1)  # the twin has no hooks: no signal
    twin, again = fresh_weights(model, seed=3), fresh_weights(model, seed=3)
    emb = model.get_input_embeddings().weight
    assert not torch.equal(twin.get_input_embeddings().weight, emb)
    for a, b in zip(twin.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert 0.8 < twin.get_input_embeddings().weight.std() < 1.2  # build_model's N(0, 1)
    df = linear_probe(model, dsd, layers=[3], control="random", seed=3)
    assert df["test"].iloc[0] > 0.97 and df["random_test"].iloc[0] < 0.62, df
    paper = probe.build_model("paper", task=probe.get_task("same_different"), tokenizer=tok)
    paper_twin = fresh_weights(paper, seed=0)
    assert paper_twin.config.is_causal is False
    assert not paper_twin.transformer.ln_f.weight.requires_grad  # the paper's constraints


def test_features_are_computed_once_per_model_and_split(same_different):
    dsd, tok = same_different
    model = tiny_gpt2(tok, n_layer=1)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    linear_probe(model, dsd, control=None, batch_size=N)
    first = len(calls)
    assert first == 2  # train and test, one batch each
    df = linear_probe(model, dsd, control=None, n_train=40, layers=[1], batch_size=N)
    assert len(calls) == first and df["n_train"].iloc[0] == 40


def test_symbolic_labels_are_scored_over_the_rows_candidates():
    dsd = probe.render("var_copy", n_train=96, n_val=0, n_test=64, seed=0)
    tok = probe.data.dataset_tokenizer(dsd)
    model = tiny_gpt2(tok, task="var_copy", n_layer=1)
    df = linear_probe(model, dsd, control="shuffle")
    assert (df["metric"] == "accuracy").all() and df["test"].between(0, 1).all()
    assert df["chance"].between(0.4, 0.7).all()  # two answers: print a, print b
    copy = probe.render("copy", n_train=16, n_val=0, n_test=8, seed=0)
    with pytest.raises(ValueError, match="one candidate"):
        linear_probe(tiny_gpt2(probe.data.dataset_tokenizer(copy), "copy", 1), copy)


def test_bad_inputs_are_refused_before_any_work(same_different):
    dsd, tok = same_different
    model = tiny_gpt2(tok, n_layer=1)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    cases = [
        (dict(position="first"), "position='first'.*'readout'"),
        (dict(layers=[5]), "layers: 5 is out of range.*0..1"),
        (dict(layers=["1"]), "'1' is not an integer"),
        (dict(control="permute"), "control='permute'.*'random'"),
        (dict(n_train=N + 1), f"n_train={N + 1}.*has {N} rows"),
        (dict(n_train=0), "n_train"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            linear_probe(model, dsd, **kwargs)
    with pytest.raises(ValueError, match="'train' and 'test' splits"):
        linear_probe(model, dsd["test"])
    with pytest.raises(ValueError, match="MLP"):
        linear_probe(probe.build_model("mlp", task=probe.get_task("same_different")), dsd)
    small = probe.build_model(
        "gpt2", task=probe.get_task("same_different"), pretrained=False, n_layer=1,
        n_embd=8, n_head=2, vocab_size=4,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"reach \d+ \(split 'train'\) but the model embeds 4 ids"):
        linear_probe(small, dsd)
    message = str(pytest.raises(ValueError, linear_probe, small, dsd).value)
    assert "the dataset's tokenizer is 'SymbolTokenizer'" in message
    assert "--from-run RUN" in message and "tokenizer=probe.dataset_tokenizer(dsd)" in message
    assert not calls


def test_cli_writes_the_table_and_the_plot(tmp_path, capsys):
    out = tmp_path / "probe"
    linear_probe_cli(
        "--model small-gpt2 --task aba_vs_abb --n-train 48 --n-test 32 --layers 0-2 "
        f"--control shuffle --out {out}".split()
    )
    for name in ("linear_probe.csv", "linear_probe.md", "linear_probe.png"):
        assert (out / name).stat().st_size > 0
    assert "selectivity" in (out / "linear_probe.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_name_the_value_and_the_fix(tmp_path):
    assert parse_layers("0,2-4") == [0, 2, 3, 4] and parse_layers(None) is None
    with pytest.raises(ValueError, match="'x'.*'0-12'"):
        parse_layers("0,x")
    with pytest.raises(ValueError, match="same_diferent.*same_different"):
        linear_probe_cli(f"--model small-gpt2 --task same_diferent --out {tmp_path / 'o'}".split())
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="--n-train"):
        linear_probe_cli(f"--model small-gpt2 --task copy --n-train 0 --out {tmp_path}".split())
    with pytest.raises(SystemExit):  # argparse: a choice it does not know
        linear_probe_cli(f"--model small-gpt2 --task copy --control none --out {tmp_path}".split())


SHAPES = {
    "bert": dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32),
    "t5": dict(num_layers=1, d_model=16, num_heads=2, d_kv=8, d_ff=32),
    "llama": dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32),
}


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_every_architecture_gives_a_row_per_layer(arch, same_different):
    dsd, tok = same_different
    task = probe.get_task("same_different")
    model = probe.build_model(arch, task=task, tokenizer=tok, pretrained=False, **SHAPES[arch])
    df = linear_probe(model, dsd, control="random", n_train=64)
    assert list(df["layer"]) == [0, 1]  # an encoder-decoder: its encoder's states
    assert df[["test", "random_test"]].notna().all().all()
