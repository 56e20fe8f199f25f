"""Where a sweep's units run: this machine's worker pool, a Ray cluster, or a SLURM job array.

``probe sweep`` runs *units*: a cell, or with ``--pack K`` a pack of up to K cells
trained as one step (:func:`probe.experiments.pool.packs`). Every launcher runs a
unit through the same function, :func:`probe.experiments.pool.run_pack` (a pack of
one is a lone :func:`~probe.experiments.pool.run_cell`), so the rows, their cell
hashes and their metrics are those of ``--launcher local``. The driver (the
``probe sweep`` process) is the only writer of ``results.jsonl``: it builds each
row from what a unit returns, under the results file's lock, so ``--resume`` and
``--retry-failed`` mean the same under every launcher.

- ``local`` (the default): ``--jobs N`` worker processes on this machine
  (:func:`probe.experiments.pool._results`).
- ``ray`` (``pip install 'symbol-probe[ray]'``): one Ray task per unit, with
  ``num_cpus`` / ``num_gpus`` (fractional GPUs: several small cells share a device)
  and ``max_retries`` (a worker that dies, a node lost: Ray runs the unit again; a
  cell that raises is a failed row, as locally, and is not retried). Without
  ``--address`` a local Ray is started and shut down at the end; with one, or when
  Ray is already initialized in this process, the sweep joins it. Each task runs
  with one torch thread per CPU it holds, in the driver's working directory.
- ``slurm`` (``pip install 'symbol-probe[slurm]'``): one submitit job array per
  submission, one unit per array task (``--units-per-task`` U: U units one after
  another, the task's start paid once), ``--array-parallelism`` at once. A task
  writes each cell's result to ``WORK_DIR/.rows/`` (atomically) and a unit
  that is cut short resumes from its newest checkpoint: the task is a
  :class:`submitit.helpers.Checkpointable`, so SLURM's preemption / time-limit
  signal requeues it, and the requeued task skips the cells it finished.
  ``probe sweep ... --launcher slurm`` returns after submitting; ``--resume``
  (or ``--wait``) collects: it appends the rows of finished cells to
  ``results.jsonl`` once (a cell with a row is never collected again), leaves the
  cells of still-running jobs alone, and submits the rest again. ``cluster:
  local`` runs the same array as local subprocesses (submitit's local executor),
  a few at a time: how the tests run it without a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

LAUNCHERS = ("local", "ray", "slurm")

try:  # a SLURM task is requeued through submitit's checkpoint protocol
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - the slurm extra is not installed
    _Checkpointable = object


@dataclass
class LauncherSpec:
    """How and where units run: ``probe sweep``'s launcher flags, or a recipe's
    ``launcher:`` block (flags given on the command line win)."""

    kind: str = field(default="local", metadata={"help": "local, ray or slurm"})
    # ray
    address: str | None = field(
        default=None, metadata={"help": "Ray: join this cluster (default: start a local Ray)"}
    )
    cpus_per_cell: float = field(
        default=1, metadata={"help": "Ray / SLURM: CPUs per unit (a cell, or a pack)"}
    )
    gpus_per_cell: float = field(
        default=0, metadata={"help": "Ray / SLURM: GPUs per unit (Ray: fractions share a device)"}
    )
    max_retries: int = field(
        default=2, metadata={"help": "Ray: runs of a unit whose worker died (Ray's max_retries)"}
    )
    # slurm
    partition: str | None = field(default=None, metadata={"help": "SLURM partition"})
    time: int = field(default=60, metadata={"help": "SLURM: minutes per array task"})
    array_parallelism: int = field(
        default=64, metadata={"help": "SLURM: array tasks running at once"}
    )
    units_per_task: int = field(
        default=1,
        metadata={
            "help": "SLURM: units run one after another by each array task (>1: each task's "
            "start, ~5 s of imports, is paid once for them)"
        },
    )
    cluster: str = field(
        default="slurm",
        metadata={"help": "SLURM: slurm, or local (submitit's local executor, for trying it)"},
    )
    slurm_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "SLURM: more submitit slurm_* parameters, e.g. {account: A, qos: Q}"},
    )
    wait: bool = field(
        default=False, metadata={"help": "SLURM: wait for the array and collect its rows"}
    )

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHERS:
            raise ValueError(f"launcher {self.kind!r}: pick one of {', '.join(LAUNCHERS)}")
        if not isinstance(self.cpus_per_cell, (int, float)) or self.cpus_per_cell <= 0:
            raise ValueError(f"cpus_per_cell={self.cpus_per_cell!r} must be a positive number")
        if not isinstance(self.gpus_per_cell, (int, float)) or self.gpus_per_cell < 0:
            raise ValueError(f"gpus_per_cell={self.gpus_per_cell!r} must be >= 0 (0.25: a quarter)")
        if self.kind == "slurm" and self.gpus_per_cell not in (0, int(self.gpus_per_cell)):
            raise ValueError(
                f"gpus_per_cell={self.gpus_per_cell}: SLURM gives whole GPUs; use --pack K to "
                "put several cells on one, or --launcher ray for fractions"
            )
        if (
            isinstance(self.units_per_task, bool)
            or not isinstance(self.units_per_task, int)
            or self.units_per_task < 1
        ):
            raise ValueError(f"units_per_task={self.units_per_task!r} must be a positive integer")
        for name in ("max_retries", "time", "array_parallelism"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative integer")
        if self.cluster not in ("slurm", "local"):
            raise ValueError(f"cluster={self.cluster!r}: slurm, or local (no cluster)")
        if not isinstance(self.slurm_args, Mapping):
            raise ValueError(f"slurm_args={self.slurm_args!r} must be a mapping")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "launcher:") -> LauncherSpec:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source} has unknown key(s) {unknown}; accepted: {sorted(known)}")
        return cls(**d)

    @property
    def threads(self) -> int:
        """torch threads in a unit's process: one per whole CPU it holds."""
        return max(1, int(self.cpus_per_cell))


