"""The `probe` command as a user runs it: every subcommand's help, `--version`, the
commands that print, and the one-line error with exit code 2."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import probe.cli as cli
from probe._version import __version__
from probe.tasks.catalogue import list_tasks

ROOT = Path(__file__).resolve().parents[2]


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from probe.cli.demo import build_parser as demo_parser
    from probe.cli.report import build_parser as report_parser
    from probe.train.config import build_parser as finetune_parser

    top = cli.build_parser()
    (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    (data,) = [a for a in sub.choices["data"]._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        "tasks": sub.choices["tasks"],
        "data render": data.choices["render"],
        "data export": data.choices["export"],
        "demo": demo_parser(),
        "finetune": finetune_parser(),
        "report": report_parser(),
    }


FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


@pytest.mark.parametrize(
    "command", ["tasks", "data render", "data export", "demo", "finetune", "report"]
)
def test_every_option_has_help_showing_its_default(command):
    parser = _parsers()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        assert action.help, f"probe {command} {action.option_strings[0]}: no help"
        text = formatter._expand_help(action)
        if action.required or isinstance(action, FLAGS) or action.default is False:
            continue
        assert "default" in text, f"probe {command} {action.option_strings[0]}: no default"


def test_diagonal_help_shows_every_default(capsys):
    from probe.cli.diagonal import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 0)", "default: cos_identity", "(default: 4)", "(default: 64)"):
        assert shown in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"probe {__version__}"


def test_tasks_prints_the_catalogue(capsys):
    cli.main(["tasks"])
    out = capsys.readouterr().out
    for name in list_tasks():
        assert f"`{name}`" in out or name in out
    assert "a b a" in out and "a b b" in out


def test_data_render_then_load(tmp_path, capsys):
    from probe.data.hub import load_dataset

    cli.main(["data", "render", "--task", "copy", "--n-train", "8", "--n-val", "0",
              "--n-test", "4", "--out", str(tmp_path / "d")])  # fmt: skip
    assert (
        f"wrote {tmp_path / 'd' / 'copy'} (train 8, validation 0, test 4)"
        in capsys.readouterr().out
    )
    dsd = load_dataset(tmp_path / "d", "copy")
    assert [dsd[s].num_rows for s in dsd] == [8, 0, 4]


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    for argv, said in [
        (["data", "render", "--task", "nope", "--n-train", "4", "--out", str(tmp_path)], "unknown task"),
        (["finetune", "--task", "aba_vs_abb", "--lora-r", "8", "--output-dir", str(tmp_path / "r")],
         "--lora-r 8: LoRA adapts pretrained weights"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and said in err
    assert not (tmp_path / "r").exists()


def test_export_into_the_committed_catalogue_advises_a_new_folder_first(tmp_path, capsys):
    # the default --out is the committed data/template-tasks: refused, pointing at --out
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["data", "export"])
    finally:
        os.chdir(cwd)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.index("--out") < err.index("--overwrite")


@pytest.mark.slow
def test_demo_summary_only_as_a_command():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", "from probe.cli import main; main()", "demo", "--summary-only",
         "--show", "1"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert out.startswith("task aba_vs_abb (regression labels), seed 0")
    assert "-> OK: the test uses only unseen symbols" in out


HEAVY = ("torch", "transformers", "datasets", "pandas", "matplotlib", "accelerate")


@pytest.mark.parametrize(
    "command",
    [[], ["finetune"], ["attention"], ["diagonal"], ["sweep"], ["report"], ["demo"],
     ["data", "render"], ["data", "lm-eval"]],
)  # fmt: skip
def test_help_answers_without_the_heavy_libraries(command):
    # `probe X --help` took 5-6 s quiet, up to a minute under load, importing torch first
    code = (
        "import sys\nfrom probe.cli import main\n"
        f"try:\n    main({[*command, '--help']!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: probe" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]", command
