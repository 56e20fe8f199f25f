"""glibc malloc settings for training runs, set at a run's start (``tune_malloc``).

glibc's malloc gives a freed block above its mmap threshold (dynamic, at most 32 MiB)
back to the kernel and trims the top of its heap once more than twice that is free; a
training step that frees and allocates the same large activations and gradients every
step then pays for fresh pages every step (page faults and zeroing, in system time).
For the paper's model that starts to count on wide models with large vocabularies
(``copy`` at width 512-1024, n in the thousands: a [vocab, width] gradient is tens of
MiB). :func:`tune_malloc` fixes the mmap threshold at its maximum and raises the trim
threshold, so those blocks stay in the process and are reused; the process keeps its
peak heap instead of returning it between steps. ``bench/malloc.py`` measures it (CPU
time and page faults, alternated processes). ``PROBE_MALLOC=default`` leaves glibc's
own settings; on other C libraries (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30

_done: list[bool] = []


def tune_malloc() -> bool:
    """Set the thresholds once per process; True if glibc took them."""
    if _done:
        return _done[0]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("PROBE_MALLOC") != "default":
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            )
        except (OSError, AttributeError):  # not glibc
            ok = False
    _done.append(ok)
    return ok
