"""Running a sweep's cells in this process or in ``--jobs`` worker processes: a
cell's status (``ok``, ``diverged``, ``failed``; ``busy``: held by another process),
the fork-server workers that stop when the sweep dies, and ``--pack`` groups
(:func:`packs`, :func:`run_pack`: the unit every launcher runs)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from probe import preempt
from probe.checks import is_int
from probe.errors import EXIT_PREEMPTED, InUse, Preempted, error_row
from probe.experiments.recipe import Cell

# A row's ``status``: "ok" (also a row without one), or why the cell has no metrics.
OK, DIVERGED, FAILED = "ok", "diverged", "failed"


# A cell whose folder another live process holds (a worker of a killed sweep that is
# still saving): no row, so the next --resume runs it.
BUSY = "busy"
_busy = threading.Event()  # a worker is running a cell or pack


def is_failed(row: Mapping[str, Any]) -> bool:
    """Whether a results row records a cell that failed (``status`` other than ok)."""
    return row.get("status", OK) != OK


def run_cell(runner: Callable[[Any], Mapping[str, Any]], config: Any) -> tuple[str, Any]:
    """Run one cell: ``("ok", row)``, or ``("diverged" | "failed", one-line error)`` for
    a run that raised (``FloatingPointError``: the loss diverged), so one bad cell
    never stops a sweep. In a worker process this is what crosses back."""
    try:
        return OK, dict(runner(config))
    except InUse as e:
        return BUSY, error_row(e)
    except FloatingPointError as e:
        return DIVERGED, error_row(e)
    except Exception as e:  # any per-cell error: data, a model that cannot be built, ...
        return FAILED, error_row(e)


def _worker_init(sweep_pid: int) -> None:
    """A ``--jobs`` worker: one torch thread (N workers share the cores), Ctrl-C left to
    the parent, which stops the workers itself; SIGTERM / SIGUSR1 (forwarded by the
    parent) stop its cell at the next step with a checkpoint (:mod:`probe.preempt`),
    and so does the death of the sweep (a killed sweep leaves no orphan running a cell
    and holding its lock)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preempt.install()
    _watch_sweep(sweep_pid)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _worker_call(fn: Callable[..., Any], *args: Any) -> Any:
    """A call in a worker process, marked busy while it runs."""
    _busy.set()
    try:
        return fn(*args)
    finally:
        _busy.clear()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return not sys.platform.startswith("linux")  # no /proc entry on Linux: gone


def _watch_sweep(sweep_pid: int, every: float = 1.0) -> None:
    """A thread of the worker: once the sweep process is gone (SIGKILL, out of memory),
    SIGTERM this worker, so its cell stops at its next step with a checkpoint, then
    exit once the cell has ended (nobody is left to hand it another)."""

    def watch() -> None:
        while _alive(sweep_pid):
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)
        while _busy.is_set():
            time.sleep(0.1)
        os._exit(EXIT_PREEMPTED)

    threading.Thread(target=watch, name="probe-watch-sweep", daemon=True).start()


# What a worker imports before its first cell: loaded once in the fork server.
WORKER_PRELOAD = ["probe.experiments.pool", "probe.train.run", "probe.data.render"]


def _worker_context() -> Any:
    """Workers are forked from a fork server that has imported torch and probe once
    (``WORKER_PRELOAD``; it has never run torch's thread pools, so forking it is
    safe), so N workers start in a moment instead of importing N times; spawned
    where there is no fork server (Windows)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def start_fork_server() -> None:
    """Start the workers' fork server now (:func:`_worker_context`), so that it imports
    ``WORKER_PRELOAD`` while the sweep's driver imports and plans its cells, on another
    core, instead of after it; the pool forks its workers from it later. No-op where
    there is no fork server."""
    ctx = _worker_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def parse_jobs(jobs: int) -> int:
    """``--jobs N``: N worker processes; 0 means one per core."""
    if not is_int(jobs) or jobs < 0:
        raise ValueError(f"--jobs {jobs!r} must be 0 (one per core) or a positive integer")
    if jobs == 0:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return jobs


def parse_pack(pack: int) -> int:
    """``--pack K``: at most K cells a step (1: each cell alone)."""
    if not is_int(pack) or pack < 1:
        raise ValueError(
            f"--pack {pack!r} must be a positive integer (the most cells trained as one; 1: "
            "each alone)"
        )
    return pack


def _results(
    runner: Callable[[Any], Mapping[str, Any]],
    todo: list[Cell],
    configs: Mapping[tuple, Any],
    jobs: int,
    starting: Callable[[Cell], None],
    pack: int = 1,
) -> Iterable[tuple[Cell, str, Any]]:
    """``(cell, status, row or error)`` as cells finish: in this process with one job,
    else from a pool of ``jobs`` worker processes; with ``pack`` > 1, packs of cells
    (:func:`packs`). Stopping (Ctrl-C, an error) terminates the workers; the cells
    they were running have no row."""
    if pack > 1:
        yield from _packed_results(runner, todo, configs, pack, jobs, starting)
        return
    if jobs == 1 or len(todo) <= 1:
        for c in todo:
            _check_preempted()
            starting(c)
            yield (c, *run_cell(runner, configs[c.key]))
        return
    calls = [(c, run_cell, runner, configs[c.key]) for c in todo]
    for c, result in _in_workers(jobs, calls):
        yield (c, *result)


def _in_workers(jobs: int, calls: list[tuple]) -> Iterable[tuple[Any, Any]]:
    """``(tag, fn(*args))`` for each ``(tag, fn, *args)`` of ``calls``, as they finish in
    a pool of at most ``jobs`` worker processes. Stopping (Ctrl-C, an error) terminates
    the workers; the calls they were running return nothing."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _check_preempted()
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(calls)),
        mp_context=_worker_context(),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )

    def forward(signum: int) -> None:  # a preempting signal: the workers stop their cells
        for w in list((pool._processes or {}).values()):
            with contextlib.suppress(OSError):
                os.kill(w.pid, signum)

    stopped = None
    try:
        with preempt.forwarding(forward):
            futures = {pool.submit(_worker_call, fn, *args): tag for tag, fn, *args in calls}
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Preempted as e:  # its checkpoint is saved; the others finish theirs
                    stopped = stopped or e
                    continue
                yield futures[future], result
        if stopped is not None:
            raise stopped
    except BaseException:
        workers = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for w in workers:
            w.kill()  # SIGTERM would only ask it to stop at its next step
        for w in workers:
            w.join(timeout=10)
        raise
    pool.shutdown()


