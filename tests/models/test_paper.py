"""probe.models.paper: the official template-task transformer built from GPT-2, on tiny widths."""

from __future__ import annotations

import pytest
import torch

from probe import get_task
from probe.analysis.diagonal import attn_diagonal
from probe.data.tokenizer import SymbolTokenizer
from probe.models.build import build_model, readout
from probe.models.identity import inject_ab, load_injected
from probe.models.paper import D_HEAD, PAPER
from probe.train.config import FinetuneConfig
from probe.train.plan import plan_run
from probe.train.run import finetune
from probe.train.setup import build_run_model, load_run_data

TINY = dict(n_layer=2, n_embd=64)  # d_head 64: one head


def tokenizer(n_symbols: int = 20) -> SymbolTokenizer:
    return SymbolTokenizer.build([], n_symbols)


def paper(task="same_different", **overrides):
    return build_model(
        PAPER, task=get_task(task), tokenizer=tokenizer(), seed=0, **{**TINY, **overrides}
    )


def hidden(model, ids):
    model.eval()
    with torch.no_grad():
        return model.transformer(input_ids=ids).last_hidden_state


def test_the_preset_is_the_official_shape():
    model = paper(n_embd=128)
    cfg = model.config
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert (cfg.n_head, cfg.n_embd // cfg.n_head) == (2, D_HEAD)  # d_head 64 by default
    assert (cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop) == (0.0, 0.0, 0.0)
    assert cfg.activation_function == "gelu" and cfg.is_causal is False
    assert cfg.n_positions == 3  # the two-token template and the readout token
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        *(f"transformer.h.{i}.attn.{m}.bias" for i in (0, 1) for m in ("c_attn", "c_proj")),
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
    }
    for name in frozen:
        param = model.get_parameter(name)
        assert torch.all(param == (1.0 if name.endswith("ln_f.weight") else 0.0))
    wte = model.transformer.wte.weight
    assert 0.8 < wte.std().item() < 1.2  # N(0, 1) embeddings
    # PyTorch's nn.Linear init, U(±1/sqrt(fan_in)), not GPT-2's N(0, 0.02)
    w = model.transformer.h[0].mlp.c_fc.weight
    assert w.abs().max().item() <= 1 / 128**0.5 and w.std().item() > 0.03
    # explicit heads still win
    assert paper(n_embd=128, n_head=4).config.n_head == 4


@pytest.mark.parametrize(
    "overrides, message",
    [({"n_embd": 100}, "not a multiple of the paper's d_head 64"), ({"n_head": 3}, "n_head=3")],
)
def test_shapes_gpt2_cannot_build_are_refused_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        paper(**overrides)


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "probe_ab"])
def test_attention_is_bidirectional(implementation):
    model = paper(attn_implementation=None if implementation == "probe_ab" else implementation)
    if implementation == "probe_ab":
        inject_ab(model, kq=True, vo=True)
    ids = torch.tensor([[5, 6, 2], [5, 7, 2]])  # differ only in the second token
    h = hidden(model, ids)
    assert (h[0, 0] - h[1, 0]).abs().max() > 1e-3  # a later token reaches position 0


def test_the_gpt2_default_stays_causal():
    model = build_model(
        "gpt2",
        task=get_task("same_different"),
        tokenizer=tokenizer(),
        pretrained=False,
        n_head=1,
        **TINY,
    )
    ids = torch.tensor([[5, 6, 2], [5, 7, 2]])
    h = hidden(model, ids)
    assert torch.equal(h[0, 0], h[1, 0])


