"""``probe tasks``: the task catalogue, printed."""

from __future__ import annotations

import argparse

NAME = "tasks"
HELP = "print the task catalogue (templates and labels)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> None:
    from probe.tasks.catalogue import format_task_table

    print(format_task_table())