def _check_preempted() -> None:
    """Before a cell or pack starts: a preempting signal stops the sweep here."""
    if (name := preempt.requested()) is not None:
        raise Preempted(name)


def packs(todo: Sequence[Cell], configs: Mapping[tuple, Any], pack: int) -> list[list[Cell]]:
    """``todo`` in groups of at most ``pack`` cells that can train as one
    (``probe.train.pack.pack_key``: every setting but the seed, the a/b variant and
    its learning rates equal, and n on a symbolic task), n by n (cells of one n train
    for as many steps, so a pack stays full to its end), otherwise in grid order: the
    4 variants × 3 seeds of one n make one pack of 12."""
    from probe.train.pack import pack_key

    groups: dict[str, list[Cell]] = {}
    for c in todo:
        groups.setdefault(pack_key(configs[c.key]), []).append(c)
    groups = {k: sorted(g, key=lambda c: c.n) for k, g in groups.items()}  # stable
    return [g[i : i + pack] for g in groups.values() for i in range(0, len(g), pack)]


def run_pack(runner: Callable[[Any], Mapping[str, Any]], configs: Sequence[Any]) -> list:
    """Run one pack to its end: ``(index, status, row or error)`` per cell, as
    :func:`run_cell` gives them (a pack that fails as a whole fails every cell of it).
    In a worker process this is what crosses back."""
    _check_preempted()
    return list(_pack_statuses(runner, configs))


def _pack_statuses(
    runner: Callable[[Any], Mapping[str, Any]], configs: Sequence[Any]
) -> Iterable[tuple[int, str, Any]]:
    from probe.train.pack import finetune_packed

    if len(configs) == 1:  # a pack of one is a lone run: the vectorized step would only cost
        yield (0, *run_cell(runner, configs[0]))
        return
    given: set[int] = set()
    try:
        for i, result in finetune_packed(configs):
            given.add(i)
            if isinstance(result, FloatingPointError):
                yield i, DIVERGED, error_row(result)
            elif isinstance(result, BaseException):
                yield i, FAILED, error_row(result)
            else:
                yield i, OK, dict(result)
    except Exception as e:  # the pack as a whole: every cell without a result fails
        status = BUSY if isinstance(e, InUse) else FAILED  # a held folder: no row
        for i in range(len(configs)):
            if i not in given:
                yield i, status, error_row(e)


def _packed_results(
    runner: Callable[[Any], Mapping[str, Any]],
    todo: list[Cell],
    configs: Mapping[tuple, Any],
    pack: int,
    jobs: int,
    starting: Callable[[Cell], None],
) -> Iterable[tuple[Cell, str, Any]]:
    """The packs' results: in this process (each cell's row as soon as it finishes),
    or with ``jobs`` > 1 one pack per worker (rows once its pack ends). A group of one
    cell runs alone, through ``runner``."""
    groups = packs(todo, configs, pack)
    if jobs == 1 or len(groups) <= 1:
        for group in groups:
            _check_preempted()
            starting(group[0])
            for i, status, result in _pack_statuses(runner, [configs[c.key] for c in group]):
                yield group[i], status, result
        return
    calls = [(group, run_pack, runner, [configs[c.key] for c in group]) for group in groups]
    for group, results in _in_workers(jobs, calls):
        for i, status, result in results:
            yield group[i], status, result
