"""probe.experiments.launchers: one small recipe (8 cells of a tiny GPT-2, 30 steps)
through ``--launcher local``, ``ray`` (a local Ray, shared by the module) and ``slurm``
(submitit's local executor: real subprocesses, no cluster): the same rows, cell for
cell; then a sweep cut short and resumed through each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probe.experiments.launchers import (
    JOBS,
    LauncherSpec,
    make_launcher,
    row_file,
    start_local_ray,
)
from probe.experiments.sweep import SweepConfig, run_sweep
from probe.jsonl import read_rows

ray = pytest.importorskip("ray")
pytest.importorskip("submitit")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROBE = [sys.executable, "-c", "from probe.cli import main; main()"]
RECIPE = {
    "name": "mini",
    "task": "aba_vs_abb",
    "n": [8, 16],
    "seeds": [0, 1],
    "variants": {"none": {"ab": "none"}, "kq": {"ab": "kq"}},
    "finetune": {
        "model": "gpt2",
        "pretrained": False,
        "n_layer": 1,
        "n_embd": 16,
        "n_head": 2,
        "batch_size": 8,
        "max_steps": 30,
        "n_val": 0,
        "n_test": 64,
        "checkpoint_every": 5,
    },
}


# the kill-and-resume tests: two cells long enough (600 steps, a checkpoint every 50)
# to be caught mid-run
LONG = {
    **RECIPE,
    "name": "long",
    "n": [16],
    "variants": {"none": {"ab": "none"}},
    "finetune": {**RECIPE["finetune"], "max_steps": 600, "checkpoint_every": 50},
}


def config(recipe: dict = RECIPE) -> SweepConfig:
    return SweepConfig.from_dict(recipe)


def same(rows: list[dict]) -> dict[tuple, tuple]:
    """What must not depend on the launcher: per cell, its hash, status and metrics."""
    keys = ("cell_hash", "status", "test_loss", "test_error", "train_loss", "steps", "stopped")
    return {(r["variant"], r["n"], r["seed"]): tuple(r.get(k) for k in keys) for r in rows}


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def wait_for(check, timeout: float = 240.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[tuple, tuple]:
    """``--launcher local --jobs 2``: worker processes with one torch thread each."""
    tmp = tmp_path_factory.mktemp("local")
    rows = run_sweep(config(), tmp / "out", work_dir=tmp / "work", jobs=2, progress=False)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert {r["torch_threads"] for r in rows} == {1}
    return same(rows)


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> dict[tuple, tuple]:
    tmp = tmp_path_factory.mktemp("local-long")
    rows = run_sweep(config(LONG), tmp / "out", work_dir=tmp / "work", jobs=2, progress=False)
    return same(rows)


def steps_saved(folder: Path) -> list[int]:
    return [int(p.name[5:]) for p in (folder / "checkpoints").glob("step-*")]


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module (its start costs ~10-20 s): sweeps join it."""
    start_local_ray(2)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_launcher_spec_checks_and_recipe_block():
    assert LauncherSpec.from_dict({"kind": "ray", "gpus_per_cell": 0.25}).gpus_per_cell == 0.25
    with pytest.raises(ValueError, match="unknown key"):
        LauncherSpec.from_dict({"kind": "ray", "gpu": 1})
    with pytest.raises(ValueError, match="pick one of"):
        LauncherSpec(kind="k8s")
    with pytest.raises(ValueError, match="whole GPUs"):
        LauncherSpec(kind="slurm", gpus_per_cell=0.5)
    assert make_launcher("local") is None
    cfg = SweepConfig.from_dict({**RECIPE, "launcher": {"kind": "slurm", "partition": "gpu"}})
    from probe.cli.sweep import build_parser
    from probe.experiments.launchers import spec_from_args

    args = build_parser().parse_args(["r.yaml", "--time", "30", "--units-per-task", "4"])
    spec = spec_from_args(args, cfg.launcher)
    assert (spec.kind, spec.partition, spec.time, spec.units_per_task) == ("slurm", "gpu", 30, 4)
    args = build_parser().parse_args(["r.yaml", "--launcher", "ray"])
    assert spec_from_args(args, cfg.launcher).kind == "ray"  # flags win


def test_ray_rows_equal_local(reference, ray_address, tmp_path):
    rows = run_sweep(
        config(), tmp_path / "out", work_dir=tmp_path / "work", launcher="ray", progress=False
    )
    assert same(rows) == reference
    assert ray.is_initialized()  # joined, not shut down: the cluster is not the sweep's


