"""Results files: one JSON object per line, appended safely, read forgivingly.

Every results file probe writes (a run's ``results.jsonl``, a sweep's
``results*.jsonl``) goes through :func:`append_row` and is read back through
:func:`read_rows`:

- an append is one JSON line written under an exclusive lock on the file
  (several processes, e.g. sweep shards, may share it), completed across short
  writes and flushed to disk before returning; if the file ends mid-line (a
  writer killed during its append), the new row starts on a fresh line, so
  the fragment never swallows it;
- a reader skips a line that is not a JSON object (such a fragment) and warns
  once per file and line, naming both.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_WARNED: set[tuple[str, int]] = set()


def json_default(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy and torch scalars
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def dumps(row: Mapping[str, Any]) -> str:
    """One row as a JSON line (no NaN: it is not JSON)."""
    return json.dumps(row, default=json_default, allow_nan=False)


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: O_APPEND alone
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def append_row(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` as one JSON line: locked, on a fresh line, fully written, fsynced."""
    path = Path(path)
    data = (dumps(row) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _lock(fd)  # released when fd closes
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # the last writer died mid-line
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(
    paths: str | os.PathLike | Iterable[str | os.PathLike], required: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The rows of one results file or several; a broken line is skipped with a warning
    that names the file and the line (once per process). A row lacking one of the
    ``required`` fields is refused (``ProbeError``) naming the file, line and field."""
    required = tuple(required)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows = []
    for p in paths:
        with open(p) as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                if isinstance(row, dict):
                    if missing := [k for k in required if row.get(k) is None]:
                        from probe.errors import ProbeError

                        raise ProbeError(
                            f"{p}:{number}: the row has no {missing[0]!r} (a results row "
                            f"needs {', '.join(required)}); fix or remove that line"
                        )
                    rows.append(row)
                    continue
                if (str(p), number) not in _WARNED:
                    _WARNED.add((str(p), number))
                    warnings.warn(
                        f"{p}:{number}: skipped a line that is not a JSON row (a write cut "
                        "short by a kill?); the cell it belonged to counts as not run",
                        stacklevel=2,
                    )
    return rows
