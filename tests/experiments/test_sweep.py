"""probe.experiments.sweep: recipes (include, validation), the grid, shards, resume.

Runs here use a fake runner (a pure function of the cell) so the bookkeeping is
tested in milliseconds; tests/experiments/test_report.py runs a miniature sweep end to end
through the real finetune.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probe.experiments.sweep import (
    SweepConfig,
    load_recipe,
    parse_shard,
    results_path,
    run_sweep,
)
from probe.jsonl import read_rows

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def fake_runner(calls: list):
    """A runner whose metrics depend only on the cell, recording each call."""

    def run(cfg) -> dict:
        calls.append((cfg.ab, cfg.n_train, cfg.seed))
        loss = 1.0 / cfg.n_train + (0.0 if cfg.ab == "kq" else 0.5) + 0.01 * cfg.seed
        return {"test_loss": loss, "test_error": min(loss, 1.0), "steps": 3}

    return run


def config(**over) -> SweepConfig:
    d = {
        "name": "mini",
        "task": "aba_vs_abb",
        "n": [8, 16],
        "seeds": [0, 1],
        "variants": {"none": {"ab": "none"}, "kq": {"ab": "kq"}},
        "finetune": {"n_layer": 1, "n_embd": 16, "n_head": 2},
    }
    d.update(over)
    return SweepConfig.from_dict(d)


# -- recipes -------------------------------------------------------------------------


def test_include_merges_mappings_and_names_from_file(tmp_path):
    write(tmp_path / "base.yaml", "name: base\nseeds: [0, 1]\nfinetune: {lr: 0.01, n_layer: 2}\n")
    write(
        tmp_path / "child.yaml",
        "include: base.yaml\ntask: aba_vs_abb\nn: [4, 8]\n"
        "finetune: {n_layer: 1}\nvariants: {none: {ab: none}}\n",
    )
    d = load_recipe(tmp_path / "child.yaml")
    assert d["finetune"] == {"lr": 0.01, "n_layer": 1}  # merged key by key
    assert d["seeds"] == [0, 1]
    assert "name" not in d  # never inherited
    cfg = SweepConfig.from_yaml(tmp_path / "child.yaml")
    assert cfg.name == "child"
    assert [c.key for c in cfg.cells()] == [
        ("none", 4, 0),
        ("none", 4, 1),
        ("none", 8, 0),
        ("none", 8, 1),
    ]


def test_including_recipe_replaces_variants_whole(tmp_path):
    write(tmp_path / "a.yaml", "task: copy\nn: [4]\nvariants: {none: {}, vo: {ab: vo}}\n")
    write(tmp_path / "b.yaml", "include: a.yaml\nvariants: {kq: {ab: kq}}\nbaseline: null\n")
    assert list(SweepConfig.from_yaml(tmp_path / "b.yaml").variants) == ["kq"]


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_unknown_recipe_key_names_it_and_the_accepted_ones():
    with pytest.raises(
        ValueError, match=r"unknown key\(s\) \['sizes'\].*accepted keys.*'variants'"
    ):
        SweepConfig.from_dict(
            {"name": "x", "task": "copy", "n": [4], "variants": {"none": {}}, "sizes": [4]}
        )


def test_unknown_variant_key_names_it():
    with pytest.raises(ValueError, match=r"variant 'kq' has unknown key\(s\) \['abb'\]"):
        config(variants={"none": {}, "kq": {"abb": "kq"}})


def test_grid_owned_fields_are_refused_with_where_they_come_from():
    with pytest.raises(ValueError, match=r"n_train \(set by n\)"):
        config(finetune={"n_train": 64})
    with pytest.raises(ValueError, match=r"seed \(set by seeds\)"):
        config(variants={"none": {"seed": 3}})


@pytest.mark.parametrize(
    "over, match",
    [
        ({"n": [0, 4]}, "positive integers"),
        ({"n": [4, 4]}, "repeats"),
        ({"seeds": ["a"]}, "integers"),
        ({"variants": {}}, "must map labels"),
        ({"baseline": "plain"}, "baseline 'plain' is not a variant"),
        ({"threshold": 0}, "positive number"),
    ],
)
def test_bad_values_are_refused(over, match):
    with pytest.raises(ValueError, match=match):
        config(**over)


def test_every_shipped_recipe_validates():
    recipes = sorted(p for p in RECIPES.glob("*.yaml") if p.name != "base.yaml")
    assert len(recipes) >= 8
    for p in recipes:
        cfg = SweepConfig.from_yaml(p)
        assert cfg.cells(), p
        assert "CPU" in p.read_text(), f"{p.name} should state its expected CPU time"


# -- grid and shards -------------------------------------------------------------------


def test_shards_partition_the_grid():
    cfg = config(n=[2, 4, 8], seeds=[0, 1, 2])
    keys = [c.key for c in cfg.cells()]
    assert len(keys) == 2 * 3 * 3
    parts = [keys[i::4] for i in range(4)]
    assert sorted(k for p in parts for k in p) == sorted(keys)
    assert parse_shard("3/4") == (3, 4)
    assert parse_shard(None) is None
    for bad in ["4/4", "1", "-1/2", "a/b"]:
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_cell_settings_apply_shared_then_variant_overrides():
    cfg = config(variants={"none": {}, "wide": {"n_embd": 32}})
    cells = {c.variant: c for c in cfg.cells() if (c.n, c.seed) == (8, 0)}
    assert cfg.cell_settings(cells["none"])["n_embd"] == 16
    wide = cfg.cell_settings(cells["wide"])
    assert (wide["n_embd"], wide["n_layer"], wide["task"], wide["n_train"]) == (
        32,
        1,
        "aba_vs_abb",
        8,
    )


# -- running, resume, overwrite ----------------------------------------------------------


def test_run_appends_one_row_per_cell_with_its_keys(tmp_path):
    calls: list = []
    rows = run_sweep(
        config(), tmp_path, runner=fake_runner(calls), work_dir=tmp_path / "w", progress=False
    )
    assert len(rows) == len(calls) == 8
    on_disk = read_rows([results_path(tmp_path, None)])
    assert on_disk == json.loads(json.dumps(rows))
    r = on_disk[0]
    assert (r["recipe"], r["variant"], r["n"], r["seed"]) == ("mini", "none", 8, 0)
    assert r["label_kind"] == "regression" and r["grid_cells"] == 8 and r["test_loss"] > 0


def test_rerun_refuses_resume_skips_done_cells_and_reruns_missing(tmp_path):
    calls: list = []
    run = fake_runner(calls)
    kw = dict(runner=run, work_dir=tmp_path / "w", progress=False)
    run_sweep(config(), tmp_path, **kw)
    with pytest.raises(FileExistsError, match="8 of this run's 8 cells.*--resume.*--overwrite"):
        run_sweep(config(), tmp_path, **kw)
    calls.clear()
    assert run_sweep(config(), tmp_path, resume=True, **kw) == []
    assert calls == []
    # An interrupted sweep: the last row lost, plus a half-written line.
    path = results_path(tmp_path, None)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + '\n{"recipe": "mi')
    rows = run_sweep(config(), tmp_path, resume=True, **kw)
    assert [(r["variant"], r["n"], r["seed"]) for r in rows] == [("kq", 16, 1)]
    assert calls == [("kq", 16, 1)]
    calls.clear()
    run_sweep(config(), tmp_path, overwrite=True, **kw)
    assert len(calls) == 8 and len(read_rows([path])) == 8


def test_changed_recipe_does_not_mix_with_old_rows(tmp_path):
    kw = dict(runner=fake_runner([]), work_dir=tmp_path / "w", progress=False)
    run_sweep(config(), tmp_path, **kw)
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(
            config(finetune={"n_layer": 2, "n_embd": 16, "n_head": 2}), tmp_path, resume=True, **kw
        )


def test_shards_write_their_own_files_and_together_cover_the_grid(tmp_path):
    calls: list = []
    kw = dict(runner=fake_runner(calls), work_dir=tmp_path / "w", progress=False)
    for i in range(3):
        run_sweep(config(), tmp_path, shard=(i, 3), **kw)
    files = sorted(p.name for p in tmp_path.glob("results*.jsonl"))
    assert files == [f"results-shard-{i}-of-3.jsonl" for i in range(3)]
    keys = sorted((r["variant"], r["n"], r["seed"]) for r in read_rows(tmp_path.glob("*.jsonl")))
    assert keys == sorted(c.key for c in config().cells())
    assert len(calls) == 8


def test_bad_cell_fails_before_any_run(tmp_path):
    calls: list = []
    cfg = config(variants={"none": {}, "bad": {"ab": "qk"}})
    with pytest.raises(ValueError, match="cell \\('bad'"):
        run_sweep(cfg, tmp_path, runner=fake_runner(calls), work_dir=tmp_path / "w", progress=False)
    assert calls == []
    assert not results_path(tmp_path, None).exists()


def test_cli_reports_a_bad_recipe_without_a_traceback(tmp_path, capsys):
    from probe.experiments.sweep import main

    bad = write(tmp_path / "bad.yaml", "task: copy\nn: [4]\nvariants: {none: {abb: vo}}\n")
    with pytest.raises(SystemExit) as e:
        main([str(bad), "--dry-run"])
    assert e.value.code == 2
    assert (
        "probe sweep: error: variant 'none' has unknown key(s) ['abb']" in capsys.readouterr().err
    )
