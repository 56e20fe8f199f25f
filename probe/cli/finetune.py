"""``probe finetune``: one run (``probe.train.run``); its flags are generated from
``FinetuneConfig``'s fields (``probe.train.config.add_arguments``), the same ones
``accelerate launch -m probe.finetune`` takes."""

from __future__ import annotations

import argparse

NAME = "finetune"
HELP = "train or fine-tune one model on one task"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from probe.train.config import HelpFormatter, add_arguments, config_description

    p = subparsers.add_parser(
        NAME, help=HELP, description=config_description(), formatter_class=HelpFormatter
    )
    add_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> None:
    """The run's own entry point (``probe.train.run.main``: one line per user error, the
    command that continues a preempted run) on the same arguments."""
    from probe.train.run import main

    main(args.argv)


def main(argv: list[str] | None = None) -> None:
    """``probe finetune ARGV``."""
    from probe.cli import run_command

    run_command(NAME, argv)