FLAGS = {  # field -> (flag, type)
    "kind": ("--launcher", str),
    "address": ("--address", str),
    "cpus_per_cell": ("--cpus-per-cell", float),
    "gpus_per_cell": ("--gpus-per-cell", float),
    "max_retries": ("--max-retries", int),
    "partition": ("--partition", str),
    "time": ("--time", int),
    "array_parallelism": ("--array-parallelism", int),
    "units_per_task": ("--units-per-task", int),
    "cluster": ("--cluster", str),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``probe sweep``'s launcher flags (default None: the recipe's ``launcher:`` block,
    then :class:`LauncherSpec`'s defaults)."""
    group = parser.add_argument_group(
        "launchers", "where units run (also a recipe's `launcher:` block; flags win)"
    )
    helps = {f.name: f.metadata["help"] for f in fields(LauncherSpec)}
    for name, (flag, kind) in FLAGS.items():
        extra = {"choices": LAUNCHERS} if name == "kind" else {}
        if name == "cluster":
            extra = {"choices": ("slurm", "local")}
        group.add_argument(
            flag, dest=f"launcher_{name}", type=kind, default=None, help=helps[name], **extra
        )
    group.add_argument(
        "--wait", dest="launcher_wait", action="store_true", default=None, help=helps["wait"]
    )


def spec_from_args(args: argparse.Namespace, block: Mapping[str, Any] | None) -> LauncherSpec:
    """The recipe's ``launcher:`` block with the flags given on the command line on top."""
    d = dict(block or {})
    for name in (*FLAGS, "wait"):
        value = getattr(args, f"launcher_{name}", None)
        if value is not None:
            d[name] = value
    return LauncherSpec.from_dict(d, source="the recipe's launcher: block")


# -- units ---------------------------------------------------------------------------------


def units(todo: Sequence[Any], configs: Mapping[tuple, Any], pack: int) -> list[list[Any]]:
    """The cells in the groups that run as one: packs with ``pack`` > 1, else one each."""
    if pack > 1:
        from probe.experiments.pool import packs

        return packs(todo, configs, pack)
    return [[c] for c in todo]


def _in_unit_process(cwd: str | None, threads: int) -> None:
    """A unit's process: the driver's working directory (relative run folders mean the
    same), and ``threads`` torch threads."""
    if cwd is not None:
        os.chdir(cwd)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_unit(
    runner: Callable[[Any], Mapping[str, Any]],
    configs: Sequence[Any],
    cwd: str | None = None,
    threads: int = 1,
) -> list[tuple[int, str, Any]]:
    """One unit in a worker: :func:`probe.experiments.pool.run_pack`'s
    ``(index, status, row or error)`` per cell. A lone cell whose folder holds a
    checkpoint (a retry after its worker died) goes on from it (:func:`_resumable`)."""
    from probe.experiments.pool import run_pack

    _in_unit_process(cwd, threads)
    configs = list(configs)
    return run_pack(runner, configs if len(configs) > 1 else [_resumable(configs[0])])


def _failed_unit(group: Sequence[Any], error: BaseException) -> Iterable[tuple[Any, str, Any]]:
    from probe.errors import error_row
    from probe.experiments.pool import FAILED

    for c in group:
        yield c, FAILED, error_row(error)


# -- Ray --------------------------------------------------------------------------------------


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"--launcher {extra} needs {module}: pip install 'symbol-probe[{extra}]'"
        ) from None


