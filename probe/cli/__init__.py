"""The ``probe`` command: one parser tree, a module a command.

Each command is a module of this package with ``NAME``, ``HELP`` (its line in
``probe --help``), ``add_parser(subparsers)`` (its subparser, whose
``set_defaults(run=...)`` names the function that does it) and ``run(args)``.
:func:`main` parses once and runs the command inside
``probe.errors.one_line_errors``: a user error is one line (exit 2); anything else
is a bug and keeps its traceback. The commands print; the library below does not
(it returns, or logs).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from probe.errors import one_line_errors

# the modules of this package that are commands, in the order `probe --help` lists them
COMMANDS = (
    "tasks",
    "data",
    "demo",
    "finetune",
    "diagonal",
    "attention",
    "linear_probe",
    "sweep",
    "report",
)


def command(name: str):
    """The module of command ``name`` (``linear-probe`` or ``linear_probe``)."""
    return importlib.import_module(f"probe.cli.{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    """The whole tree: ``probe --help`` lists every command, ``probe COMMAND --help`` is
    argparse's own help of that command. Building it imports no torch, transformers,
    datasets, pandas or matplotlib (tests/cli/test_commands.py)."""
    from probe._version import __version__

    parser = argparse.ArgumentParser(
        prog="probe", description="When can transformers reason with abstract symbols?"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        command(name).add_parser(sub)
    return parser


def standalone(module) -> argparse.ArgumentParser:
    """A command module's parser on its own (``prog`` "probe NAME"), as in the tree: its
    ``NAME``, ``DESCRIPTION``, ``FORMATTER`` (optional) and ``add_arguments``."""
    p = argparse.ArgumentParser(
        prog=f"probe {module.NAME}",
        description=module.DESCRIPTION,
        formatter_class=getattr(module, "FORMATTER", argparse.HelpFormatter),
    )
    module.add_arguments(p)
    return p


def subcommand(subparsers, module) -> argparse.ArgumentParser:
    """A command module's subparser in the tree, which runs ``module.run(args)`` (with
    ``args.parser``, for an error in argparse's words)."""
    p = subparsers.add_parser(
        module.NAME,
        help=module.HELP,
        description=module.DESCRIPTION,
        formatter_class=getattr(module, "FORMATTER", argparse.HelpFormatter),
    )
    module.add_arguments(p)
    p.set_defaults(run=module.run, parser=p)
    return p


def entry_points(name: str):
    """The ``build_parser``, ``add_parser`` and ``main`` of the command module ``name``
    (its ``__name__``): its parser alone (:func:`standalone`), its subparser in the tree
    (:func:`subcommand`), and ``main(argv)``: ``run`` on that parser's arguments, returning
    what ``run`` returns (errors raised as they are: ``probe NAME`` is the one-line
    entry point)::

        build_parser, add_parser, main = entry_points(__name__)
    """

    def module():
        return sys.modules[name]

    def build_parser() -> argparse.ArgumentParser:
        return standalone(module())

    def add_parser(subparsers) -> argparse.ArgumentParser:
        return subcommand(subparsers, module())

    def main(argv: list[str] | None = None):
        return module().run(build_parser().parse_args(argv))

    return build_parser, add_parser, main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # what follows the command's name, for a command that reruns or repeats it
    # (`probe finetune`'s own entry point; the command that continues a stopped sweep)
    args.argv = argv[argv.index(args.command) + 1 :]
    with one_line_errors(f"probe {args.command}"):
        args.run(args)


def run_command(name: str, argv: list[str] | None = None) -> None:
    """``probe NAME ARGV`` (``ARGV``: this process's arguments when None)."""
    main([name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
