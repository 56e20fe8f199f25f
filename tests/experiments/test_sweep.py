"""probe.experiments.sweep: recipes (include, validation), the grid, shards, resume.

Runs here use a fake runner (a pure function of the cell) so the bookkeeping is
tested in milliseconds; tests/experiments/test_report.py runs a miniature sweep end to end
through the real finetune.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from probe.experiments.cells import parse_shard, results_path
from probe.experiments.recipe import load_recipe
from probe.experiments.sweep import SweepConfig, run_sweep
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


def test_a_copied_recipe_whose_include_is_missing_names_the_include_and_the_recipe(tmp_path):
    import shutil

    from probe.experiments.recipe import load_recipe as load

    root = Path(__file__).resolve().parents[2]
    copied = shutil.copy(root / "recipes" / "aba_vs_abb.yaml", tmp_path / "mine.yaml")
    with pytest.raises(FileNotFoundError) as err:
        load(copied)
    message = str(err.value)
    assert f"recipe '{tmp_path / 'mine.yaml'}': its include 'base.yaml'" in message
    assert str(tmp_path / "base.yaml") in message and "relative to the recipe" in message
    shutil.copy(root / "recipes" / "base.yaml", tmp_path / "base.yaml")
    assert load(copied)["task"] == "aba_vs_abb"  # resolved next to the recipe, from anywhere


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


def test_push_to_hub_in_a_recipe_is_refused_with_what_to_push_instead():
    with pytest.raises(ValueError, match=r"finetune: sets push_to_hub: every cell .*probe report"):
        config(finetune={"push_to_hub": "me/cells"})


@pytest.mark.parametrize(
    "over, match",
    [
        ({"n": [0, 4]}, "positive integers"),
        ({"n": [4, 4]}, "repeats"),
        ({"seeds": ["a"]}, "integers"),
        ({"variants": {}}, "must map labels"),
        ({"baseline": "plain"}, "baseline 'plain' is not a variant"),
        ({"threshold": 0}, "positive number"),
        # issue 21: refused at load, not halfway through a sweep or silently
        ({"n": [16, 99999999999999999999]}, "99999999999999999999 is more samples than"),
        ({"variants": {"kq": ["ab", "kq"]}}, "variant 'kq': .* must be a mapping"),
        ({"variants": {"../../escaped": {}}}, "'../../escaped' is not a safe folder name"),
        ({"variants": {"a/b": {}}}, "not a safe folder name"),
        ({"variants": {"kq,vo": {}, "kq+vo": {}}, "baseline": None}, r"share the folder 'kq\+vo'"),
        ({"description": ["a", "b"]}, r"description=\['a', 'b'\] must be one line of text"),
    ],
)
def test_bad_values_are_refused(over, match):
    with pytest.raises(ValueError, match=match):
        config(**over)


@pytest.mark.slow
def test_every_shipped_recipe_validates(tmp_path):
    from probe.experiments.cells import cell_configs

    recipes = sorted(p for p in RECIPES.glob("*.yaml") if p.name != "base.yaml")
    assert len(recipes) >= 8
    for p in recipes:
        cfg = SweepConfig.from_yaml(p)
        assert cfg.cells(), p
        assert "CPU" in p.read_text(), f"{p.name} should state its expected CPU time"
        try:  # every cell as finetune would check it
            cell_configs(cfg, cfg.cells(), tmp_path)
        except ValueError as e:  # a pretrained Hub model, offline
            assert "Hugging Face Hub" in str(e) and "offline" in str(e), (p, e)


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


def test_model_overrides_merge_key_by_key_shared_then_variant():
    cfg = config(
        finetune={"n_layer": 1, "n_embd": 16, "n_head": 2, "model_overrides": {"init": "gpt2"}},
        variants={"none": {}, "b": {"model_overrides": {"readout": "cls", "init": "torch"}}},
    )
    cells = {c.variant: c for c in cfg.cells() if (c.n, c.seed) == (8, 0)}
    assert cfg.cell_settings(cells["none"])["model_overrides"] == {"init": "gpt2"}
    assert cfg.cell_settings(cells["b"])["model_overrides"] == {"readout": "cls", "init": "torch"}
    assert "model_overrides" not in config().cell_settings(config().cells()[0])


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


def test_dry_run_lists_what_resume_would_run(tmp_path, capsys):
    from probe.cli.sweep import main

    recipe = write(
        tmp_path / "mini.yaml",
        "task: aba_vs_abb\nn: [8, 16]\nseeds: [0, 1]\nbaseline: none\n"
        "variants: {none: {ab: none}, kq: {ab: kq}}\n"
        "finetune: {n_layer: 1, n_embd: 16, n_head: 2}\n",
    )
    kw = dict(runner=fake_runner([]), work_dir=tmp_path / "w", progress=False)
    run_sweep(SweepConfig.from_yaml(recipe), tmp_path / "out", shard=(0, 2), **kw)
    args = [str(recipe), "--out", str(tmp_path / "out"), "--dry-run"]
    with pytest.raises(SystemExit):  # without --resume: refused, as the sweep would
        main(args)
    assert "already holds 4 of this run's 8 cells; pass --resume" in capsys.readouterr().err
    main([*args, "--overwrite"])  # the whole grid
    assert "mini: 8 of 8 cells to run" in capsys.readouterr().out
    main([*args, "--resume"])  # the shard's 4 cells are done
    out = capsys.readouterr().out
    assert "mini: 4 of 8 cells to run" in out and "kq  n=16     seed=1" in out
    assert "none  n=8      seed=0" not in out


def test_dry_run_estimates_each_cell_and_the_whole_from_earlier_rows(tmp_path, capsys):
    from probe.cli.sweep import main

    recipe = write(
        tmp_path / "mini.yaml",
        "task: aba_vs_abb\nn: [8, 16]\nseeds: [0, 1]\nbaseline: none\n"
        "variants: {none: {ab: none}, kq: {ab: kq}}\n"
        "finetune: {n_layer: 1, n_embd: 16, n_head: 2}\n",
    )
    args = [str(recipe), "--out", str(tmp_path / "out"), "--dry-run"]
    main(args)  # nothing run before: says so, with the steps the cells plan
    out = capsys.readouterr().out
    assert "estimated time: unknown" in out and "its cells plan 8,000 steps in all" in out

    def timed(cfg) -> dict:
        return {"test_loss": 0.5, "test_error": 0.5, "steps": 3, "wall_s": 30.0 * cfg.n_train / 8}

    kw = dict(runner=timed, work_dir=tmp_path / "w", progress=True)
    run_sweep(SweepConfig.from_yaml(recipe), tmp_path / "out", shard=(0, 2), **kw)
    # the progress line shows the last finished cell and its metric
    assert "last kq n=16 seed=0: test_loss 0.5" in capsys.readouterr().err
    main([*args, "--overwrite", "--jobs", "2"])
    out = capsys.readouterr().out
    assert "none  n=8      seed=1  ~30 s" in out and "kq  n=16     seed=1  ~60 s" in out
    assert "estimated time: ~6 min of cells (~3 min with --jobs 2)" in out  # 4 x 30 + 4 x 60


def test_dry_run_prices_a_never_run_n_by_its_planned_steps(tmp_path, capsys):
    """A (variant, n) with no earlier row gets its planned steps (epochs of n / batch)
    at the seconds per step of its variant's largest n run, plus the time outside
    training; the total says how many cells were priced so."""
    from probe.cli.sweep import main

    def recipe(ns: str) -> Path:
        return write(
            tmp_path / "mini.yaml",
            f"task: aba_vs_abb\nn: {ns}\nseeds: [0]\nbaseline: none\n"
            "variants: {none: {ab: none}}\n"
            "finetune: {n_layer: 1, n_embd: 16, n_head: 2, batch_size: 8, epochs: 10, "
            "max_steps: 0}\n",
        )

    def timed(cfg) -> dict:  # 10 epochs of n / 8 steps, 0.1 s each, 1 s outside them
        steps = 10 * cfg.n_train // 8
        return {"test_loss": 0.5, "steps": steps, "train_s": 0.1 * steps, "wall_s": 0.1 * steps + 1}

    kw = dict(runner=timed, work_dir=tmp_path / "w", progress=False)
    run_sweep(SweepConfig.from_yaml(recipe("[8, 16]")), tmp_path / "out", **kw)
    main([str(recipe("[8, 16, 64]")), "--out", str(tmp_path / "out"), "--dry-run", "--resume"])
    out = capsys.readouterr().out
    assert "mini: 1 of 3 cells to run" in out
    assert "none  n=64     seed=0  ~9 s (80 steps at 100 ms)" in out  # 80 x 0.1 + 1
    assert "estimated time: ~9 s of cells" in out and "1 cells never run before" in out


def test_default_out_keeps_a_recipe_subfolder(tmp_path):
    from probe.experiments.recipe import default_out

    nested = write_recipe_at(tmp_path / "recipes" / "paper" / "copy.yaml")
    top = write_recipe_at(tmp_path / "recipes" / "copy.yaml")
    elsewhere = write_recipe_at(tmp_path / "mine" / "copy.yaml")
    for path, want in ((nested, "results/paper/copy"), (top, "results/copy"),
                       (elsewhere, "results/copy")):  # fmt: skip
        assert default_out(path, SweepConfig.from_yaml(path)) == Path(want)
    assert default_out(RECIPES / "paper" / "copy.yaml", config()) == Path("results/paper/mini")
    from probe.experiments.recipe import default_work_dir

    assert default_work_dir(nested, SweepConfig.from_yaml(nested)) == Path("runs/sweep/paper/copy")
    assert default_work_dir(top, SweepConfig.from_yaml(top)) == Path("runs/sweep/copy")


def write_recipe_at(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path, "task: copy\nn: [8]\nvariants: {none: {}}\n")


def test_variants_runs_a_subset_and_resume_completes_the_grid(tmp_path):
    calls: list = []
    kw = dict(runner=fake_runner(calls), work_dir=tmp_path / "w", progress=False)
    rows = run_sweep(config(), tmp_path, variants=["kq"], **kw)
    assert {r["variant"] for r in rows} == {"kq"} and len(calls) == 4
    with pytest.raises(ValueError, match="--variants kqq: not in recipe 'mini'.*kq"):
        run_sweep(config(), tmp_path, variants=["kqq"], resume=True, **kw)
    with pytest.raises(ValueError, match="--overwrite deletes every row"):
        run_sweep(config(), tmp_path, variants=["kq"], overwrite=True, **kw)
    calls.clear()
    rows = run_sweep(config(), tmp_path, resume=True, **kw)
    assert {r["variant"] for r in rows} == {"none"} and len(calls) == 4


def test_variants_may_hold_commas_in_their_names():
    from probe.experiments.recipe import parse_variants

    known = ["kq", "kq,vo", "none", "vo"]
    assert parse_variants("kq,vo", known) == ["kq,vo"]
    assert parse_variants("none, kq,vo,vo", known) == ["none", "kq,vo", "vo"]
    assert parse_variants("kq,nope", known) == ["kq", "nope"]


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
    from probe.cli.sweep import main

    bad = write(tmp_path / "bad.yaml", "task: copy\nn: [4]\nvariants: {none: {abb: vo}}\n")
    with pytest.raises(SystemExit) as e:
        main([str(bad), "--dry-run"])
    assert e.value.code == 2
    assert (
        "probe sweep: error: variant 'none' has unknown key(s) ['abb']" in capsys.readouterr().err
    )


def test_cli_refuses_bad_includes_descriptions_and_results_folders_in_one_line(tmp_path, capsys):
    from probe.cli.sweep import main

    def one_line_error(argv) -> str:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1, err
        return err

    recipe = "task: copy\nn: [4]\nvariants: {none: {}}\nfinetune: {n_layer: 1}\n"
    bad = write(tmp_path / "inc.yaml", "include: [1, 2]\n" + recipe)
    assert "include: [1, 2] must be a file name" in one_line_error([str(bad), "--dry-run"])
    bad = write(tmp_path / "desc.yaml", "description: [a, b]\n" + recipe)
    assert "must be one line of text" in one_line_error([str(bad), "--dry-run"])
    good = write(tmp_path / "good.yaml", recipe)
    out = tmp_path / "out"
    (out / "results.jsonl").mkdir(parents=True)  # a folder where the results file goes
    err = one_line_error([str(good), "--out", str(out), "--work-dir", str(tmp_path / "w")])
    assert "results.jsonl' is not a file" in err


def test_a_row_missing_a_field_names_the_file_line_and_field(tmp_path, capsys):
    from probe.cli.sweep import main

    recipe = write(tmp_path / "mini.yaml", "task: copy\nn: [4]\nvariants: {none: {}}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text(
        '{"recipe": "mini", "variant": "none", "n": 4, "seed": 0}\n'
        '{"recipe": "mini", "n": 4, "seed": 1}\n'
    )
    with pytest.raises(SystemExit) as e:
        main([str(recipe), "--out", str(out), "--resume", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "results.jsonl:2: the row has no 'variant'" in err


# -- one bad cell never stops a sweep ------------------------------------------------------


def raising_runner(calls: list, bad: dict):
    """fake_runner, except the cells in ``bad`` ((ab, n, seed) -> exception) raise."""
    ok = fake_runner(calls)

    def run(cfg) -> dict:
        key = (cfg.ab, cfg.n_train, cfg.seed)
        if key in bad:
            calls.append(key)
            raise bad[key]
        return ok(cfg)

    return run


def test_a_failed_cell_writes_its_row_and_the_sweep_goes_on(tmp_path):
    calls: list = []
    bad = {
        ("kq", 8, 0): FloatingPointError("training loss is nan at step 3; lower --lr"),
        ("none", 16, 1): ValueError("bad data\nsecond line"),
    }
    kw = dict(work_dir=tmp_path / "w", progress=False)
    rows = run_sweep(config(), tmp_path, runner=raising_runner(calls, bad), **kw)
    assert len(rows) == len(calls) == 8  # every cell ran
    by_key = {(r["variant"], r["n"], r["seed"]): r for r in read_rows(results_path(tmp_path, None))}
    assert by_key[("kq", 8, 0)]["status"] == "diverged"
    assert by_key[("kq", 8, 0)]["error"].startswith("FloatingPointError: training loss is nan")
    assert by_key[("none", 16, 1)]["status"] == "failed"
    assert by_key[("none", 16, 1)]["error"] == "ValueError: bad data second line"  # one line
    assert "test_loss" not in by_key[("kq", 8, 0)] and by_key[("kq", 8, 0)]["cell_hash"]
    assert sum(r["status"] == "ok" for r in by_key.values()) == 6

    # --resume does not retry them; --retry-failed does (and only them)
    calls.clear()
    assert run_sweep(config(), tmp_path, resume=True, runner=fake_runner(calls), **kw) == []
    assert calls == []
    again = run_sweep(config(), tmp_path, retry_failed=True, runner=fake_runner(calls), **kw)
    assert sorted(calls) == [("kq", 8, 0), ("none", 16, 1)]
    assert all(r["status"] == "ok" for r in again)
    calls.clear()
    assert run_sweep(config(), tmp_path, retry_failed=True, runner=fake_runner(calls), **kw) == []


def test_cli_summary_counts_failed_cells(tmp_path, monkeypatch, capsys):
    import probe.cli.sweep as sweep_cli
    import probe.experiments.sweep as sweep

    recipe = write(
        tmp_path / "r.yaml",
        "task: aba_vs_abb\nn: [8, 16]\nvariants: {none: {ab: none}, kq: {ab: kq}}\n"
        "finetune: {n_layer: 1, n_embd: 16, n_head: 2}\n",
    )
    real = sweep.run_sweep
    bad = {("kq", 16, 0): FloatingPointError("nan")}
    monkeypatch.setattr(
        sweep,
        "run_sweep",
        lambda *a, **k: real(*a, **{**k, "runner": raising_runner([], bad), "progress": False}),
    )
    sweep_cli.main([str(recipe), "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "w")])
    assert "4 cell(s) run, 1 failed" in capsys.readouterr().out


# -- recipes are checked whole before the first cell ----------------------------------------


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", "task: copy\nn: [4, 8\nvariants: {none: {}}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:3: .*fix the YAML") as e:
        load_recipe(bad)
    assert "\n" not in str(e.value)


def test_duplicate_key_anywhere_is_refused_naming_key_and_line(tmp_path):
    dup = write(
        tmp_path / "dup.yaml",
        "task: copy\nn: [4]\nvariants:\n  kq: {ab: kq}\n  kq: {ab: vo}\n",
    )
    with pytest.raises(ValueError, match=r"dup\.yaml:5: .*duplicate key 'kq' \(first on line 4\)"):
        load_recipe(dup)
    nested = write(tmp_path / "nested.yaml", "task: copy\nfinetune: {lr: 0.1, lr: 0.2}\n")
    with pytest.raises(ValueError, match=r"nested\.yaml:2: .*duplicate key 'lr'"):
        load_recipe(nested)


def test_exponent_numbers_are_floats(tmp_path):
    r = write(tmp_path / "r.yaml", "a: 1e-3\nb: 1.5e3\nc: -2E+4\nd: 1e3x\ne: 0.5\n")
    assert load_recipe(r) == {"a": 0.001, "b": 1500.0, "c": -20000.0, "d": "1e3x", "e": 0.5}
    lr = write(
        tmp_path / "lr.yaml", "task: copy\nn: [4]\nvariants: {none: {}}\nfinetune: {lr: 3e-4}\n"
    )
    assert SweepConfig.from_yaml(lr).finetune["lr"] == 3e-4


@pytest.mark.parametrize(
    "variants, task_params, match",
    [
        ({"mlp": {"model": "mlp", "ab": "kq"}}, {}, r"cell \('mlp'.*--ab kq.*MLP"),
        ({"none": {"model": "no_such_model"}}, {}, r"cell \('none'.*--model 'no_such_model'"),
        ({"none": {}}, {"k": 0}, r"cell \('none'.*k"),
    ],
)
def test_every_cell_is_checked_like_finetune_before_the_first_run(
    tmp_path, variants, task_params, match
):
    from probe.cli.sweep import main

    calls: list = []
    over = {"variants": variants, "baseline": None, "task": "majority_k"}
    if task_params:
        over["task_params"] = task_params
    cfg = config(**over, finetune={})
    with pytest.raises(ValueError, match=match):
        run_sweep(cfg, tmp_path, runner=fake_runner(calls), work_dir=tmp_path / "w", progress=False)
    assert calls == [] and not results_path(tmp_path, None).exists()
    # --dry-run says the same
    import yaml

    recipe = write(
        tmp_path / "r.yaml",
        yaml.safe_dump(
            {
                "task": "majority_k",
                "n": [8],
                "variants": variants,
                "baseline": None,
                "task_params": task_params,
            }
        ),
    )
    with pytest.raises(SystemExit) as e:
        main([str(recipe), "--dry-run"])
    assert e.value.code == 2


# -- paths and locks -------------------------------------------------------------------------


def read_only(monkeypatch, folder):
    """``folder`` made read-only, also for root (who may write anywhere): os.access says so."""
    import os

    folder.mkdir()
    folder.chmod(0o500)
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: False if Path(p) == folder else real(p, mode, **k)
    )
    return folder


@pytest.mark.parametrize("which", ["out", "work_dir"])
def test_an_out_that_is_a_file_or_read_only_is_refused_before_any_cell(
    tmp_path, monkeypatch, which
):
    calls: list = []
    kw = {"out": tmp_path / "out", "work_dir": tmp_path / "w"}
    kw[which] = write(tmp_path / "file", "x")
    flag = "--out" if which == "out" else "--work-dir"
    with pytest.raises(FileExistsError, match=f"{flag} .*is a file"):
        run_sweep(config(), runner=fake_runner(calls), progress=False, **kw)
    kw[which] = read_only(monkeypatch, tmp_path / "ro") / "sub"
    with pytest.raises(PermissionError, match=f"{flag} .*not writable"):
        run_sweep(config(), runner=fake_runner(calls), progress=False, **kw)
    assert calls == []


def test_cli_refuses_a_read_only_out_in_one_line(tmp_path, capsys):
    from probe.cli.sweep import main

    recipe = write(tmp_path / "r.yaml", "task: copy\nn: [4]\nvariants: {none: {}}\n")
    target = write(tmp_path / "file", "x")
    with pytest.raises(SystemExit) as e:
        main([str(recipe), "--out", str(target)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("probe sweep: error: --out ") and err.count("\n") == 1


def test_a_second_sweep_on_the_same_results_file_is_refused_naming_the_pid(tmp_path):
    import os

    from probe.files import file_lock

    calls: list = []
    kw = dict(runner=fake_runner(calls), work_dir=tmp_path / "w", progress=False)
    lock = tmp_path / ".results.jsonl.lock"
    with file_lock(lock, "results file", "pass another --out"):
        with pytest.raises(
            FileExistsError, match=f"in use by another probe process \\(pid {os.getpid()}\\)"
        ):
            run_sweep(config(), tmp_path, **kw)
        assert calls == []
        # a shard writes its own file: it is not held up
        run_sweep(config(), tmp_path, shard=(0, 2), **kw)
    assert len(calls) == 4
    run_sweep(config(), tmp_path, resume=True, **kw)  # released
    assert not lock.exists()  # no lock file left behind in a results folder
    assert len(calls) == 8  # the shard's 4 cells count as done


# -- --jobs ----------------------------------------------------------------------------------

INTERRUPTED = """
import os, sys, time
from probe.experiments.sweep import SweepConfig, run_sweep

