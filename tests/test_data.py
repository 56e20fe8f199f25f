"""probe.data: rendering (determinism, alphabets, labels), Hub layout, offline errors."""

from __future__ import annotations

import os
import time
from collections import Counter

import datasets
import numpy as np
import pytest

import probe.data as data
from probe.data import (
    dataset_tokenizer,
    export_catalogue,
    load_dataset,
    load_tokenizer,
    render,
    render_to_disk,
    save_dataset,
    task_info,
)
from probe.tasks import get_task, list_tasks
from probe.templates import TemplateTask

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


# -- Hub layout --------------------------------------------------------------------


def _same(a: datasets.DatasetDict, b: datasets.DatasetDict) -> None:
    assert list(a) == list(b)
    for split in a:
        assert a[split].to_dict() == b[split].to_dict()
        assert a[split].features == b[split].features


def test_hub_layout_round_trip_two_configs(tmp_path):
    folder = tmp_path / "tasks"
    aba = render("aba_vs_abb", 40, 8, 8, seed=1)
    vc = render("var_copy", 40, 8, 8, seed=2)
    save_dataset(aba, folder, "aba")
    save_dataset(vc, folder)  # config defaults to the task name
    assert sorted(os.listdir(folder)) == ["README.md", "aba", "var_copy"]
    assert sorted(os.listdir(folder / "aba")) == [
        "test-00000-of-00001.parquet",
        "tokenizer",
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]
    for config, original in [("aba", aba), ("var_copy", vc)]:
        loaded = datasets.load_dataset(str(folder), config)
        _same(loaded, original)
        assert task_info(loaded) == task_info(original)
        _same(load_dataset(folder, config), original)
        tok = load_tokenizer(folder, config)
        row = loaded["test"][0]
        assert tok.decode(row["input_ids"][: sum(row["attention_mask"]) - 1]) == row["text"]
    card = (folder / "README.md").read_text()
    assert "config_name: aba" in card and "config_name: var_copy" in card
    assert "probe data render --task var_copy --n-train 40" in card
    assert "`a = c ; b = d ; print a`" in card


def test_load_dataset_errors(tmp_path):
    folder = tmp_path / "tasks"
    save_dataset(render("copy", 10, 2, 2), folder, "one")
    save_dataset(render("copy", 10, 2, 2, seed=1), folder, "two")
    with pytest.raises(ValueError, match="no config 'three'; its configs: one, two"):
        load_dataset(folder, "three")
    with pytest.raises(ValueError, match="several configs"):
        load_dataset(folder)
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_dataset(str(tmp_path / "missing" / "folder"), "one")


def test_overwrite_refused_then_allowed(tmp_path):
    folder = tmp_path / "tasks"
    first = render("aba_vs_abb", 20, 4, 4, seed=0)
    second = render("aba_vs_abb", 20, 4, 4, seed=1)
    save_dataset(first, folder, "aba")
    with pytest.raises(FileExistsError, match="config 'aba' already exists.*--overwrite"):
        save_dataset(second, folder, "aba")
    _same(load_dataset(folder, "aba"), first)
    save_dataset(second, folder, "aba", overwrite=True)
    _same(load_dataset(folder, "aba"), second)
    assert sorted(os.listdir(folder)) == ["README.md", "aba"]  # nothing left behind


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    dsd = render("aba_vs_abb", 20, 4, 4)
    calls = []

    def failing(ds, file):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(ds, file)

    real_write = data._write_parquet
    monkeypatch.setattr(data, "_write_parquet", failing)
    # a fresh folder: not created at all
    with pytest.raises(OSError, match="disk full"):
        save_dataset(dsd, tmp_path / "new", "aba")
    assert os.listdir(tmp_path) == []
    # an existing folder: the other config and the card stay as they were
    monkeypatch.setattr(data, "_write_parquet", real_write)
    save_dataset(dsd, tmp_path / "old", "keep")
    card = (tmp_path / "old" / "README.md").read_text()
    calls.clear()
    monkeypatch.setattr(data, "_write_parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(dsd, tmp_path / "old", "aba")
    assert sorted(os.listdir(tmp_path / "old")) == ["README.md", "keep"]
    assert (tmp_path / "old" / "README.md").read_text() == card
    # and an overwrite that fails keeps the old config
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        save_dataset(dsd, tmp_path / "old", "keep", overwrite=True)
    assert sorted(os.listdir(tmp_path / "old")) == ["README.md", "keep"]
    assert len(os.listdir(tmp_path / "old" / "keep")) == 4


def test_offline_hub_id_fails_at_once():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError) as err:
        load_dataset("someone/template-tasks", "aba_vs_abb")
    assert time.perf_counter() - t0 < 5
    message = str(err.value)
    assert "'someone/template-tasks'" in message
    assert "offline" in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download" in message and "pass the folder" in message


# -- the command line's jobs ---------------------------------------------------------


def test_render_to_disk_validates_before_rendering(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    folder = render_to_disk("majority_k:k=5", out, 16, 4, 4, seed=0, config=None)
    assert folder == out / "majority_k-k5"  # the task's name
    assert "wrote" in capsys.readouterr().out

    def no_render(*a, **k):
        raise AssertionError("rendered before validating")

    monkeypatch.setattr(data, "render", no_render)
    with pytest.raises(FileExistsError, match="'majority_k-k5'"):
        render_to_disk("majority_k:k=5", out, 16, 4, 4)
    with pytest.raises(ValueError, match="unknown task"):
        render_to_disk("nope", out, 16)
    with pytest.raises(ValueError, match="--n-train must be >= 1"):
        render_to_disk("copy", out, 0)
    with pytest.raises(ValueError, match="config name 'a/b'"):
        render_to_disk("copy", out, 5, config="a/b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        render_to_disk("copy", tmp_path / "file", 5)


def test_export_catalogue(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "EXPORT_SIZES", {"n_train": 12, "n_val": 3, "n_test": 3})
    export_catalogue(tmp_path / "cat")
    for config in data.EXPORT_CONFIGS:
        dsd = load_dataset(tmp_path / "cat", config)
        assert dsd["train"].num_rows == 12
    assert task_info(load_dataset(tmp_path / "cat", "majority_5"))["task"]["templates"][0] == (
        "a a a a a"
    )
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_catalogue(tmp_path / "cat")


def test_demo_runs(capsys):
    from probe.demo import main

    main(["--n-train", "32", "--n-test", "8", "--show", "1"])
    out = capsys.readouterr().out
    assert "aba_vs_abb" in out and "OK: the test uses only unseen symbols" in out


def test_committed_catalogue_loads():
    """data/template-tasks (written by `probe data export`) loads with its card."""
    folder = os.path.join(os.path.dirname(__file__), "..", "data", "template-tasks")
    if not os.path.isdir(folder):
        pytest.skip("data/template-tasks not exported yet")
    dsd = load_dataset(folder, "aba_vs_abb")
    info = task_info(dsd)
    assert get_task("aba_vs_abb") == TemplateTask.from_dict(info["task"])
    assert dsd["train"].num_rows == data.EXPORT_SIZES["n_train"]
