"""paper_summary's ratio to the paper: a bound where the paper's n* is one, none where
the readout makes the task degenerate (issue 20)."""

import json

import pytest

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


def test_the_papers_table_puts_both_protocols_side_by_side(tmp_path):
    from probe.experiments.paper_summary import main, paper_table

    root = tmp_path / "paper"
    for sub, values in (
        ("aba_vs_abb", {("kq", 64): [0.5, 0.4, 0.6], ("kq", 256): [0.01, 0.02, 0.01]}),
        (
            "matched/aba_vs_abb",
            {
                ("kq", 16): [0.9, 0.8, 0.9],
                ("kq", 32): [0.04, 0.03, 0.06],  # mean 0.043: n* 32 = the paper's, 2/3
                ("vo", 16): [1.0, 1.0, 1.0],
                ("vo", 256): [0.9, 0.9, 0.9],  # not reached by 256: > 0.25 of 1024
                ("kq,vo", 16): [0.9, 0.9, 0.9],
                ("kq,vo", 256): [0.0, 0.0, 0.0],  # 256 vs 64: 4x
            },
        ),
    ):
        (root / sub).mkdir(parents=True)
        _write(root / sub, "aba_vs_abb", values)
    causes = {"aba_vs_abb, + KQ,VO": "a measured cause", "aba_vs_abb, + KQ": "a cause"}
    table = paper_table(root, causes).set_index("row")
    kq = table.loc["aba_vs_abb, + KQ"]
    assert (kq["paper n*"], kq["literal n* (seeds)"], kq["matched n* (seeds)"]) == (
        "32",
        "256 (3/3)",
        "32 (2/3)",
    )
    # within 2x under the matched protocol, the selected one not run: its cause shows
    assert (kq["matched / paper"], kq["within 2x"], kq["cause"]) == ("1", "yes", "a cause")
    kqvo = table.loc["aba_vs_abb, + KQ,VO"]
    assert (kqvo["literal n* (seeds)"], kqvo["matched / paper"], kqvo["within 2x"]) == (
        "not run",
        "4",
        "no",
    )
    assert kqvo["cause"] == "a measured cause"
    vo = table.loc["aba_vs_abb, + VO"]
    assert (vo["matched n* (seeds)"], vo["matched / paper"], vo["within 2x"]) == (
        ">256",
        ">1",
        "not yet (bound)",
    )
    assert table.loc["same_different, plain", "within 2x"] == "not run"
    # a seed reaching it alone at the largest n, the others still running: not decided
    partial = tmp_path / "partial"
    (partial / "matched/aba_vs_abb").mkdir(parents=True)
    values = {("vo", 512): [0.9] * 3, ("vo", 1024): [0.01]}
    _write(partial / "matched/aba_vs_abb", "aba_vs_abb", values)
    vo = paper_table(partial).set_index("row").loc["aba_vs_abb, + VO"]
    assert (vo["matched n* (seeds)"], vo["matched / paper"], vo["within 2x"]) == (
        "1024 (1/1)",
        "1",
        "not yet (1 of 3 seeds at n 1024)",
    )
    # not reached, with the largest n on one seed: a bound, not decided either
    _write(partial / "matched/aba_vs_abb", "aba_vs_abb", {**values, ("vo", 1024): [0.6]})
    vo = paper_table(partial).set_index("row").loc["aba_vs_abb, + VO"]
    assert (vo["matched n* (seeds)"], vo["within 2x"]) == (
        ">1024",
        "not yet (1 of 3 seeds at n 1024)",
    )
    from probe.experiments.paper_summary import within_2x

    # a bound decides once it passes 2x: ">2" (beyond twice the paper's n*) is a no,
    # ">=2" (the smallest n run, which may be exactly 2x) and ">1" are not yet
    assert [within_2x(f, t) for f, t in [(2, ">2"), (4, ">=4"), (2, ">=2"), (1, ">1")]] == [
        "no",
        "no",
        "not yet (bound)",
        "not yet (bound)",
    ]
    assert within_2x(float("nan"), "?") == "? (both beyond the n run)"
    (root / "causes.yaml").write_text("'aba_vs_abb, + KQ,VO': from the file\n")
    main(["--table", str(root)])
    assert (root / "table.png").stat().st_size > 0  # the table as a picture
    text = (root / "table.md").read_text()
    assert (
        "| aba_vs_abb, + KQ,VO | 64 | not run | 256 (3/3) | 4 | no | not run |  | not run | "
        "not run |  | not run | from the file |" in text
    )
    # the matched protocol with model selection on validation: its own n* and ratio
    (root / "selected/aba_vs_abb").mkdir(parents=True)
    _write(root / "selected/aba_vs_abb", "aba_vs_abb", {("kq,vo", 64): [0.01, 0.02, 0.01]})
    kqvo = paper_table(root, causes).set_index("row").loc["aba_vs_abb, + KQ,VO"]
    assert (kqvo["selected n* (seeds)"], kqvo["selected / paper"]) == ("64 (3/3)", "1")
    assert (kqvo["selected within 2x"], kqvo["within 2x"]) == ("yes", "no")
    assert kqvo["cause"] == "a measured cause"  # what the selection changed
    # within 2x under both: no cause, whatever the file says
    _write(root / "selected/aba_vs_abb", "aba_vs_abb", {("kq", 32): [0.01, 0.02, 0.01]})
    kq = paper_table(root, causes).set_index("row").loc["aba_vs_abb, + KQ"]
    assert (kq["within 2x"], kq["selected within 2x"], kq["cause"]) == ("yes", "yes", "")
    # the 16-head cause studies: their own folder and variant name, their own ratio, and
    # they do not decide whether the cause shows
    (root / "selected/heads16").mkdir(parents=True)
    _write(
        root / "selected/heads16",
        "aba_vs_abb",
        {("vo_h16", 256): [0.9] * 3, ("vo_h16", 512): [0.01, 0.02, 0.04]},
    )
    vo = paper_table(root, causes).set_index("row").loc["aba_vs_abb, + VO"]
    assert (vo["16 heads n* (seeds)"], vo["16 heads / paper"], vo["16 heads within 2x"]) == (
        "512 (3/3)",
        "2",  # half the paper's 1024: the factor either way
        "yes",
    )
    assert vo["selected n* (seeds)"] == "not run"  # selected/aba_vs_abb has no vo rows
    kqvo = paper_table(root, causes).set_index("row").loc["aba_vs_abb, + KQ,VO"]
    assert kqvo["16 heads n* (seeds)"] == "not run"  # heads16 has no kqvo_h16 rows


