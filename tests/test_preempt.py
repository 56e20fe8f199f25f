"""Preemption (probe.preempt, probe.errors.Preempted): SIGTERM, SIGUSR1 and Ctrl-C end a
run at the next step boundary with a checkpoint, one line and exit code 75; --resume
continues it to the metrics of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import probe.train.loop
from probe import preempt
from probe.errors import EXIT_PREEMPTED, Preempted
from probe.jsonl import read_rows
from probe.train.config import FinetuneConfig
from probe.train.run import finetune, main

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    n_train=16,
    n_val=5,
    n_test=13,
    batch_size=4,
    eval_batch_size=4,
    n_layer=1,
    n_embd=16,
    n_head=2,
    progress=False,
)
METRICS = ("test_loss", "test_error", "val_loss", "val_error", "train_loss", "steps", "epochs")


def tiny(tmp_path, name="run", **overrides) -> FinetuneConfig:
    return FinetuneConfig(**{**TINY, "output_dir": str(tmp_path / name), **overrides})


def signal_at_step(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Send ``signum`` to this process during the forward pass of training step ``step``."""
    real = probe.train.loop.loss_fn
    calls = {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(probe.train.loop, "loss_fn", counting)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_signal_stops_at_the_step_boundary_and_resume_is_bit_identical(
    tmp_path, monkeypatch, signum
):
    whole = finetune(tiny(tmp_path, "whole", max_steps=7, checkpoint_every=5))
    signal_at_step(monkeypatch, 3, signum)
    with pytest.raises(Preempted) as stopped:
        finetune(tiny(tmp_path, max_steps=7, checkpoint_every=5))
    monkeypatch.undo()
    assert stopped.value.step == 3 and stopped.value.signal == signal.Signals(signum).name
    assert Path(stopped.value.checkpoint).name == "step-3"
    assert not (tmp_path / "run" / "results.jsonl").exists()  # no row for a stopped run
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = finetune(tiny(tmp_path, max_steps=7, checkpoint_every=5, resume=True))
    for key in METRICS:
        assert resumed[key] == whole[key], key
    assert len(read_rows(tmp_path / "run" / "results.jsonl")) == 1


def test_a_signal_on_a_checkpoint_step_saves_once(tmp_path, monkeypatch):
    signal_at_step(monkeypatch, 2)
    with pytest.raises(Preempted) as stopped:
        finetune(tiny(tmp_path, max_steps=6, checkpoint_every=2))
    assert Path(stopped.value.checkpoint).name == "step-2"
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-2"]


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_over(tmp_path, capsys):
    whole = finetune(tiny(tmp_path, "whole", max_steps=3))
    run = tmp_path / "run"
    run.mkdir()
    # what a SIGKILL during the first steps leaves: the config and a half-written save
    from probe.train.run_dir import RunDir

    RunDir(run).save_config(tiny(tmp_path, max_steps=3))
    (run / "checkpoints" / ".step-2.tmp").mkdir(parents=True)
    resumed = finetune(tiny(tmp_path, max_steps=3, resume=True))
    assert "holds no checkpoint yet; starting the run from the beginning" in capsys.readouterr().err
    assert resumed["test_loss"] == whole["test_loss"] and resumed["steps"] == 3
    # and an empty folder too: the same command can be requeued blindly
    assert finetune(tiny(tmp_path, "fresh", max_steps=3, resume=True))["steps"] == 3


def test_resume_without_checkpoint_still_refuses_changed_settings(tmp_path):
    from probe.train.run_dir import RunDir

    (tmp_path / "run").mkdir()
    RunDir(tmp_path / "run").save_config(tiny(tmp_path, max_steps=3))
    with pytest.raises(ValueError, match="lr: 0.001 -> 0.01"):
        finetune(tiny(tmp_path, max_steps=3, lr=0.01, resume=True))


def test_main_prints_one_line_with_the_command_and_exits_75(tmp_path, monkeypatch, capsys):
    signal_at_step(monkeypatch, 2)
    out = str(tmp_path / "run")
    argv = ["--n-train", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2"]
    argv += ["--max-steps", "5", "--output-dir", out, "--no-progress"]
    monkeypatch.setattr(sys, "argv", ["probe"])
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_PREEMPTED == 75
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("probe finetune: stopped by SIGTERM after step 2; checkpoint saved")
    assert err.endswith(f"continue with: probe finetune {' '.join(argv)} --resume")


def test_a_signal_before_the_run_stops_a_sweeps_next_cell_before_any_work(tmp_path):
    with preempt.handled():
        os.kill(os.getpid(), signal.SIGTERM)
        assert preempt.requested() == "SIGTERM"
        with pytest.raises(Preempted):
            finetune(tiny(tmp_path, max_steps=3))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    assert preempt.requested() is None


def test_a_second_ctrl_c_stops_at_once():
    with preempt.handled():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


@pytest.mark.slow
def test_the_launch_script_stops_on_sigterm_with_exit_75(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "probe" / "finetune.py"), "--output-dir", str(out)]
    cmd += ["--n-train", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2"]
    cmd += ["--max-steps", "100000", "--no-progress", "--checkpoint-every", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "run_config.json").exists() and time.time() < deadline:
        time.sleep(0.2)  # written once the set-up is done, before the first step
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    (line,) = err.strip().splitlines()
    assert line.startswith("probe finetune: stopped by SIGTERM after step ")
    assert f"continue with: python {ROOT / 'probe' / 'finetune.py'}" in line
    assert line.endswith("--resume")
    assert len(list((out / "checkpoints").glob("step-*"))) == 1
