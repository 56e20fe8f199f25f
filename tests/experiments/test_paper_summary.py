"""paper_summary's ratio to the paper: a bound where the paper's n* is one, none where
the readout makes the task degenerate (issue 20)."""

import json

from probe.experiments.paper_summary import summary


def _write(tmp_path, task, errors):
    lines = []
    for (variant, n), values in errors.items():
        for seed, err in enumerate(values):
            row = dict(recipe=task, variant=variant, n=n, seed=seed, task=task)
            row.update(variant_index=0, label_kind="symbolic", test_error=err, wall_s=1.0)
            lines.append(json.dumps(row))
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")


def test_a_ratio_against_the_papers_upper_bound_is_a_lower_bound(tmp_path):
    _write(
        tmp_path,
        "copy",
        {
            ("cls_vo_b_lr0.03_w64", 32): [0.2, 0.1, 0.3],
            ("cls_vo_b_lr0.03_w64", 64): [0.01, 0.02, 0.01],
            ("cls_vo_w64", 64): [0.5, 0.5, 0.5],
            ("cls_w64", 256): [0.01, 0.02, 0.0],
        },
    )
    table = summary(tmp_path).set_index("variant")
    assert table.loc["cls_vo_b_lr0.03_w64", "paper n*"] == "<=16"
    assert table.loc["cls_vo_b_lr0.03_w64", "ours / paper"] == ">=4"
    assert table.loc["cls_vo_w64", "ours / paper"] == ">4"  # not reached: > 64 / 16
    assert table.loc["cls_w64", "paper n*"] == "128"
    assert table.loc["cls_w64", "ours / paper"] == "2"  # an exact paper n*: a number


def test_pool_final_copy_gets_no_ratio(tmp_path):
    _write(tmp_path, "copy", {("none_w64", 8): [0.0, 0.01, 0.0], ("vo_w64", 8): [0.0, 0.0, 0.0]})
    table = summary(tmp_path).set_index("variant")
    for variant in ("none_w64", "vo_w64"):
        assert table.loc[variant, "n*"] == "8 (3/3 seeds <= 0.05)"
        assert table.loc[variant, "ours / paper"].startswith("- (pool final")
