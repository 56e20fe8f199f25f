"""probe demo: the dataset summary, then the quickstart recipe through the sweep."""

import json
from pathlib import Path

import pytest

from probe.cli.demo import RECIPE, build_parser, main, quickstart_config
from probe.experiments.recipe import THRESHOLD
from probe.experiments.sweep import SweepConfig


def test_summary_only(capsys):
    assert main(["--summary-only", "--show", "1"]) == []
    out = capsys.readouterr().out
    assert "aba_vs_abb" in out and "OK: the test uses only unseen symbols" in out
    assert "recipe" not in out  # nothing trained


def test_the_preview_shows_the_sizes_the_runs_use(capsys):
    # the data of the grid's largest run: its n_train, its n_test, and no validation
    # split (the quickstart's runs use none), not render's defaults
    main(["--summary-only", "--show", "0", "--n-test", "37"])
    out = capsys.readouterr().out
    config = quickstart_config(build_parser().parse_args(["--n-test", "37"]))
    settings = config.cell_settings(config.cells()[-1])
    assert settings["n_val"] == 0 and settings["n_test"] == 37
    assert f"train: {settings['n_train']} samples" in out
    assert "validation: no samples (the runs use no validation split)" in out
    assert "test: 37 samples" in out


def test_summary_shows_the_task_it_would_train(capsys):
    main(["--summary-only", "--show", "1", "--task", "copy"])
    assert "task copy (symbolic labels)" in capsys.readouterr().out


def test_refuses_a_negative_show(capsys):
    with pytest.raises(SystemExit):
        main(["--summary-only", "--show", "-1"])
    assert "--show: -1 is negative" in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ["--task", "--seed", "--show", "--summary-only", "--n", "--max-steps", "--n-test"]:
        assert flag in out
    assert "--out" in out and "--recipe" in out


def test_the_recipe_is_the_quickstart():
    config = SweepConfig.from_yaml(RECIPE)
    assert config.task == "aba_vs_abb" and config.seeds == [0]
    assert config.n == [32, 64, 128, 256, 512]
    assert config.variants == {"plain": {"ab": "none"}, "+KQ": {"ab": "kq"}}
    assert config.threshold == THRESHOLD == 0.05
    settings = config.cell_settings(config.cells()[0])
    assert settings["n_val"] == 0 and settings["n_test"] == 500
    assert settings["max_steps"] == 1000 and settings["checkpoints"] is False


def test_options_change_the_recipe():
    args = build_parser().parse_args(
        ["--task", "majority_k:k=5", "--n", "64", "8", "--seed", "2", "--max-steps", "7"]
    )
    config = quickstart_config(args)
    assert (config.task, config.task_params) == ("majority_k", {"k": 5})
    assert config.n == [8, 64] and config.seeds == [2]
    settings = config.cell_settings(config.cells()[0])
    assert settings["max_steps"] == 7 and settings["task_params"] == {"k": 5}
    assert settings["n_test"] == 500  # the recipe's, not overridden


def test_a_tiny_run_trains_the_shown_task_through_the_sweep(capsys, tmp_path):
    rows = main(
        ["--task", "copy", "--n", "16", "8", "--max-steps", "2", "--n-test", "8", "--show", "0"]
        + ["--out", str(tmp_path)]
    )
    assert {(r["variant"], r["n"], r["task"]) for r in rows} == {
        ("plain", 8, "copy"),
        ("plain", 16, "copy"),
        ("+KQ", 8, "copy"),
        ("+KQ", 16, "copy"),
    }
    out = capsys.readouterr().out
    assert "task copy (symbolic labels)" in out
    assert out.count("test loss") >= 5  # a progress line per run, then the table
    assert "plain: n* (test_error <= 0.05) >16" in out
    # the sweep's results file, readable by `probe report`
    lines = (tmp_path / "results" / "results.jsonl").read_text().splitlines()
    assert {json.loads(x)["recipe"] for x in lines} == {"quickstart"}
    with pytest.raises(FileExistsError, match="already holds"):
        main(["--n", "8", "--max-steps", "2", "--n-test", "8", "--out", str(tmp_path)])


ROOT = Path(__file__).resolve().parents[2]  # the checkout
COMMITTED = ROOT / "results" / "quickstart"  # `probe demo --out`'s results, one thread


def readme_quickstart_table() -> str:
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index("**The quickstart**") :]
    return re.search(r"^```\n(.*?)^```", after, flags=re.S | re.M).group(1).strip()


def test_readme_quickstart_table_is_what_the_demo_prints_for_its_committed_rows():
    from probe.cli.demo import format_results
    from probe.jsonl import read_rows

    config = SweepConfig.from_yaml(RECIPE)
    rows = read_rows(COMMITTED / "results.jsonl")
    # the committed rows are the recipe's whole grid, as the demo runs it
    assert sorted((r["variant"], r["n"], r["seed"]) for r in rows) == sorted(
        (v, n, 0) for v in config.variants for n in config.n
    )
    assert {r["test_samples"] for r in rows} == {500} and {r["val_loss"] for r in rows} == {None}
    assert readme_quickstart_table() == format_results(COMMITTED, config).strip()


@pytest.mark.slow
def test_the_demo_computes_the_committed_rows(tmp_path):
    # the cheapest cells of the grid (n = 32, both variants) again, as `make demo` runs
    # them (one thread, a fresh process): the committed rows, hence the README's table,
    # are what the code computes today
    import os
    import subprocess
    import sys

    from probe.jsonl import read_rows

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    code = "from probe.cli.demo import main; main(['--n', '32', '--show', '0', '--out', 'out'])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = {r["variant"]: r for r in read_rows(tmp_path / "out" / "results" / "results.jsonl")}
    committed = {r["variant"]: r for r in read_rows(COMMITTED / "results.jsonl") if r["n"] == 32}
    for variant, row in committed.items():
        assert f"{fresh[variant]['test_loss']:.3f}" == f"{row['test_loss']:.3f}", variant
        assert fresh[variant]["steps"] == row["steps"], variant


def test_the_quickstart_ships_with_the_package_and_the_checkout_recipe_is_it():
    # `probe demo` reads the copy inside the package (a wheel install has no recipes/);
    # recipes/quickstart.yaml includes it, so both are one recipe named quickstart
    import dataclasses
    from pathlib import Path

    assert RECIPE.is_file() and RECIPE.parent.parent == Path(probe_dir())
    root = Path(probe_dir()).parent
    shipped = SweepConfig.from_yaml(RECIPE)
    checkout = SweepConfig.from_yaml(root / "recipes" / "quickstart.yaml")
    assert checkout.name == shipped.name == "quickstart"
    assert dataclasses.asdict(checkout) == dataclasses.asdict(shipped)


def probe_dir() -> str:
    from pathlib import Path

    import probe

    return str(Path(probe.__file__).resolve().parent)