def start_local_ray(num_cpus: int | None = None) -> None:
    """A Ray on this machine with ``num_cpus`` (default: every core this process may use).
    Its workers run at this process's priority: Ray's default (nice 15, so its own
    daemons come first) starves them on a machine busy with other work, and here the
    workers are the work."""
    import ray

    from probe.experiments.pool import parse_jobs

    ray.init(
        num_cpus=num_cpus or parse_jobs(0),
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"worker_niceness": 0},
    )


def ray_results(
    spec: LauncherSpec,
    runner: Callable[[Any], Mapping[str, Any]],
    groups: list[list[Any]],
    configs: Mapping[tuple, Any],
) -> Iterable[tuple[Any, str, Any]]:
    """``(cell, status, row or error)`` as Ray tasks finish, one task per unit."""
    ray = _require("ray", "ray")
    own = False
    if not ray.is_initialized():
        if spec.address:
            ray.init(address=spec.address, include_dashboard=False, log_to_driver=False)
        else:
            start_local_ray()
            own = True
    refs: dict[Any, list[Any]] = {}
    try:
        task = ray.remote(run_unit).options(
            num_cpus=spec.cpus_per_cell,
            num_gpus=spec.gpus_per_cell,
            max_retries=spec.max_retries,
            retry_exceptions=False,  # a cell's own error is its row, as locally
        )
        cwd = os.getcwd()
        for g in groups:
            refs[task.remote(runner, [configs[c.key] for c in g], cwd, spec.threads)] = g
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                group = refs[ref]
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as e:  # retries spent: the unit's cells fail
                    yield from _failed_unit(group, e)
                    continue
                for i, status, result in results:
                    yield group[i], status, result
    except BaseException:  # Ctrl-C, or the driver stopped: nothing of ours keeps running
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if own:
            ray.shutdown()


# -- SLURM (submitit) ---------------------------------------------------------------------------

ROWS = ".rows"  # WORK_DIR/.rows/<variant>/n<n>-seed<seed>.json: a finished cell's result
JOBS = ".slurm-jobs.jsonl"  # WORK_DIR/.slurm-jobs.jsonl: one line per array task submitted
LOGS = ".submitit"  # WORK_DIR/.submitit/: submitit's pickles and logs


def row_file(work_dir: Path, cell: Any) -> Path:
    return Path(work_dir) / ROWS / f"{cell.dirname()}.json"


def _write_json(path: Path, data: Any) -> None:
    from probe.jsonl import json_default

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, default=json_default))
    os.replace(tmp, path)  # whole or absent: a task killed mid-write leaves no file


def _resumable(config: Any) -> Any:
    """A cell cut short (preempted, killed, its worker lost) goes on from its newest
    checkpoint, where ``probe finetune --resume`` would accept it; else it starts over."""
    from probe.train.run_dir import RunDir

    run = RunDir(config.output_dir)
    if not (config.checkpoints and run.checkpoints()):
        return config
    resumed = replace(config, resume=True, overwrite=False)
    try:
        run.check(resumed)
    except (ValueError, OSError):  # other settings than the checkpoint's: start over
        return config
    return resumed


