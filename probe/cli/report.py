"""``probe report``: curves, n* tables, CSV and summary.md from ``probe sweep`` results
(``probe.experiments.report``), printed and written; ``--push-to-hub`` uploads them."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli import entry_points

NAME = "report"
HELP = "tables and curves from sweep results"
DESCRIPTION = "Curves, n* tables, CSV and summary.md from `probe sweep` results."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from probe.experiments.recipe import THRESHOLD

    p.add_argument("results", nargs="+", help="results*.jsonl files or folders holding them")
    p.add_argument("--out", required=True, help="folder for the CSV, PNG and summary.md")
    p.add_argument(
        "--threshold", type=float, default=None, help=f"n* threshold (default {THRESHOLD:g})"
    )
    p.add_argument("--baseline", default=None, help="variant of the ratios (default: none)")
    p.add_argument("--metric", default=None, help="column to read (default: by label kind)")
    p.add_argument(
        "--band",
        default="minmax",
        choices=["minmax", "std"],
        help="the shaded band around each mean curve: the seeds' min to max, or the mean "
        "± one standard deviation over seeds (default: %(default)s)",
    )
    p.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO_ID",
        help="then upload the report, the results files and a card made of summary.md to "
        "this Hub dataset repository (needs a token: `hf auth login` or HF_TOKEN; default: "
        "none, nothing is pushed)",
    )


build_parser, add_parser, _ = entry_points(__name__)  # main: `probe report ARGV`, below


def run(args: argparse.Namespace) -> None:
    from probe.experiments.report import hub_files, push_report, write_report
    from probe.push import check_push

    if args.push_to_hub is not None:  # before any work: the push can happen
        check_push(args.push_to_hub, "--push-to-hub")
        hub_files(args.results)
    written = write_report(
        args.results,
        args.out,
        threshold=args.threshold,
        baseline=args.baseline,
        metric=args.metric,
        band=args.band,
    )
    print((Path(args.out) / "summary.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    if args.push_to_hub is not None:
        print(f"pushed to {push_report(args.results, written, args.push_to_hub)}")


def main(argv: list[str] | None = None) -> None:
    """``probe report ARGV``."""
    from probe.cli import run_command

    run_command(NAME, argv)
