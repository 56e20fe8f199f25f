"""The MLP baselines: features, forward contract, training signal, save/load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from probe.data.tokenizer import SymbolTokenizer
from probe.models.build import build_model, readout
from probe.models.mlp import SymbolMLP, SymbolMLPConfig

TOK = SymbolTokenizer.build([], 29)  # 32 ids: pad 0, unk 1, <out> 2, symbols 3..31
SMALL = dict(d_embed=8, d_hidden=16, n_layer=1, max_length=6)


def task(kind: str) -> SimpleNamespace:
    return SimpleNamespace(label_kind=kind)


def rows():
    ids = torch.tensor([[5, 6, 5, 2, 0, 0], [7, 8, 9, 10, 2, 0]])
    mask = (ids != 0).long()
    return ids, mask


@pytest.mark.parametrize("name, xxt", [("mlp", False), ("mlp_xxt", True)])
@pytest.mark.parametrize("kind", ["regression", "symbolic"])
def test_forward_contract(name, xxt, kind):
    model = build_model(name, task=task(kind), tokenizer=TOK, seed=0, **SMALL)
    assert isinstance(model, SymbolMLP) and model.config.xxt is xxt
    assert model.probe_label_kind == kind
    ids, mask = rows()
    labels = torch.tensor([1.0, -1.0]) if kind == "regression" else torch.tensor([5, 9])
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    n_out = 1 if kind == "regression" else len(TOK)
    assert out.logits.shape == (2, n_out)
    torch.testing.assert_close(readout(model, ids, mask), out.logits)
    if kind == "regression":
        expected = torch.nn.functional.mse_loss(out.logits[:, 0], labels)
    else:
        expected = torch.nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, param_name


def test_features_are_the_embeddings_and_their_gram_matrix():
    model = build_model("mlp_xxt", label_kind="regression", tokenizer=TOK, seed=0, **SMALL)
    ids, mask = rows()
    feats = model.features(ids, mask)
    L, d = SMALL["max_length"], SMALL["d_embed"]
    assert feats.shape == (2, L * d + L * L)
    x = model.embed(ids) * mask[..., None]
    torch.testing.assert_close(feats[:, : L * d], x.flatten(1))
    gram = feats[:, L * d :].reshape(2, L, L)
    torch.testing.assert_close(gram, x @ x.transpose(1, 2) / d)
    # positions 0 and 2 hold the same symbol: their entry equals the diagonal's
    torch.testing.assert_close(gram[0, 0, 2], gram[0, 0, 0])
    plain = build_model("mlp", label_kind="regression", tokenizer=TOK, **SMALL)
    assert plain.features(ids, mask).shape == (2, L * d)


def test_padding_embeds_to_zero_and_shorter_rows_are_padded():
    model = build_model("mlp", label_kind="symbolic", tokenizer=TOK, seed=0, **SMALL).eval()
    ids, mask = rows()
    other = ids.clone()
    other[mask == 0] = 17  # whatever sits under the padding is ignored
    torch.testing.assert_close(model(other, mask).logits, model(ids, mask).logits)
    # without a mask the pad id is recognised; a shorter batch is padded to max_length
    torch.testing.assert_close(model(ids).logits, model(ids, mask).logits)
    torch.testing.assert_close(model(ids[:, :5]).logits, model(ids).logits)


def test_unit_scale_embeddings():
    model = build_model("mlp", label_kind="regression", vocab_size=500, d_embed=32, seed=0)
    assert abs(model.embed.weight.std().item() - 1) < 0.05


def test_errors_name_the_bad_value():
    model = build_model("mlp", label_kind="regression", tokenizer=TOK, **SMALL)
    with pytest.raises(ValueError, match="at most max_length=6"):
        model(torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(TypeError, match=r"\['width'\].*d_hidden"):
        build_model("mlp", label_kind="regression", width=3)
    with pytest.raises(ValueError, match="label_kind='ordinal'"):
        SymbolMLPConfig(label_kind="ordinal")


def test_save_and_load_round_trip(tmp_path):
    model = build_model("mlp_xxt", task=task("symbolic"), tokenizer=TOK, seed=0, **SMALL).eval()
    model.save_pretrained(tmp_path)
    again = build_model(tmp_path).eval()  # the kind and the xxt flag come from the config
    assert (
        isinstance(again, SymbolMLP) and again.config.xxt and again.probe_label_kind == "symbolic"
    )
    ids, mask = rows()
    torch.testing.assert_close(again(ids, mask).logits, model(ids, mask).logits)
    with pytest.raises(ValueError, match="reads 'symbolic' labels, not 'regression'"):
        build_model(tmp_path, label_kind="regression")


def test_trains_on_a_rendered_task():
    from probe.data.render import dataset_task, dataset_tokenizer, render

    dsd = render("aba_vs_abb", n_train=32, n_val=8, n_test=8, seed=0)
    model = build_model("mlp_xxt", task=dataset_task(dsd), tokenizer=dataset_tokenizer(dsd), seed=0)
    assert model.config.max_length == 4  # "a b a" and the readout token
    rows_ = dsd["train"][:]
    ids, mask = torch.tensor(rows_["input_ids"]), torch.tensor(rows_["attention_mask"])
    labels = torch.tensor(rows_["labels"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = model(ids, mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
