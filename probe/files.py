"""Files on disk, written safely: atomic writes, staged folders, locks, writable
folders, and the provenance of the code that wrote them (git).

The one home of these for every stage: a run folder (``probe.train.run_dir``),
a dataset or lm-eval task folder (``probe.data``), a sweep's results
(``probe.experiments``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from probe.errors import InUse, ProbeError

# the checkout this probe is imported from (its git provenance), when it is one
CHECKOUT = Path(__file__).resolve().parents[1]
LOCK_FILE = ".probe.lock"


# -- atomic writes and staged folders ---------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def open_up(folder: Path) -> None:
    """Folder permissions as ``mkdir`` would give them under the current umask
    (``mkdtemp`` makes a folder private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A fresh folder beside ``target`` for the block to fill; when the block ends
    without an error it takes ``target``'s place (an existing ``target`` is moved
    aside, then removed), so a failure leaves nothing half-written and ``target`` as
    it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    trash = None
    try:
        yield staging
        open_up(staging)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, trash / target.name)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if trash is not None and not target.exists():
            os.rename(trash / target.name, target)
        raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


# -- writable folders and locks ---------------------------------------------------------


def check_writable(folder: Path, flag: str) -> None:
    """The nearest existing folder at or above ``folder`` must be writable."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ProbeError(
            f"{flag} {str(folder)!r}: {str(probe)!r} is a file, not a folder; pass a folder "
            "path that does not go through a file"
        )
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{flag} {str(folder)!r}: {str(probe)!r} is not writable; pass a folder you can "
            "write to"
        )


@contextlib.contextmanager
def folder_lock(folder: Path, flag: str) -> Iterator[None]:
    """An exclusive, non-blocking OS lock on ``folder`` itself for the block.

    The lock is a ``flock`` on the folder's own descriptor (no lock file to go
    stale); the holder's pid is written to ``folder/.probe.lock`` for the
    message a second process gets, and removed when the block ends.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pid_file = folder / LOCK_FILE
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _flock_or_refuse(fd, pid_file, f"{flag} {str(folder)!r}", "pass another folder"):
            pid_file.write_text(f"{os.getpid()}\n")
        try:
            yield
        finally:
            pid_file.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def file_lock(lock_file: Path, what: str, advice: str) -> Iterator[None]:
    """An exclusive, non-blocking OS lock keyed by ``lock_file`` for the block (e.g. a
    sweep's lock on one results file): a ``flock`` on that file, which holds the
    holder's pid and is removed when the block ends. A second holder is refused at
    once, naming ``what``, the pid and ``advice``; the kernel releases the lock
    when the process dies (a stale file is then simply locked again)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock_or_refuse(fd, lock_file, what, advice)
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(lock_file).st_ino
        except FileNotFoundError:
            current = None
        if not locked or current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    try:
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if locked:
                lock_file.unlink(missing_ok=True)  # still locked: nobody holds it meanwhile
    finally:
        os.close(fd)  # releases the lock


def _flock_or_refuse(fd: int, pid_file: Path, what: str, advice: str) -> bool:
    """Take an exclusive non-blocking ``flock`` on ``fd``; if another process holds
    it, raise :class:`probe.errors.InUse` (a ``FileExistsError``) naming the pid found in ``pid_file``. False where
    the platform has no ``flock`` (no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = pid_file.read_text().strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise InUse(
            f"{what} is in use by another probe process (pid {holder}); wait for it to "
            f"finish, or {advice}"
        ) from None
    return True


# -- the code's provenance (git) ---------------------------------------------------------


def code_version(dirty: bool) -> str:
    """probe's version and, in a git checkout, the commit (``-dirty`` when ``dirty``:
    local edits to ``probe/``, :func:`uncommitted_code`)."""
    from probe._version import __version__

    described = _git("describe", "--always", "--exclude", "*")
    rev = described.stdout.strip() if described is not None else ""
    if rev and dirty:
        rev += "-dirty"
    return f"{__version__}+{rev}" if rev else __version__


def code_tree(root: str | os.PathLike | None = None) -> str | None:
    """The git tree hash of ``probe/`` as it is on disk now, uncommitted edits included
    (None outside a git checkout): a row that records it proves its code, since
    ``git rev-parse COMMIT:probe`` gives the same hash for a commit holding exactly that
    code. Hashed through a throw-away index, so the checkout's own index is untouched.
    ``root``: the checkout (default: the one this probe is imported from)."""
    root = Path(root) if root is not None else CHECKOUT
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}

        def git(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, env=env, timeout=30
            )

        try:
            if git("add", "-A", "--", "probe").returncode != 0:
                return None
            tree = git("write-tree", "--prefix=probe/")
        except (OSError, subprocess.SubprocessError):
            return None
    return tree.stdout.strip() or None if tree.returncode == 0 else None


def uncommitted_code() -> list[str]:
    """Files under ``probe/`` with uncommitted changes in this checkout (empty outside a
    git checkout): rows made with them could not be reproduced from any commit."""
    out = _git("status", "--porcelain", "--", "probe")
    if out is None or out.returncode != 0:
        return []
    return [line[3:] for line in out.stdout.splitlines() if line.strip()]


def _git(*args: str) -> subprocess.CompletedProcess | None:
    """``git -C CHECKOUT ARGS`` (None where git cannot run)."""
    try:
        return subprocess.run(
            ["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None


def check_folder(folder: Path, flag: str) -> None:
    """``folder`` (made if missing) must not be a file, and must be writable: a sweep
    refuses before its first cell rather than lose that cell's row."""
    from probe.files import check_writable

    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{flag} {str(folder)!r} is a file; pass a folder")
    check_writable(folder, flag)