class SlurmTask(_Checkpointable):
    """One array task: its units, each cell's result written to its row file. Requeued
    (preemption, time limit) it runs again with the same arguments, skipping the cells
    whose file exists and resuming the one cut short from its checkpoint."""

    def __call__(
        self,
        runner: Callable[[Any], Mapping[str, Any]],
        units: list[list[tuple[Any, Any, str]]],
        work_dir: str,
        cwd: str,
        threads: int,
    ) -> int:
        from probe.experiments.pool import run_pack

        _in_unit_process(cwd, threads)
        ran = 0
        for unit in units:
            left = [(c, cfg, h) for c, cfg, h in unit if not row_file(work_dir, c).exists()]
            if not left:
                continue
            packed = len(left) > 1  # a pack has no checkpoints: it starts over
            cfgs = [cfg if packed else _resumable(cfg) for _, cfg, _ in left]
            for i, status, result in run_pack(runner, cfgs):
                c, _, h = left[i]
                _write_json(
                    row_file(work_dir, c), {"cell_hash": h, "status": status, "result": result}
                )
                ran += 1
        return ran


def _executor(spec: LauncherSpec, folder: Path, name: str) -> Any:
    submitit = _require("submitit", "slurm")
    ex = submitit.AutoExecutor(folder=folder, cluster=spec.cluster)
    params: dict[str, Any] = {
        "name": f"probe-{name}",
        "timeout_min": spec.time,
        "cpus_per_task": max(1, int(spec.cpus_per_cell)),
        "slurm_array_parallelism": spec.array_parallelism,
    }
    if spec.gpus_per_cell:
        params["gpus_per_node"] = int(spec.gpus_per_cell)
    if spec.partition:
        params["slurm_partition"] = spec.partition
    params.update(
        {f"slurm_{k}" if not k.startswith("slurm_") else k: v for k, v in spec.slurm_args.items()}
    )
    ex.update_parameters(**params)
    return ex


def _alive(record: Mapping[str, Any]) -> bool:
    """Whether a submitted array task may still write rows."""
    if record["cluster"] == "local":  # the job id is the controller's pid
        try:
            stat = Path(f"/proc/{int(record['job_id'])}/stat").read_text()
        except (OSError, ValueError):
            return False
        return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    import submitit

    state = submitit.SlurmJob(record["folder"], record["job_id"]).state
    return state.split()[0] in {
        "PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
        "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "UNKNOWN",
    }  # fmt: skip


def _records(work_dir: Path, cells: set[tuple]) -> list[dict[str, Any]]:
    """The array tasks submitted for any of ``cells``."""
    from probe.jsonl import read_rows

    path = work_dir / JOBS
    rows = read_rows(path) if path.is_file() else []
    return [r for r in rows if any(tuple(k) in cells for k in r["cells"])]