def runner(cfg):
    if (cfg.ab, cfg.n_train) == ("kq", 16):
        time.sleep(300)  # stuck until Ctrl-C
    return {"test_loss": 1.0 / cfg.n_train, "test_error": 0.0, "steps": 1, "pid": os.getpid()}

if __name__ == "__main__":
    cfg = SweepConfig.from_dict({
        "name": "mini", "task": "aba_vs_abb", "n": [8, 16], "seeds": [0, 1],
        "variants": {"none": {"ab": "none"}, "kq": {"ab": "kq"}},
        "finetune": {"n_layer": 1, "n_embd": 16, "n_head": 2},
    })
    try:
        run_sweep(cfg, sys.argv[1], work_dir=sys.argv[2], jobs=2, runner=runner, progress=False)
    except KeyboardInterrupt:
        sys.exit(130)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_resume_completes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = write(tmp_path / "interrupted.py", INTERRUPTED)
    out, work = tmp_path / "out", tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(work)], env=env)
    path = results_path(out, None)
    deadline = time.monotonic() + 240
    while not (path.exists() and len(read_rows(path)) == 6):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep did not get going"
        time.sleep(0.2)
    time.sleep(0.5)  # the two stuck cells are running
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    rows = read_rows(path)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    workers = {r["pid"] for r in rows}
    assert len(workers) <= 2 and os.getpid() not in workers
    time.sleep(1)
    assert not [p for p in workers if _alive(p)], "a worker outlived Ctrl-C"
    calls: list = []
    again = run_sweep(config(), out, resume=True, runner=fake_runner(calls), work_dir=work)
    assert sorted(calls) == [("kq", 16, 0), ("kq", 16, 1)] and len(again) == 2