def test_padding_is_still_masked():
    model = paper(n_positions=4)
    padded = torch.tensor([[5, 6, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    short = readout(model, torch.tensor([[5, 6, 2]]))
    assert torch.allclose(readout(model, padded, mask), short, atol=1e-5)


@pytest.mark.parametrize("task, kq, vo", [("same_different", True, True), ("copy", False, True)])
def test_injection_is_exact_at_a_b_zero(task, kq, vo):
    model = paper(task, attn_implementation="eager")
    ids = torch.tensor([[5, 6, 2], [7, 7, 2]]) if task == "same_different" else None
    if ids is None:
        ids = torch.tensor([[5, 2], [9, 2]])
    model.eval()
    with torch.no_grad():
        before = readout(model, ids)
        inject_ab(model, kq=kq, vo=vo)
        after = readout(model, ids)
    assert torch.equal(before, after)


def test_symbolic_labels_read_the_tied_embedding():
    model = paper("copy")
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert model.lm_head.bias is None
    assert readout(model, torch.tensor([[5, 2]])).shape == (1, len(tokenizer()))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_symbolic_labels_are_read_at_the_inputs_own_last_token(implementation):
    """The official pool="final": the model run on the row without its readout token,
    read at the last input token — padded rows and injected a/b included."""
    model = paper("var_copy", n_positions=10, attn_implementation=implementation).eval()
    assert model.config.probe_readout == "final"
    rows = [[5, 6, 7, 8, 2], [9, 10, 2, 0, 0]]  # readout token 2, then padding
    ids, mask = torch.tensor(rows), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    with torch.no_grad():
        inject_ab(model, kq=True, vo=True)
        for name, param in model.named_parameters():
            if name.endswith((".a", ".b")):
                param.fill_(0.3)
        got = readout(model, ids, mask)
        for row, out in zip(rows, got, strict=True):
            alone = torch.tensor([row[: row.index(2)]])  # the row without the readout token
            want = model(input_ids=alone).logits[0, -1]
            assert torch.allclose(out, want, atol=1e-5)
    token = paper("copy", readout="cls").eval()  # the ablation reads the appended token
    with torch.no_grad():
        want = token(input_ids=torch.tensor([[5, 2]])).logits[0, -1]
        assert torch.allclose(readout(token, torch.tensor([[5, 2]]))[0], want, atol=1e-5)
    with pytest.raises(ValueError, match="readout='mean'"):
        paper("copy", readout="mean")


def test_save_and_load_keep_it_bidirectional_and_frozen(tmp_path):
    model = paper()
    ids = torch.tensor([[5, 6, 2], [5, 7, 2]])
    want = readout(model.eval(), ids)
    model.save_pretrained(tmp_path / "plain")
    loaded = build_model(tmp_path / "plain", task=get_task("same_different"))
    assert torch.allclose(readout(loaded.eval(), ids), want, atol=1e-5)
    assert all(not a.is_causal for a in (b.attn for b in loaded.transformer.h))
    assert not loaded.transformer.ln_f.weight.requires_grad
    h = hidden(loaded, ids)
    assert (h[0, 0] - h[1, 0]).abs().max() > 1e-3

    inject_ab(model, kq=True, vo=False)
    with torch.no_grad():
        next(m for n, m in model.named_modules() if n.endswith("ab_scalings")).a.fill_(0.5)
    want = readout(model.eval(), ids)
    model.save_pretrained(tmp_path / "injected")
    again = load_injected(tmp_path / "injected")
    assert torch.allclose(readout(again.eval(), ids), want, atol=1e-5)


def test_lora_and_attn_diagonal_work_on_it():
    from peft import LoraConfig, get_peft_model

    model = inject_ab(paper(), kq=True, vo=True)
    lora = LoraConfig(
        r=2,
        target_modules=["c_attn"],
        fan_in_fan_out=True,
        modules_to_save=["ab_scalings"],
    )
    wrapped = get_peft_model(model, lora)
    ids = torch.tensor([[5, 6, 2], [5, 7, 2]])
    out = readout(wrapped, ids)
    assert out.shape == (2, 1)
    out.sum().backward()  # the LoRA factors and a/b get gradients, the frozen biases none
    assert all(p.grad is None for n, p in wrapped.named_parameters() if "ln_f" in n)
    table = attn_diagonal(model)
    assert set(table["layer"]) == {0, 1} and len(table) > 0


def test_finetune_runs_the_paper_model_with_its_default_heads(tmp_path):
    config = FinetuneConfig(
        model=PAPER,
        task="same_different",
        n_layer=1,
        n_embd=64,
        n_train=16,
        n_val=4,
        n_test=8,
        batch_size=8,
        epochs=2,
        max_steps=0,
        converge_loss=0.0,
        ab="kq",
        progress=False,
        output_dir=str(tmp_path / "run"),
    )
    plan = plan_run(config)
    model, _ = build_run_model(plan, load_run_data(plan))
    assert model.config.n_head == 1 and model.config.is_causal is False
    row = finetune(config)
    assert row["steps"] == 4 and row["test_loss"] >= 0.0


def test_ablation_switches_put_back_causal_attention_and_gpt2_init():
    causal = paper(is_causal="true", init="gpt2")
    h = hidden(causal, torch.tensor([[5, 6, 2], [5, 7, 2]]))
    assert torch.equal(h[0, 0], h[1, 0])
    assert causal.transformer.h[0].mlp.c_fc.weight.std().item() < 0.03  # N(0, 0.02)
    with pytest.raises(ValueError, match="init='xavier'"):
        paper(init="xavier")
    with pytest.raises(ValueError, match="is_causal='maybe'"):
        paper(is_causal="maybe")


# -- the official MLP baselines ----------------------------------------------------------


def test_official_mlps_read_one_hot_symbols_and_exact_equalities():
    tok = tokenizer(9)  # 12 ids
    ids = torch.tensor([[5, 6, 5, 2, 0], [7, 8, 9, 2, 0]])
    mask = (ids != 0).long()
    small = dict(d_hidden=16, n_layer=1, max_length=6)
    plain = build_model("mlp_onehot", label_kind="regression", tokenizer=tok, seed=0, **small)
    assert plain.config.onehot and not plain.config.xxt
    feats = plain.features(ids, mask)
    assert feats.shape == (2, 6 * len(tok))
    onehot = feats.view(2, 6, len(tok))
    assert onehot[0, 0, 5] == 1 and onehot[0, 0].sum() == 1 and onehot[0, 4].sum() == 0
    xxt = build_model("mlp_onehot_xxt", label_kind="regression", tokenizer=tok, seed=0, **small)
    assert xxt.config.xxt and xxt.config.xxt_exact
    eq = xxt.features(ids, mask)[:, 6 * len(tok) :].view(2, 6, 6)
    assert eq[0, 0, 2] == 1 and eq[0, 0, 1] == 0 and eq[0, 0, 0] == 1
    assert eq[1, :3, :3].equal(torch.eye(3)) and eq[0, 4].sum() == 0  # padding: no features
    out = readout(xxt, ids, mask)
    assert out.shape == (2, 1)
    # a symbol never seen in training reaches first-layer weights no gradient moved
    xxt(input_ids=ids, attention_mask=mask, labels=torch.tensor([1.0, -1.0])).loss.backward()
    first = xxt.hidden[0].weight.grad.view(16, -1)[:, : 6 * len(tok)].view(16, 6, len(tok))
    assert first[:, :, 10].abs().sum() == 0 and first[:, 0, 5].abs().sum() > 0


def test_official_mlps_train_through_finetune(tmp_path):
    config = FinetuneConfig(
        model="mlp_onehot_xxt",
        task="aba_vs_abb",
        n_train=16,
        n_val=4,
        n_test=8,
        batch_size=8,
        epochs=1,
        max_steps=0,
        converge_loss=0.0,
        progress=False,
        output_dir=str(tmp_path / "run"),
    )
    row = finetune(config)
    assert row["steps"] == 2 and row["test_loss"] >= 0.0


# -- the summary against the paper's n* ----------------------------------------------


def test_paper_summary_reports_n_star_with_its_seeds_and_no_ratio_when_unreached(tmp_path):
    import json

    from probe.experiments.paper_summary import summary

    losses = {("kq", 32): [0.3, 0.02, 0.9], ("kq", 64): [0.01, 0.04, 0.06], ("none", 64): [1, 1, 1]}
    lines = []
    for (variant, n), values in losses.items():
        for seed, loss in enumerate(values):
            row = dict(
                recipe="same_different", variant=variant, n=n, seed=seed, task="same_different"
            )
            row.update(variant_index=0 if variant == "none" else 1, label_kind="regression")
            lines.append(json.dumps({**row, "test_loss": loss, "wall_s": 2.0}))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    table = summary(tmp_path).set_index("variant")
    assert table.loc["kq", "n*"] == "64 (2/3 seeds <= 0.05)"
    assert table.loc["kq", "ours / paper"] == "1" and table.loc["kq", "spread at n*"] == "0.01-0.06"
    assert table.loc["none", "n*"] == ">64" and table.loc["none", "ours / paper"] == ">0.0312"


def test_the_paper_model_has_no_checkpoint_to_load(tmp_path):
    config = FinetuneConfig(
        model=PAPER, pretrained=True, task="same_different", output_dir=str(tmp_path / "r")
    )
    with pytest.raises(ValueError, match="drop --pretrained"):
        finetune(config)