def test_the_reports_table_is_what_the_committed_rows_give():
    """REPORT section 9's table and results/paper/table.md are regenerated from the
    committed rows: a results file updated without them fails here."""
    from pathlib import Path

    import yaml

    from probe.experiments.paper_summary import paper_table
    from probe.experiments.report import markdown_table

    root = Path(__file__).resolve().parents[2] / "results" / "paper"
    causes = yaml.safe_load((root / "causes.yaml").read_text())
    table = markdown_table(paper_table(root, causes)) + "\n"
    again = "run: python -m probe.experiments.paper_summary --table results/paper --into results/REPORT.md"
    assert (root / "table.md").read_text() == table, again
    report = (root.parent / "REPORT.md").read_text()
    assert f"<!-- paper-table -->\n{table}<!-- /paper-table -->\n" in report, again


def test_into_puts_the_table_between_the_reports_markers_and_nothing_elsewhere(tmp_path):
    from probe.experiments.paper_summary import put_between

    report = tmp_path / "REPORT.md"
    report.write_text(
        "# R\n\ntext\n<!-- paper-table -->\n| old |\n|---|\n<!-- /paper-table -->\nafter\n"
    )
    put_between(report, "| new |\n|---|\n| 1 |\n")
    assert report.read_text() == (
        "# R\n\ntext\n<!-- paper-table -->\n| new |\n|---|\n| 1 |\n<!-- /paper-table -->\nafter\n"
    )
    put_between(report, "| new |\n|---|\n| 1 |\n")  # again: the same file
    assert report.read_text().count("| new |") == 1


@pytest.mark.parametrize(
    "text, found",
    [
        ("no markers\n", "found 0 and 0"),
        ("<!-- paper-table -->\n| t |\n", "found 1 and 0"),
        ("<!-- /paper-table -->\n| t |\n<!-- paper-table -->\n", "found them reversed"),
        ("<!-- paper-table -->\n<!-- paper-table -->\n<!-- /paper-table -->\n", "found 2 and 1"),
    ],
)
def test_into_refuses_a_report_without_one_pair_of_markers_and_writes_nothing(
    tmp_path, capsys, text, found
):
    from probe.experiments.paper_summary import main

    root = tmp_path / "paper"
    (root / "aba_vs_abb").mkdir(parents=True)
    report = tmp_path / "REPORT.md"
    report.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["--table", str(root), "--into", str(report)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(report) in err and "<!-- paper-table -->" in err and found in err
    assert report.read_text() == text  # untouched
    assert not (root / "table.md").exists()  # nothing half-written


def test_the_pictures_n_star_cells_read_as_numbers_and_bounds():
    from probe.experiments.paper_summary import parse_n_star

    assert parse_n_star("128 (2/3)") == (128, "=")
    assert parse_n_star(">4096") == (4096, ">")
    assert parse_n_star("<=16") == (16, "<=")
    assert parse_n_star("not run") is None and parse_n_star("") is None
