"""The README's Python snippets run as written: every ```python block, in order, in one
fresh interpreter, offline, in an empty folder, twice (a snippet that writes must not
collide with itself or another on a second run).

Conventions in the README's blocks:

- ``# -> TEXT`` on the line after a statement: the statement's value has ``repr``
  TEXT (``...`` stands for anything); ``# -> SomeError: TEXT`` says it raises that
  error with that message.
- ``# needs: hub`` or ``# needs: gpu`` anywhere in a block: skipped here.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"#\s*needs:\s*(hub|gpu)\b")
SHOWN = re.compile(r"^\s*# -> (.*)$")


def python_blocks(text: str) -> list[str]:
    """The README's ```python blocks, in order, without those marked ``# needs:``."""
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    return [b for b in blocks if not SKIP.search(b)]


def shown_outputs(block: str) -> dict[int, str]:
    """Line number (1-based) of each ``# -> TEXT`` comment -> TEXT."""
    return {
        i: m.group(1) for i, line in enumerate(block.splitlines(), 1) if (m := SHOWN.match(line))
    }


def pattern(text: str) -> re.Pattern:
    return re.compile(
        "".join(".*?" if p == "..." else re.escape(p) for p in re.split(r"(\.\.\.)", text)), re.S
    )


# The runner, executed in a fresh interpreter: each statement of each block in one
# namespace; a statement followed by `# -> TEXT` is checked against TEXT.
RUNNER = r"""
import ast, re, sys, traceback
sys.path.insert(0, sys.argv[1])
from tests.test_readme import pattern, python_blocks, shown_outputs

readme = open(sys.argv[2], encoding="utf-8").read()
namespace = {"__name__": "__main__"}
failures = []
for number, block in enumerate(python_blocks(readme), 1):
    shown = shown_outputs(block)
    for stmt in ast.parse(block).body:
        expected = shown.get(stmt.end_lineno + 1)
        where = f"block {number}, line {stmt.lineno}: {ast.get_source_segment(block, stmt)!r}"
        try:
            if isinstance(stmt, ast.Expr):
                value = eval(compile(ast.Expression(stmt.value), "README.md", "eval"), namespace)
            else:
                exec(compile(ast.Module([stmt], []), "README.md", "exec"), namespace)
                value = None
        except Exception as error:
            said = f"{type(error).__name__}: {error}"
            if expected is None or not pattern(expected).fullmatch(said):
                failures.append(f"{where} raised {said}" + (f"; README shows {expected}" if expected else ""))
                traceback.print_exc()
            continue
        if expected is not None and not pattern(expected).fullmatch(repr(value)):
            failures.append(f"{where} gives {value!r}; README shows {expected}")
print("\n".join(failures) or "README OK")
sys.exit(1 if failures else 0)
"""


def test_the_readme_marks_its_outputs_on_statements():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    for block in blocks:
        ends = {stmt.end_lineno for stmt in ast.parse(block).body}
        for line in shown_outputs(block):
            assert line - 1 in ends, f"`# ->` on line {line} follows no statement:\n{block}"