def test_jobs_must_be_a_count():
    from probe.experiments.pool import parse_jobs

    assert parse_jobs(3) == 3 and parse_jobs(0) >= 1
    with pytest.raises(ValueError, match="--jobs -1 must be 0 .one per core. or a positive"):
        parse_jobs(-1)


def test_one_bar_counts_cells_and_failures(tmp_path, capsys):
    bad = {("kq", 16, 1): FloatingPointError("nan")}
    run_sweep(config(), tmp_path, runner=raising_runner([], bad), work_dir=tmp_path / "w")
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("sweep mini: 100%") and "8/8" in last and "failed=1" in last


HOLDER = """
import sys, time
from probe.experiments.sweep import SweepConfig, run_sweep

def runner(cfg):
    time.sleep(300)

if __name__ == "__main__":
    cfg = SweepConfig.from_dict({
        "name": "mini", "task": "aba_vs_abb", "n": [8, 16], "seeds": [0, 1],
        "variants": {"none": {"ab": "none"}, "kq": {"ab": "kq"}},
        "finetune": {"n_layer": 1, "n_embd": 16, "n_head": 2},
    })
    run_sweep(cfg, sys.argv[1], work_dir=sys.argv[2], runner=runner, progress=False)
"""


@pytest.mark.slow
def test_the_lock_names_another_process_and_dies_with_it(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = write(tmp_path / "holder.py", HOLDER)
    out, work = tmp_path / "out", tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(work)], env=env)
    lock = out / ".results.jsonl.lock"
    try:
        deadline = time.monotonic() + 240
        while not (lock.exists() and lock.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        calls: list = []
        kw = dict(runner=fake_runner(calls), work_dir=work, progress=False)
        with pytest.raises(FileExistsError, match=f"results file .*\\(pid {proc.pid}\\)"):
            run_sweep(config(), out, resume=True, **kw)
        # a shard's own file is free, but its cells are the running sweep's (issue 21)
        with pytest.raises(FileExistsError, match=f"whole grid \\(pid {proc.pid}\\)"):
            run_sweep(config(), out, shard=(1, 2), **kw)
        assert not calls
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows = run_sweep(config(), out, resume=True, **kw)  # the kernel released the lock
    assert len(rows) == 8  # the refused shard ran nothing


@pytest.mark.dirty_tree
def test_uncommitted_code_is_refused_before_any_cell_unless_allowed(tmp_path, monkeypatch):
    import probe.experiments.sweep as sweep

    calls: list = []
    monkeypatch.setattr(sweep, "uncommitted_code", lambda: ["probe/train/loop.py"])
    kw = dict(runner=fake_runner(calls), work_dir=tmp_path / "w", progress=False)
    with pytest.raises(ValueError, match=r"uncommitted changes \(probe/train/loop.py\)"):
        run_sweep(config(), tmp_path, allow_dirty=False, **kw)
    assert calls == [] and not results_path(tmp_path, None).exists()
    rows = run_sweep(config(), tmp_path, allow_dirty=True, **kw)
    assert len(rows) == len(calls) > 0
    assert rows[0]["code"].endswith("-dirty")  # a git checkout: the commit, and -dirty
    # only probe/ counts: other files being written (results of another sweep) do not
    monkeypatch.setattr(sweep, "uncommitted_code", lambda: [])
    assert not sweep._code_version().endswith("-dirty")


# -- --until-n-star ---------------------------------------------------------------------


def test_until_n_star_skips_larger_n_once_two_sizes_are_below_and_resume_honors_it(
    tmp_path, monkeypatch, capsys
):
    """kq's mean loss (fake_runner: 1/n + 0.01 seed) is below 0.2 from n 8 on, so n 8 and
    16 settle it and n 32, 64 are skipped; none (+0.5) never settles and runs every n."""
    import probe.cli.sweep as sweep_cli
    import probe.experiments.sweep as sweep

    recipe = write(
        tmp_path / "r.yaml",
        "task: aba_vs_abb\nn: [8, 16, 32, 64]\nseeds: [0, 1]\nthreshold: 0.2\n"
        "variants: {none: {ab: none}, kq: {ab: kq}}\n"
        "finetune: {n_layer: 1, n_embd: 16, n_head: 2}\n",
    )
    calls: list = []
    real = sweep.run_sweep
    monkeypatch.setattr(
        sweep,
        "run_sweep",
        lambda *a, **k: real(*a, **{**k, "runner": fake_runner(calls), "progress": False}),
    )
    out = tmp_path / "out"
    argv = [str(recipe), "--out", str(out), "--work-dir", str(tmp_path / "w"), "--until-n-star"]
    sweep_cli.main(argv)
    text = capsys.readouterr().out
    assert sorted(c for c in calls if c[0] == "kq") == [
        ("kq", n, s) for n in (8, 16) for s in (0, 1)
    ]
    assert len([c for c in calls if c[0] == "none"]) == 8
    assert "skipped 4 cell(s)" in text
    assert "skipped           kq  n=64     seed=1" in text
    rows = read_rows([out / "results.jsonl"])
    assert len(rows) == 12
    # the dry run and --resume see the settled n*: nothing left, the skipped cells listed
    sweep_cli.main([*argv, "--resume", "--dry-run"])
    text = capsys.readouterr().out
    assert "0 of 16 cells to run" in text and "4 cell(s) skipped" in text
    calls.clear()
    sweep_cli.main([*argv, "--resume"])
    assert calls == []
    # without --until-n-star, --resume runs the skipped cells
    sweep_cli.main([str(recipe), "--out", str(out), "--work-dir", str(tmp_path / "w"), "--resume"])
    assert sorted(calls) == [("kq", n, s) for n in (32, 64) for s in (0, 1)]


def test_until_n_star_needs_every_seed_ok(tmp_path):
    """A failed seed leaves n* open: its variant is not settled."""
    from probe.experiments.cells import n_star_skips

    cfg = config(n=[8, 16, 32], threshold=0.2)
    bad = {("kq", 16, 1): FloatingPointError("nan")}
    kw = dict(work_dir=tmp_path / "w", progress=False)
    run_sweep(cfg, tmp_path, runner=raising_runner([], bad), **kw)
    assert n_star_skips(cfg, tmp_path) == {}
    run_sweep(cfg, tmp_path, retry_failed=True, runner=fake_runner([]), **kw)
    assert n_star_skips(cfg, tmp_path) == {"kq": 16}


def test_code_tree_is_the_commits_tree_when_clean_and_tracks_uncommitted_edits(tmp_path):
    import subprocess

    from probe.files import code_tree

    def git(*a):
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t", *a],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "a.py").write_text("x = 1\n")
    (tmp_path / "other.txt").write_text("not code\n")
    git("add", "-A")
    git("commit", "-qm", "c")
    committed = git("rev-parse", "HEAD:probe")
    assert code_tree(tmp_path) == committed
    (tmp_path / "other.txt").write_text("results elsewhere do not count\n")
    assert code_tree(tmp_path) == committed
    (tmp_path / "probe" / "a.py").write_text("x = 2\n")
    edited = code_tree(tmp_path)
    assert edited not in (None, committed)
    assert git("diff", "--cached", "--name-only") == ""  # the checkout's index untouched
    git("commit", "-qam", "d")
    assert git("rev-parse", "HEAD:probe") == edited
    assert code_tree(tmp_path / "nowhere") is None


def test_one_lock_per_results_folder_covers_shards_and_overwrite(tmp_path):
    from probe.errors import InUse
    from probe.experiments.sweep import results_folder_lock

    calls: list = []
    kw = dict(runner=fake_runner(calls), work_dir=tmp_path / "w", progress=False)
    out = tmp_path / "out"
    with results_folder_lock(out, (0, 2)):  # shard 0/2 running
        run_sweep(config(), out, shard=(1, 2), **kw)  # shards of one N share the folder
        for other in [dict(), dict(overwrite=True), dict(shard=(0, 3))]:
            with pytest.raises(InUse, match=f"in use by .*pid {os.getpid()}"):
                run_sweep(config(), out, **other, **kw)
    assert (out / "results-shard-1-of-2.jsonl").exists()  # not deleted by --overwrite
    with results_folder_lock(out, None):  # a whole sweep (or --overwrite) running
        with pytest.raises(InUse, match="a sweep of the whole grid"):
            run_sweep(config(), out, shard=(0, 2), **kw)
    run_sweep(config(), out, shard=(0, 3), resume=True, **kw)  # free again


# -- preemption --------------------------------------------------------------------------

PREEMPTED = """
import os, sys, time
from pathlib import Path
from probe import preempt
from probe.errors import Preempted, one_line_errors
from probe.experiments.sweep import SweepConfig, run_sweep

def runner(cfg):
    # a run that checks for a preempting signal after each of its steps, like finetune
    folder = Path(cfg.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    steps = 20000 if (cfg.ab, cfg.n_train) == ("kq", 16) else 1
    for step in range(1, steps + 1):
        time.sleep(0.01)
        if preempt.requested():
            (folder / "stopped").write_text(f"{preempt.requested()} {step} {os.getpid()}")
            raise Preempted(preempt.requested(), step, folder / f"step-{step}")
    return {"test_loss": 1.0 / cfg.n_train, "test_error": 0.0, "steps": steps, "pid": os.getpid()}

if __name__ == "__main__":
    cfg = SweepConfig.from_dict({
        "name": "mini", "task": "aba_vs_abb", "n": [8, 16], "seeds": [0, 1],
        "variants": {"none": {"ab": "none"}, "kq": {"ab": "kq"}},
        "finetune": {"n_layer": 1, "n_embd": 16, "n_head": 2},
    })
    with one_line_errors("probe sweep"), preempt.handled(interrupt=False):
        run_sweep(cfg, sys.argv[1], work_dir=sys.argv[2], jobs=2, runner=runner, progress=False)
"""


def _start_preempted_sweep(tmp_path):
    import os
    import subprocess
    import sys
    import time

    script = write(tmp_path / "preempted.py", PREEMPTED)
    out, work = tmp_path / "out", tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), str(work)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = results_path(out, None)
    deadline = time.monotonic() + 240
    while not (path.exists() and len(read_rows(path)) == 6):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep did not get going"
        time.sleep(0.2)
    time.sleep(1)  # the two long cells are stepping
    return proc, out, work, path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM"])  # SIGUSR1: tests/test_preempt.py
