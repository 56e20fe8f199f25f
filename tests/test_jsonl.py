"""probe.jsonl: appends that survive a writer killed mid-line, readers that say what they skip."""

import json
import multiprocessing
import warnings

import pytest

from probe.jsonl import append_row, read_rows


def test_append_then_read_round_trips(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"
    append_row(path, {"a": 1})
    append_row(path, {"b": [1, 2]})
    assert read_rows(path) == [{"a": 1}, {"b": [1, 2]}]
    assert path.read_text().endswith("\n")


def test_a_row_after_a_cut_short_line_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, {"cell": 1})
    with open(path, "a") as f:
        f.write('{"cell": 2, "test_lo')  # a writer killed in the middle of its append
    append_row(path, {"cell": 3})
    with pytest.warns(UserWarning, match=r"results.jsonl:2: skipped a line"):
        rows = read_rows(path)
    assert rows == [{"cell": 1}, {"cell": 3}]  # the fragment did not swallow row 3


def test_a_broken_line_is_reported_once(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"ok": 1}\nnot json\n[1, 2]\n')
    with pytest.warns(UserWarning) as record:
        assert read_rows(path) == [{"ok": 1}]
    assert [str(w.message).split(":")[1] for w in record] == ["2", "3"]  # a list is no row
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_rows([path]) == [{"ok": 1}]  # the same lines again: no second warning


def test_nan_is_refused_not_written(tmp_path):
    path = tmp_path / "results.jsonl"
    with pytest.raises(ValueError):
        append_row(path, {"loss": float("nan")})
    assert not path.exists() or path.read_text() == ""


def _append_many(path, worker):
    for i in range(50):
        append_row(path, {"worker": worker, "i": i, "pad": "x" * 5000})


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "results.jsonl"
    procs = [multiprocessing.Process(target=_append_many, args=(path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 150
    assert sorted((r["worker"], r["i"]) for r in map(json.loads, lines)) == [
        (w, i) for w in range(3) for i in range(50)
    ]
