"""probe.errors: one user-error type, shown as one line (exit 2) by every entry point;
anything else (a KeyError inside probe) is a bug and keeps its traceback."""

import os
import shutil
from pathlib import Path

import pytest

from probe.errors import ProbeError, one_line_errors
from probe.jsonl import read_rows
from probe.train.config import FinetuneConfig
from probe.train.run import finetune, main

TINY = dict(
    n_train=16, n_val=5, n_test=13, batch_size=8, max_steps=4, n_layer=1, n_embd=16, n_head=2
)
TINY_FLAGS = ["--n-train", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2"]


def tiny(tmp_path, name="run", **overrides) -> FinetuneConfig:
    return FinetuneConfig(
        **{**TINY, "progress": False, "output_dir": str(tmp_path / name), **overrides}
    )


def one_line(capsys, run) -> str:
    with pytest.raises(SystemExit) as e:
        run()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_a_probe_error_is_a_value_error_shown_on_one_line(capsys):
    assert issubclass(ProbeError, ValueError)

    def bad():
        with one_line_errors("probe x"):
            raise ProbeError("--flag 3 must be even\nsee the docs")

    assert one_line(capsys, bad) == "probe x: error: --flag 3 must be even see the docs"


@pytest.mark.parametrize("bug", [KeyError("variant"), TypeError("x"), ModuleNotFoundError("y")])
def test_a_bug_inside_probe_keeps_its_traceback(monkeypatch, bug):
    import probe.cli
    import probe.cli.tasks

    def broken(args):
        raise bug

    monkeypatch.setattr(probe.cli.tasks, "run", broken)
    with pytest.raises(type(bug)):
        probe.cli.main(["tasks"])


def test_a_missing_extra_is_one_line(monkeypatch, capsys):
    import builtins

    from probe.errors import MissingExtra

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    from probe.data.lm_eval_task import require_lm_eval

    with pytest.raises(MissingExtra, match="pip install"):
        require_lm_eval()


def test_output_dir_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    argv = [*TINY_FLAGS, "--output-dir", str(tmp_path / "f" / "sub")]
    assert "'f' is a file, not a folder" in one_line(capsys, lambda: main(argv)).replace(
        str(tmp_path) + "/", ""
    )


def test_a_read_only_folder_is_one_line_from_the_launch_script(tmp_path, monkeypatch, capsys):
    # python probe/finetune.py runs probe.train.run.main; a user who can write anywhere
    # (root) never meets the refusal, so the check is made to see a read-only folder
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    argv = [*TINY_FLAGS, "--output-dir", str(tmp_path / "ro" / "run")]
    assert "is not writable" in one_line(capsys, lambda: main(argv))


def test_a_huge_n_train_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr("probe.train.run.load_run_data", no_work)
    argv = ["--n-train", "1000000000", "--output-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as e:  # a bad flag value: argparse's usage, then the error
        main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert "--n-train 1000000000 is more samples than one split can hold" in last


def test_a_corrupt_newest_checkpoint_falls_back_to_an_older_one(tmp_path):
    whole = finetune(tiny(tmp_path, "whole", max_steps=6, checkpoint_every=2))
    finetune(tiny(tmp_path, max_steps=4, checkpoint_every=2))
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(checkpoints / "step-4", checkpoints / "step-2")  # an older one
    (tmp_path / "run" / "results.jsonl").unlink()  # trained on after its row
    weights = checkpoints / "step-4" / "model.safetensors"
    weights.write_bytes(b"\xff" * 64)  # header too large
    with pytest.warns(UserWarning, match="cannot load .*step-4"):
        resumed = finetune(tiny(tmp_path, max_steps=6, checkpoint_every=2, resume=True))
    # step-2 here holds step 4's state, so the metrics are those of an uninterrupted run
    assert resumed["test_loss"] == whole["test_loss"]
    assert (checkpoints / ".step-4.unreadable").is_dir()
    assert [p.name for p in checkpoints.glob("step-*")] == ["step-6"]


def test_no_loadable_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    finetune(tiny(tmp_path, max_steps=2))
    (tmp_path / "run" / "results.jsonl").unlink()
    (tmp_path / "run" / "checkpoints" / "step-2" / "model.safetensors").write_bytes(b"\xff" * 64)
    argv = [*TINY_FLAGS, "--max-steps", "4", "--no-progress", "--resume"]
    argv += ["--n-val", "5", "--n-test", "13", "--batch-size", "8"]
    argv += ["--output-dir", str(tmp_path / "run")]
    with pytest.warns(UserWarning):
        err = one_line(capsys, lambda: main(argv))
    assert "no checkpoint in" in err and "step-2: " in err and "--overwrite" in err


def test_a_checkpoint_of_another_shape_beside_this_runs_config_is_refused(tmp_path):
    finetune(tiny(tmp_path, "wide", max_steps=2, n_embd=32))
    finetune(tiny(tmp_path, max_steps=2))
    run = tmp_path / "run" / "checkpoints"
    shutil.rmtree(run / "step-2")
    shutil.copytree(tmp_path / "wide" / "checkpoints" / "step-2", run / "step-2")
    (tmp_path / "run" / "results.jsonl").unlink()
    with pytest.raises(
        ValueError, match=r"checkpoints/step-2/run_config.json'\): n_embd: 32 -> 16"
    ):
        finetune(tiny(tmp_path, max_steps=4, resume=True))


def test_an_invalid_run_config_names_the_file(tmp_path):
    finetune(tiny(tmp_path, max_steps=2))
    (tmp_path / "run" / "results.jsonl").unlink()
    for path in (tmp_path / "run").rglob("run_config.json"):
        path.write_text("{not json")
    with pytest.raises(ProbeError, match=r"run_config.json' is not a valid run config"):
        finetune(tiny(tmp_path, max_steps=4, resume=True))


def test_finished_rows_survive(tmp_path):
    finetune(tiny(tmp_path, max_steps=2))
    assert len(read_rows(Path(tmp_path / "run" / "results.jsonl"))) == 1


def test_resume_of_a_finished_run_whose_model_save_was_cut_short_saves_it_again(tmp_path):
    import probe

    first = finetune(tiny(tmp_path, max_steps=2, save_model=True))
    model = tmp_path / "run" / "model"
    (model / "results.jsonl").unlink()  # a kill during the save: weights, no card nor row
    (model / "README.md").unlink()
    again = finetune(tiny(tmp_path, max_steps=2, save_model=True, resume=True))
    assert again == first
    assert (model / "results.jsonl").is_file() and (model / "README.md").is_file()
    assert len(read_rows(tmp_path / "run" / "results.jsonl")) == 1  # no second row
    probe.load_injected(model)
