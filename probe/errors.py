"""User errors, preemption, and the one place every entry point turns them into one line.

A mistake in what the user gave (a flag, a recipe, a folder) raises
:class:`ProbeError` (a ``ValueError``, so ``except ValueError`` still catches
it) with the value, what was expected and the fix. Each entry point (``probe
...``, ``python probe/finetune.py``, ``accelerate launch probe/finetune.py``,
``probe sweep``, ``probe report``) runs under :func:`one_line_errors`, which
prints such an error as one line and exits 2. Only the user-error types of
``USER_ERRORS`` are shown that way: anything else (a ``KeyError``, a
``TypeError`` inside probe) is a bug and keeps its traceback. ``PROBE_DEBUG=1``
shows the traceback of a user error too.

A run stopped by a signal (SIGTERM, SIGUSR1; SIGINT for ``probe finetune``:
:mod:`probe.preempt`) raises :class:`Preempted` once its checkpoint is saved;
the entry point prints what was saved and the command that continues, and
exits ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL`` of sysexits.h: "try again
later"), which a requeue script can test.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_USAGE = 2
EXIT_PREEMPTED = (
    75  # sysexits.h EX_TEMPFAIL: stopped on request; the same command + --resume continues
)
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C, or one outside a run's training loop


class ProbeError(ValueError):
    """Bad input: the message names the value, what was expected and the fix."""


class MissingExtra(ProbeError, ModuleNotFoundError):
    """An optional dependency is not installed; the message says how to install it."""


class InUse(ProbeError, FileExistsError):
    """A folder or file another live probe process holds (its lock); names the holder."""


class CannotLoad(ProbeError, OSError):
    """A model or config that cannot be read (not found, offline, not a checkpoint); an
    ``OSError`` too, as the loaders it wraps raise. Names what was asked and what to pass."""


class Preempted(BaseException):
    """A run (or sweep) stopped at a step boundary on a signal, its checkpoint saved.

    A ``BaseException`` (like ``KeyboardInterrupt``), so the per-cell ``except
    Exception`` of a sweep never records it as a failed cell. ``signal`` is the
    signal's name, ``step`` the step the run stopped after and ``checkpoint``
    the folder saved (None for a run that keeps no checkpoints, or a sweep),
    ``detail`` what else was kept; ``command`` (set by the entry point) the command
    that continues.
    """

    def __init__(
        self,
        signal: str,
        step: int | None = None,
        checkpoint: os.PathLike | str | None = None,
        detail: str = "",
    ):
        super().__init__(signal, step, checkpoint)
        self.signal, self.step, self.checkpoint, self.detail = signal, step, checkpoint, detail
        self.command: str | None = None

    def with_command(self, command: str) -> Preempted:
        self.command = command
        return self

    def __str__(self) -> str:
        text = f"stopped by {self.signal}"
        if self.detail:
            text += f" ({self.detail})"
        if self.step is not None:
            text += f" after step {self.step}"
        if self.checkpoint is not None:
            text += f"; checkpoint saved in {str(self.checkpoint)!r}"
        elif self.step is not None:
            text += "; no checkpoint kept (--no-checkpoints): the run starts over"
        if self.command:
            text += f"; continue with: {self.command}"
        return text


# What an entry point shows as one line (exit 2): probe's own error type, and the
# built-in types probe raises for bad input. KeyError, TypeError, ModuleNotFoundError
# (other than MissingExtra) and the rest are bugs: tracebacks.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ProbeError,
    ValueError,
    FileExistsError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ConnectionError,
    FloatingPointError,
)


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(error).split())


def error_row(error: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line, cut at ``limit`` characters: why a sweep's cell
    failed, as its row records it."""
    text = f"{type(error).__name__}: {one_line(error)}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run an entry point's body: a user error is printed as ``PROG: error: ...`` and
    exits 2; a preemption prints what was saved and exits ``EXIT_PREEMPTED``; a
    ``KeyboardInterrupt`` prints one line and exits 130. Other exceptions pass."""
    try:
        yield
    except Preempted as p:
        if _main_process():
            print(f"{prog}: {one_line(p)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PREEMPTED) from None
    except KeyboardInterrupt:
        if os.environ.get("PROBE_DEBUG"):
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except USER_ERRORS as error:
        if os.environ.get("PROBE_DEBUG"):
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE) from None