class SlurmLauncher:
    """Collect what finished, leave what runs, submit the rest; with ``wait``, then
    collect until the array ends. ``note`` says what to do next."""

    def __init__(self, spec: LauncherSpec) -> None:
        self.spec = spec
        self.note = ""
        self.collected: set[tuple] = set()

    def results(
        self,
        runner: Callable[[Any], Mapping[str, Any]],
        todo: list[Any],
        configs: Mapping[tuple, Any],
        hashes: Mapping[tuple, str],
        pack: int,
        work_dir: Path,
        name: str,
        command: str | None = None,
    ) -> Iterable[tuple[Any, str, Any]]:
        from probe.jsonl import append_row

        work_dir = Path(work_dir).resolve()
        yield from self._collect(todo, hashes, work_dir)
        wanted = {c.key for c in todo} - self.collected
        running: set[tuple] = set()
        for record in _records(work_dir, wanted):
            if _alive(record):
                running.update(tuple(k) for k in record["cells"])
        running &= wanted
        left = [c for c in todo if c.key in wanted - running]
        groups = units(left, configs, pack)
        jobs = []
        if groups:
            if self.spec.cluster == "local":  # no scheduler: K tasks, each a share of the units
                k = max(1, min(self.spec.array_parallelism or 1, len(groups)))
                tasks = [groups[i::k] for i in range(k)]
            else:
                u = self.spec.units_per_task
                tasks = [groups[i : i + u] for i in range(0, len(groups), u)]
            ex = _executor(self.spec, work_dir / LOGS, name)
            cwd = os.getcwd()
            args = [[[(c, configs[c.key], hashes[c.key]) for c in g] for g in t] for t in tasks]
            n = len(tasks)
            jobs = ex.map_array(
                SlurmTask(),
                [runner] * n,
                args,
                [str(work_dir)] * n,
                [cwd] * n,
                [self.spec.threads] * n,
            )
            for job, t in zip(jobs, tasks, strict=True):
                append_row(
                    work_dir / JOBS,
                    {
                        "job_id": job.job_id,
                        "cluster": self.spec.cluster,
                        "folder": str(work_dir / LOGS),
                        "cells": [list(c.key) for g in t for c in g],
                        "submitted": time.time(),
                    },
                )
        submitted = sum(len(g) for g in groups)
        if not self.spec.wait:
            self.note = self._next_steps(submitted, len(running), jobs, work_dir, command)
            return
        # --wait: collect until every cell has its row or no task is left to write it
        while True:
            waiting = [c for c in todo if c.key not in self.collected]
            yield from self._collect(waiting, hashes, work_dir)
            waiting = [c for c in waiting if c.key not in self.collected]
            if not waiting:
                break
            for job in jobs:
                job.done()  # reaps a finished local task
            if not any(_alive(r) for r in _records(work_dir, {c.key for c in waiting})):
                yield from self._collect(waiting, hashes, work_dir)  # written as it ended
                waiting = [c for c in waiting if c.key not in self.collected]
                if waiting:
                    self.note = (
                        f"{len(waiting)} cell(s) have no row: their task ended without one "
                        f"(logs: {work_dir / LOGS}); run the same command with --resume to "
                        "submit them again"
                    )
                break
            time.sleep(0.2 if self.spec.cluster == "local" else 30.0)  # sacct is no toy

    def _collect(
        self, cells: Iterable[Any], hashes: Mapping[tuple, str], work_dir: Path
    ) -> Iterable[tuple[Any, str, Any]]:
        """Rows of finished cells, each once: yielded (the driver appends it), then its
        file removed; a file left by a crash between the two belongs to a cell that now
        has a row, which the driver never asks for again."""
        for c in cells:
            path = row_file(work_dir, c)
            if not path.is_file():
                continue
            data = json.loads(path.read_text())
            if data.get("cell_hash") != hashes[c.key]:  # another recipe's: run it again
                path.unlink()
                continue
            yield c, data["status"], data["result"]
            path.unlink()
            self.collected.add(c.key)

    def _next_steps(
        self, submitted: int, running: int, jobs: list[Any], work_dir: Path, command: str | None
    ) -> str:
        again = command or "the same probe sweep command"
        lines = []
        if submitted:
            ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
            lines.append(
                f"submitted {submitted} cell(s) as {len(jobs)} array task(s) (job {', '.join(ids)})"
            )
        if running:
            lines.append(f"{running} cell(s) still running in earlier jobs")
        if submitted or running:
            watch = (
                f"squeue --me --name probe-*  (logs: {work_dir / LOGS})"
                if self.spec.cluster == "slurm"
                else f"ls {work_dir / ROWS}  (logs: {work_dir / LOGS})"
            )
            lines.append(f"watch: {watch}")
            lines.append(f"collect: {again} --resume  (or --wait to block until done)")
        return "\n".join(lines)


# -- dispatch -------------------------------------------------------------------------------------


class RayLauncher:
    """One Ray task per unit (:func:`ray_results`)."""

    def __init__(self, spec: LauncherSpec) -> None:
        self.spec = spec
        self.note = ""

    def results(self, runner, todo, configs, hashes, pack, work_dir, name, command=None):
        return ray_results(self.spec, runner, units(todo, configs, pack), configs)


def make_launcher(spec: LauncherSpec | str | None) -> RayLauncher | SlurmLauncher | None:
    """The launcher object for ``spec`` (None for local: ``pool._results`` runs it)."""
    if spec is None or isinstance(spec, (RayLauncher, SlurmLauncher)):
        return spec
    if isinstance(spec, str):
        spec = LauncherSpec(kind=spec)
    if spec.kind == "ray":
        return RayLauncher(spec)
    if spec.kind == "slurm":
        return SlurmLauncher(spec)
    return None
