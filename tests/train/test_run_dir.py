"""probe.train.run_dir: a run folder's checkpoints are published whole, its config is checked on
resume, and two jobs never share it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probe.files import folder_lock
from probe.train.config import FinetuneConfig
from probe.train.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, **kw) -> FinetuneConfig:
    return FinetuneConfig(output_dir=str(tmp_path / "run"), **kw)


def fake_checkpoint(run: RunDir, step: int, cfg: FinetuneConfig, publish: bool = True) -> None:
    tmp = run.checkpoint_tmp(step)
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"weights")
    if publish:
        run.publish_checkpoint(step, cfg)


def test_a_checkpoint_cut_short_is_never_listed(tmp_path):
    cfg = config(tmp_path)
    run = RunDir(cfg.output_dir)
    fake_checkpoint(run, 4, cfg)
    fake_checkpoint(run, 8, cfg, publish=False)  # killed while saving step 8
    assert [p.name for p in run.checkpoints()] == ["step-4"]
    fake_checkpoint(run, 12, cfg)  # the next complete save cleans up
    assert [p.name for p in run.checkpoint_root.iterdir()] == ["step-12"]
    assert (run.checkpoints()[-1] / "run_config.json").is_file()


def test_resume_checks_settings_against_the_checkpoint_when_the_config_file_is_gone(tmp_path):
    cfg = config(tmp_path, seed=0)
    run = RunDir(cfg.output_dir)
    fake_checkpoint(run, 4, cfg)
    assert not run.config_file.exists()
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        run.check(config(tmp_path, seed=1, resume=True))
    run.check(config(tmp_path, seed=0, resume=True, max_steps=2000))  # a resumable change


@pytest.mark.parametrize(
    "field, value",
    [("seed", 3), ("n_train", 64), ("ab", "kq"), ("task", "same_different"), ("model", "llama")],
)
def test_resume_refuses_each_setting_that_changes_what_a_step_computes(tmp_path, field, value):
    cfg = config(tmp_path)
    run = RunDir(cfg.output_dir)
    run.prepare(overwrite=False)
    run.save_config(cfg)
    fake_checkpoint(run, 4, cfg)
    with pytest.raises(ValueError, match=f"{field}: "):
        run.check(config(tmp_path, resume=True, **{field: value}))


def test_an_output_dir_that_is_a_file_or_read_only_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        RunDir(tmp_path / "file").check(FinetuneConfig(output_dir=str(tmp_path / "file")))
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(PermissionError, match="not writable"):
            RunDir(locked / "run").check(FinetuneConfig(output_dir=str(locked / "run")))
    finally:
        locked.chmod(0o700)


def test_a_second_holder_of_the_folder_is_refused_with_the_first_ones_pid(tmp_path):
    folder = tmp_path / "run"
    code = (
        "import sys, time; from pathlib import Path; from probe.files import folder_lock\n"
        "with folder_lock(Path(sys.argv[1]), '--output-dir'):\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=f"pid {holder.pid}"):
            with folder_lock(folder, "--output-dir"):
                pass
    finally:
        holder.kill()  # a killed holder releases the lock
        holder.wait()
    deadline = time.time() + 5
    while True:
        try:
            with folder_lock(folder, "--output-dir"):
                break
        except FileExistsError:
            assert time.time() < deadline
            time.sleep(0.05)
    assert not (folder / ".probe.lock").exists()  # the pid file goes with the lock