def test_ray_interrupted_then_resumed(long_reference, ray_address, tmp_path):
    """Ctrl-C on a `probe sweep --launcher ray --address A` once a cell is mid-run: exit
    130, its Ray tasks cancelled, no row; --resume runs the cells again, each going on
    from its checkpoint, and gives local's rows."""
    recipe = tmp_path / "long.yaml"
    recipe.write_text(json.dumps(LONG))
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [*PROBE, "sweep", str(recipe), "--out", str(out), "--work-dir", str(work)]
    cmd += ["--launcher", "ray", "--address", ray_address, "--allow-dirty"]
    proc = subprocess.Popen(cmd, env=env(), stderr=subprocess.PIPE, text=True)
    cells = config(LONG).cells()

    def cut() -> list:
        return [c for c in cells if 0 < max(steps_saved(work / c.dirname()), default=0) < 600]

    try:
        wait_for(cut, what="a cell with a checkpoint before its last step")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    results = out / "results.jsonl"
    first = read_rows(results) if results.is_file() else []
    assert len(first) < 2, "interrupted before the end"
    rows = run_sweep(config(LONG), out, work_dir=work, launcher="ray", resume=True, progress=False)
    assert len(rows) == 2 - len(first)
    assert same(read_rows(results)) == long_reference  # each cell once
    assert any(r["config"]["resume"] for r in rows)  # went on from a checkpoint


def test_slurm_local_rows_equal_local(reference, tmp_path):
    spec = LauncherSpec(kind="slurm", cluster="local", array_parallelism=2, wait=True)
    rows = run_sweep(
        config(), tmp_path / "out", work_dir=tmp_path / "work", launcher=spec, progress=False
    )
    assert same(rows) == reference
    assert not list((tmp_path / "work" / ".rows").rglob("*.json"))  # collected once


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def test_slurm_killed_mid_cell_then_resumed(long_reference, tmp_path):
    """`probe sweep --launcher slurm --cluster local` returns after submitting and says
    how to collect; one array task is killed (SIGKILL) once its cell has a checkpoint
    before its last step; --resume --wait collects the other task's row, submits the
    killed cell again, which goes on from its checkpoint; each cell has one row, equal
    to local's."""
    recipe = tmp_path / "long.yaml"
    recipe.write_text(json.dumps(LONG))
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [*PROBE, "sweep", str(recipe), "--out", str(out), "--work-dir", str(work)]
    cmd += ["--launcher", "slurm", "--cluster", "local", "--array-parallelism", "2"]
    log = tmp_path / "submit.log"  # a file, not a pipe: the tasks inherit it and live on
    with open(log, "w") as f:
        code = subprocess.run([*cmd, "--allow-dirty"], env=env(), stdout=f, stderr=f).returncode
    said = log.read_text()
    assert code == 0, said
    assert "0 cell(s) run" in said and "collect:" in said and "--resume" in said, said
    records = read_rows(work / JOBS)
    assert len(records) == 2  # one task per cell
    cells = {c.key: c for c in config(LONG).cells()}
    victim = cells[tuple(records[0]["cells"][0])]

    def cut() -> bool:
        return 0 < max(steps_saved(work / victim.dirname()), default=0) < 600

    wait_for(cut, what="a checkpoint before the last step")
    controller = int(records[0]["job_id"])
    for pid in [*_children(controller), controller]:
        os.kill(pid, signal.SIGKILL)
    assert not row_file(work, victim).exists()
    spec = LauncherSpec(kind="slurm", cluster="local", array_parallelism=2, wait=True)
    rows = run_sweep(config(LONG), out, work_dir=work, launcher=spec, resume=True, progress=False)
    assert len(rows) == 2
    assert same(read_rows(out / "results.jsonl")) == long_reference
    resumed = next(r for r in rows if (r["variant"], r["n"], r["seed"]) == victim.key)
    assert resumed["config"]["resume"] is True  # went on from its checkpoint


def test_slurm_preempted_task_requeues_itself(long_reference, tmp_path):
    """SLURM's preemption signal (USR2, as submitit asks SLURM to send it) to an array
    task mid-cell: the task checkpoints and requeues itself (submitit's local executor
    restarts it), goes on from the cell's checkpoint, and --resume --wait collects both
    rows without submitting anything again."""
    out, work = tmp_path / "out", tmp_path / "work"
    spec = LauncherSpec(kind="slurm", cluster="local", array_parallelism=2)
    assert run_sweep(config(LONG), out, work_dir=work, launcher=spec, progress=False) == []
    records = read_rows(work / JOBS)
    cells = {c.key: c for c in config(LONG).cells()}
    victim = cells[tuple(records[0]["cells"][0])]
    wait_for(
        lambda: 0 < max(steps_saved(work / victim.dirname()), default=0) < 600,
        what="a checkpoint before the last step",
    )
    for pid in _children(int(records[0]["job_id"])):
        os.kill(pid, signal.SIGUSR2)
    spec = LauncherSpec(kind="slurm", cluster="local", array_parallelism=2, wait=True)
    rows = run_sweep(config(LONG), out, work_dir=work, launcher=spec, resume=True, progress=False)
    assert len(rows) == 2 and len(read_rows(work / JOBS)) == 2  # nothing submitted again
    assert same(read_rows(out / "results.jsonl")) == long_reference
    resumed = next(r for r in rows if (r["variant"], r["n"], r["seed"]) == victim.key)
    assert resumed["config"]["resume"] is True
