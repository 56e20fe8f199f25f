"""Preemption: a signal asks a run to stop at its next step boundary.

A scheduler preempts a job with SIGTERM (SLURM sends SIGUSR1 first with
``--signal=USR1@T``, and SIGTERM at the end); a user stops one with Ctrl-C.
While :func:`handled` is active, those signals only set a flag
(:func:`requested`); the training loop reads it after each step, saves a
checkpoint and raises :class:`probe.errors.Preempted`, which the entry point
turns into one line and exit code ``probe.errors.EXIT_PREEMPTED`` (75). A
second SIGINT stops at once (``KeyboardInterrupt``).

Handlers are installed only from the main thread, and only by the outermost
:func:`handled` (a sweep's, when it runs ``finetune`` in its own process); the
previous handlers come back when it ends. :func:`forwarding` sends each signal
received on to other processes (a sweep's ``--jobs`` workers).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

# The signals that preempt: a scheduler's (SIGTERM; SIGUSR1 is SLURM's warning).
SIGNALS = ("SIGTERM", "SIGUSR1")

_received: list[int] = []
_installed = False
_forwarders: list[Callable[[int], None]] = []


def requested() -> str | None:
    """The name of the first preempting signal received, or None."""
    return signal.Signals(_received[0]).name if _received else None


def _handler(signum: int, frame) -> None:
    if signum == signal.SIGINT and _received:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    _received.append(signum)
    for forward in list(_forwarders):
        forward(signum)


def install(interrupt: bool = False) -> bool:
    """Install the flag-setting handlers for good (a sweep's worker process); with
    ``interrupt`` SIGINT too. False where they cannot be (not the main thread) or are
    already installed."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return False
    names = SIGNALS + ("SIGINT",) * interrupt
    for name in names:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _handler)
    _installed = True
    return True


@contextlib.contextmanager
def handled(interrupt: bool = True) -> Iterator[None]:
    """Within the block, SIGTERM and SIGUSR1 (with ``interrupt``, SIGINT too) set the
    preemption flag instead of ending the process. Nested or off the main thread:
    nothing changes (the outer handlers stay)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    names = SIGNALS + ("SIGINT",) * interrupt
    previous = {
        name: signal.getsignal(getattr(signal, name)) for name in names if hasattr(signal, name)
    }
    install(interrupt)
    try:
        yield
    finally:
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)
        _installed = False
        _received.clear()


@contextlib.contextmanager
def forwarding(forward: Callable[[int], None]) -> Iterator[None]:
    """Within the block, every signal the handlers receive is also given to
    ``forward(signum)`` (called from the signal handler: keep it to ``os.kill``)."""
    _forwarders.append(forward)
    try:
        yield
    finally:
        _forwarders.remove(forward)