def test_a_preempted_sweep_forwards_the_signal_waits_and_exits_75(tmp_path, name):
    import signal

    proc, out, work, path = _start_preempted_sweep(tmp_path)
    proc.send_signal(getattr(signal, name))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    (line,) = [x for x in err.strip().splitlines() if x]
    assert line.startswith(f"probe sweep: stopped by {name}")
    rows = read_rows(path)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)  # no failed rows
    stopped = sorted(work.glob("*/*/stopped"))
    assert len(stopped) == 2 and all(p.read_text().startswith(name) for p in stopped)
    workers = {int(p.read_text().split()[2]) for p in stopped}
    assert not [p for p in workers if _alive(p)]
    calls: list = []
    again = run_sweep(config(), out, resume=True, runner=fake_runner(calls), work_dir=work)
    assert sorted(calls) == [("kq", 16, 0), ("kq", 16, 1)] and len(again) == 2


@pytest.mark.slow
def test_the_workers_of_a_killed_sweep_checkpoint_and_stop(tmp_path):
    import signal
    import time

    proc, out, work, path = _start_preempted_sweep(tmp_path)
    proc.send_signal(signal.SIGKILL)  # no chance to forward anything
    proc.wait()
    deadline = time.monotonic() + 30
    while len(list(work.glob("*/*/stopped"))) < 2:
        assert time.monotonic() < deadline, "an orphaned worker kept running"
        time.sleep(0.2)
    workers = {int(p.read_text().split()[2]) for p in work.glob("*/*/stopped")}
    time.sleep(1)
    assert not [p for p in workers if _alive(p)], "an orphaned worker outlived its sweep"


