"""probe.data.render: rendering (determinism, alphabets, labels) and the task info it carries."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import probe.data.render as data
from probe.data.render import dataset_tokenizer, render, task_info
from probe.tasks.catalogue import list_tasks
from probe.tasks.templates import TemplateTask

# -- labels recomputed from the text alone, one oracle per catalogue task ----------


def _program(tokens: list[str]) -> tuple[dict[str, str], str]:
    """``x = v ; y = w ; print z`` -> ({x: v, y: w}, z)."""
    return {tokens[0]: tokens[2], tokens[4]: tokens[6]}, tokens[-1]


def _dist3(t: list[str]) -> str:
    (missing,) = set(t[:3]) - set(t[-2:])
    return missing


ORACLES = {
    "same_different": lambda t: 1.0 if t[0] == t[1] else -1.0,
    "aba_vs_abb": lambda t: 1.0 if t[2] == t[0] else -1.0,
    "aabb_vs_abab": lambda t: 1.0 if (t[0] == t[1] and t[2] == t[3]) else -1.0,
    "majority_k": lambda t: 1.0 if 2 * t.count(t[0]) > len(t) else -1.0,
    "var_assign": lambda t: float(_program(t)[0][_program(t)[1]]),
    "var_copy": lambda t: _program(t)[0][_program(t)[1]],
    "copy": lambda t: t[0],
    "rmts": lambda t: 1.0 if (t[3] == t[4]) == (t[0] == t[1]) else -1.0,
    "dist3": _dist3,
}


def _matching_template(task: TemplateTask, tokens: list[str]) -> int:
    """The one template the tokens instantiate (wildcards -> distinct symbols)."""
    regular = set(task.regular_tokens)
    found = []
    for i, tpl in enumerate(task.templates):
        if len(tpl.tokens) != len(tokens):
            continue
        sub: dict[str, str] = {}
        ok = True
        for w, s in zip(tpl.tokens, tokens, strict=True):
            if w in tpl.wildcards_in_order:
                ok &= s not in regular and sub.setdefault(w, s) == s
            else:
                ok &= w == s
        ok &= len(set(sub.values())) == len(sub)  # injective
        if ok:
            found.append(i)
    assert len(found) == 1, (tokens, found)
    return found[0]


@pytest.fixture(scope="module")
def catalogue():
    """Every catalogue task (majority_k at two k) rendered small."""
    specs = [t for t in list_tasks() if t != "majority_k"] + ["majority_k:k=4", "majority_k:k=7"]
    return {spec: render(spec, 300, 60, 60, seed=5) for spec in specs}


def test_labels_of_every_catalogue_task(catalogue):
    assert {s.split(":")[0] for s in catalogue} == set(list_tasks())
    for spec, dsd in catalogue.items():
        info = task_info(dsd)
        task = TemplateTask.from_dict(info["task"])
        tok = dataset_tokenizer(dsd)
        oracle = ORACLES.get(spec.split(":")[0])
        for ds in dsd.values():
            for row in ds:
                tokens = row["text"].split()
                t = _matching_template(task, tokens)
                assert t == row["template"], (spec, tokens)
                n_real = sum(row["attention_mask"])
                # ids decode back to the text, then the readout token
                assert tok.convert_ids_to_tokens(row["input_ids"][:n_real]) == [*tokens, "<out>"]
                if task.label_kind == "regression":
                    expected = oracle(tokens) if oracle else task.labels[t]
                    assert row["labels"] == expected, (spec, tokens)
                else:
                    answer = oracle(tokens)
                    assert tok.convert_ids_to_tokens(row["labels"]) == answer, (spec, tokens)
                    # the label id is the id at the wildcard's position in the row
                    pos = task.templates[t].tokens.index(task.labels[t])
                    assert row["labels"] == row["input_ids"][pos]


def test_label_dtypes(catalogue):
    for spec, dsd in catalogue.items():
        kind = task_info(dsd)["label_kind"]
        dtype = dsd["train"].features["labels"].dtype
        assert dtype == ("float32" if kind == "regression" else "int64"), spec
        assert dsd["train"].features["input_ids"].feature.dtype == "int64"


def test_readout_last_and_padding(catalogue):
    for spec, dsd in catalogue.items():
        info = task_info(dsd)
        for ds in dsd.values():
            ids = np.asarray(ds["input_ids"])
            mask = np.asarray(ds["attention_mask"])
            n_real = mask.sum(1)
            # right-padded to the split's longest row, which has no padding
            assert n_real.max() == ids.shape[1]
            assert np.all(np.diff(mask, axis=1) <= 0), "mask is 1s then 0s"
            assert np.all(ids[np.arange(len(ids)), n_real - 1] == info["readout_token_id"])
            assert np.all(ids[mask == 0] == info["pad_token_id"])
            assert np.sum(ids[mask == 1] == info["readout_token_id"]) == len(ids), spec


def test_alphabets_disjoint_and_injective(catalogue):
    for spec, dsd in catalogue.items():
        task = TemplateTask.from_dict(task_info(dsd)["task"])
        used = {}
        for split, ds in dsd.items():
            symbols = set()
            for row in ds:
                tpl = task.templates[row["template"]]
                ids = row["input_ids"]
                by_wildcard: dict[str, set[int]] = {}
                for p, w in enumerate(tpl.tokens):
                    if w in tpl.wildcards_in_order:
                        by_wildcard.setdefault(w, set()).add(ids[p])
                # one symbol per wildcard, a different one for each wildcard
                assert all(len(v) == 1 for v in by_wildcard.values())
                row_syms = [next(iter(v)) for v in by_wildcard.values()]
                assert len(set(row_syms)) == len(row_syms), (spec, row["text"])
                symbols.update(row_syms)
            used[split] = symbols
        assert not used["train"] & used["validation"], spec
        assert not used["train"] & used["test"], spec
        assert not used["validation"] & used["test"], spec


def test_default_alphabet_sizes_follow_samples():
    dsd = render("aba_vs_abb", 50, 7, 1)
    a = task_info(dsd)["alphabets"]
    # n samples over n symbols, but never fewer symbols than wildcards
    assert (a["train"]["size"], a["validation"]["size"], a["test"]["size"]) == (50, 7, 2)
    # default names need no list: s0.. for train, numbering on across the splits
    assert (a["train"]["first"], a["train"]["last"]) == ("s0", "s49")
    assert a["validation"]["first"] == "s50" and a["train"]["symbols"] is None


def test_explicit_alphabets():
    dsd = render("aba_vs_abb", 40, 10, 10, train_symbols=["x1", "x2", "x3"], test_symbols=5, seed=2)
    train = {s for t in dsd["train"]["text"] for s in t.split()}
    assert train <= {"x1", "x2", "x3"}
    a = task_info(dsd)["alphabets"]
    assert a["test"]["size"] == 5 and a["train"]["symbols"] == ["x1", "x2", "x3"]
    # the tokenizer rebuilt from the card decodes the ids
    data._TOKENIZERS.clear()
    tok = dataset_tokenizer(dsd)
    assert tok.decode(dsd["train"][0]["input_ids"]).split()[:3] == dsd["train"][0]["text"].split()


@pytest.mark.parametrize("kind", ["SymbolTokenizer", "minilm"])
def test_symbols_given_explicitly_never_appear_in_other_splits(kind):
    # the symbols the draw would give train by default, given to test instead: they must
    # leave the tokenizer's pool, or training would see the test symbols
    from transformers import AutoTokenizer

    from probe.data.tokenizer import SymbolTokenizer
    from probe.models.offline import minilm_dir

    task = "aba_vs_abb"
    if kind == "SymbolTokenizer":
        tok = SymbolTokenizer.build(
            list(TemplateTask.from_strings(["a b a"], [1.0]).regular_tokens), 80
        )
    else:
        tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    first = render(task, 20, 10, 10, tokenizer=tok, seed=3)["train"]
    taken = sorted({s for text in first["text"] for s in text.split()})
    assert len(taken) > 10
    dsd = render(task, 20, 10, 10, test_symbols=taken, tokenizer=tok, seed=3)
    alphabets = task_info(dsd)["alphabets"]
    assert alphabets["test"]["symbols"] == taken
    for split in ("train", "validation"):
        assert not set(alphabets[split]["symbols"]) & set(taken)
        used = {i for row in dsd[split]["input_ids"] for i in row}
        assert not used & set(tok.convert_tokens_to_ids(taken)), split
    used = {i for row in dsd["test"]["input_ids"] for i in row}
    assert used & set(tok.convert_tokens_to_ids(taken))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train_symbols": 1}, "at least 2"),
        ({"train_symbols": ["x", "y"], "test_symbols": ["y", "z"]}, "'y' is in both"),
        ({"train_symbols": ["x", "x"]}, "appears twice"),
        ({"train_symbols": "s0 s1"}, "one string"),
        ({"n_train": 0}, "n_train must be >= 1"),
        ({"n_test": -1}, "n_test must be >= 0"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"tokenizer": 3}, "tokenizer must be"),
    ],
)
def test_render_refuses(kwargs, match):
    args = {"n_train": 20, "n_val": 4, "n_test": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        render("aba_vs_abb", **args)


def test_render_task_spec_strings():
    dsd = render("majority_k:k=5", 10, 2, 2)
    assert len(dsd["train"][0]["text"].split()) == 5
    assert task_info(dsd)["regenerate"]["cli"].startswith(
        "probe data render --task majority_k:k=5 --n-train 10"
    )
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        render("nope", 10)
    with pytest.raises(ValueError, match="not key=value"):
        render("majority_k:5", 10)


def test_determinism():
    a = render("var_copy", 200, 30, 30, seed=7)
    b = render("var_copy", 200, 30, 30, seed=7)
    c = render("var_copy", 200, 30, 30, seed=8)
    for split in a:
        assert a[split].data.table.equals(b[split].data.table)
        assert a[split].info.description == b[split].info.description
        assert a[split]._fingerprint == b[split]._fingerprint
        assert not a[split].data.table.equals(c[split].data.table)
    # the splits draw from independent generators: a bigger test split leaves train alone
    d = render("var_copy", 200, 30, 31, seed=7)
    assert d["train"]["text"] == a["train"]["text"]


def test_custom_task_probabilities():
    task = TemplateTask.from_strings(["a b a", "a b b"], [1.0, -1.0], probs=[0.9, 0.1], name="skew")
    dsd = render(task, 2000, 0, 0, seed=0)
    share = Counter(dsd["train"]["template"])[0] / 2000
    assert 0.87 < share < 0.93
    assert task_info(dsd)["regenerate"]["cli"] is None  # not a catalogue task
    assert dsd["validation"].num_rows == 0


def test_a_real_tokenizers_test_alphabet_does_not_change_with_n_train():
    from transformers import AutoTokenizer

    from probe.data.render import render, task_info
    from probe.models.offline import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    alphabets = [
        task_info(render("aba_vs_abb", n, 8, 32, tokenizer=tok, seed=0))["alphabets"]
        for n in (16, 64)
    ]
    assert alphabets[0]["test"] == alphabets[1]["test"]  # one test set along a curve
    assert alphabets[0]["validation"] == alphabets[1]["validation"]
    assert alphabets[0]["train"]["size"] == 16 and alphabets[1]["train"]["size"] == 64