@pytest.mark.slow
def test_readme_python_snippets_run_twice_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    for attempt in ("first", "second"):
        done = subprocess.run(
            [sys.executable, "-c", RUNNER, str(ROOT), str(README)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{attempt} run:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "README OK" in done.stdout


def shell_lines(text: str) -> list[str]:
    """Every line of the README's ```bash blocks."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def shell_commands(text: str) -> list[list[str]]:
    """The ``probe ...`` and ``accelerate launch -m probe.finetune ...`` lines of the
    README's ```bash blocks, as argument lists (comments dropped), without those
    holding placeholders (``PATH_OR_HUB_ID``, ``[--gguf FILE]``)."""
    import shlex

    commands = []
    for line in shell_lines(text):
        words = shlex.split(line, comments=True)
        if "probe.finetune" in words:
            words = ["probe", "finetune", *words[words.index("probe.finetune") + 1 :]]
        if words[:1] != ["probe"] or "[" in line or re.search(r"\b[A-Z_]{4,}\b", line):
            continue
        commands.append(words[1:])
    return commands


def test_readme_commands_parse_as_written():
    # every option the README shows exists and takes the value shown (nothing runs)
    from probe.cli import build_parser
    from probe.cli.linear_probe import build_parser as linear_probe_parser
    from probe.cli.report import build_parser as report_parser
    from probe.cli.sweep import build_parser as sweep_parser
    from probe.train.config import parse_config

    commands = shell_commands(README.read_text(encoding="utf-8"))
    assert {c[0] for c in commands} >= {"tasks", "data", "finetune", "sweep", "report"}
    for args in commands:
        if args[0] == "finetune":
            parse_config(args[1:])
        elif args[0] == "sweep":
            sweep_parser().parse_args(args[1:])
        elif args[0] == "report":
            report_parser().parse_args(args[1:])
        elif args[0] == "linear-probe":
            linear_probe_parser().parse_args(args[1:])
        else:
            build_parser().parse_args(args)


# a comment that says how long a command takes: "~4 h", "5 min", "seconds", "a minute"
DURATION = re.compile(r"(\d+(\.\d+)?\s*(s|min|minutes?|h|hours?)\b|seconds|a minute)")
LONG = ("probe finetune", "probe sweep", "probe demo", "accelerate launch")


def test_readme_commands_that_train_say_how_long_they_take():
    # a newcomer on a laptop CPU must not start a 4-hour run unawares
    lines = [x for x in shell_lines(README.read_text(encoding="utf-8")) if x.startswith(LONG)]
    assert len(lines) >= 6
    for line in lines:
        comment = line.partition("#")[2]
        assert DURATION.search(comment), f"say how long this takes on a CPU: {line}"


def test_readme_finetune_launches_work_from_any_folder():
    # `accelerate launch probe/finetune.py` needs the root of the clone; `-m` does not
    text = README.read_text(encoding="utf-8")
    assert not [x for x in shell_lines(text) if "probe/finetune.py" in x]
    launches = [x for x in shell_lines(text) if x.startswith("accelerate launch")]
    assert launches and all(" -m probe.finetune " in x for x in launches)
    # --quiet: a failed launch ends with probe's one line, not accelerate's traceback
    assert all(x.startswith("accelerate launch --quiet ") for x in launches)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in text


def test_readme_clone_paths_exist_and_say_where_to_run():
    # the commands name files of the clone; each exists there, and the README says to
    # run such commands from the root of the clone
    text = README.read_text(encoding="utf-8")
    paths = set()
    for line in shell_lines(text):
        for word in line.partition("#")[0].split():
            if re.match(r"^(recipes|results|data/template-tasks)\b", word):
                paths.add(word)
    assert paths
    for path in paths:
        assert (ROOT / path).exists(), path
    assert "from the root of the clone" in text


def prose_paragraphs(text: str) -> list[str]:
    """The README's paragraphs outside fenced code blocks, whitespace-normalized."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", prose) if p.strip()]


def test_readme_says_each_thing_once():
    # an edit that pasted a second copy of a section (it happened: 491 lines, the tour
    # twice) is caught here: every heading and every paragraph of prose appears once
    def repeats(text: str) -> list[str]:
        paragraphs = [p for p in prose_paragraphs(text) if len(p) > 80 or p.startswith("#")]
        return sorted({p[:80] for p in paragraphs if paragraphs.count(p) > 1})

    text = README.read_text(encoding="utf-8")
    assert repeats(text) == []
    pasted = "A" + " b" * 50
    twice = text.replace("## Results", f"## Results\n\n{pasted}\n\n{pasted}", 1)
    assert repeats(twice) == [pasted[:80]]
    assert repeats(text + "\n## Results\n") == ["## Results"]