def test_a_cell_held_by_a_live_process_gets_no_row_and_resume_runs_it(tmp_path):
    from probe.errors import InUse

    held = ("kq", 16, 1)
    calls: list = []
    fake = fake_runner(calls)

    def runner(cfg):
        if (cfg.ab, cfg.n_train, cfg.seed) == held:
            raise InUse(f"--output-dir {cfg.output_dir!r} is in use by another probe process")
        return fake(cfg)

    kw = dict(work_dir=tmp_path / "w", progress=False)
    with pytest.raises(InUse, match=r"1 cell\(s\) were not run.*--resume"):
        run_sweep(config(), tmp_path, runner=runner, **kw)
    rows = read_rows(results_path(tmp_path, None))
    assert len(rows) == 7 and not any(r["status"] != "ok" for r in rows)
    again = run_sweep(config(), tmp_path, resume=True, runner=fake_runner(calls), **kw)
    assert [(r["variant"], r["n"], r["seed"]) for r in again] == [held]


def test_a_pack_with_a_cell_folder_held_elsewhere_gets_no_failed_rows(tmp_path):
    from probe.experiments.pool import BUSY, run_pack
    from probe.files import folder_lock
    from probe.train.config import FinetuneConfig

    cfgs = [
        FinetuneConfig(
            model="paper",
            task="aba_vs_abb",
            n_train=8,
            max_steps=1,
            seed=s,
            checkpoints=False,
            progress=False,
            output_dir=str(tmp_path / f"c{s}"),
        )
        for s in (0, 1)
    ]
    with folder_lock(tmp_path / "c1", "--output-dir"):
        statuses = run_pack(None, cfgs)
    assert [status for _, status, _ in statuses] == [BUSY, BUSY]


def test_a_committed_recipe_named_from_another_folder_fails_with_one_line_naming_the_fix(
    tmp_path, monkeypatch, capsys
):
    from probe.cli.sweep import main

    monkeypatch.chdir(tmp_path)  # not the root of the clone
    with pytest.raises(SystemExit) as stop:
        main(["recipes/aba_vs_abb.yaml", "--out", "runs/x", "--dry-run"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"recipe {str(tmp_path / 'recipes' / 'aba_vs_abb.yaml')!r} does not exist" in err
    assert "run from its root, or pass the recipe's full path" in err
    assert not (tmp_path / "runs").exists()
