"""probe.cli: the commands that print (`probe data render`, `probe data export`)."""

from __future__ import annotations

import pytest

import probe.cli.data as cli
import probe.data.render as data
from probe.cli import main as probe_main
from probe.cli.data import export_catalogue, render_to_disk
from probe.data.hub import load_dataset
from probe.data.render import task_info
from probe.tasks.catalogue import get_task, list_tasks, register_task, task_entry
from probe.tasks.templates import TemplateTask


def test_render_to_disk_validates_before_rendering(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    folder = render_to_disk("majority_k:k=5", out, 16, 4, 4, seed=0, config=None)
    assert folder == out / "majority_k-k5"  # the task's name
    assert "wrote" in capsys.readouterr().out

    def no_render(*a, **k):
        raise AssertionError("rendered before validating")

    monkeypatch.setattr(data, "render", no_render)
    with pytest.raises(FileExistsError, match="'majority_k-k5'"):
        render_to_disk("majority_k:k=5", out, 16, 4, 4)
    with pytest.raises(ValueError, match="unknown task"):
        render_to_disk("nope", out, 16)
    with pytest.raises(ValueError, match="--n-train must be >= 1"):
        render_to_disk("copy", out, 0)
    with pytest.raises(ValueError, match="config name 'a/b'"):
        render_to_disk("copy", out, 5, config="a/b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        render_to_disk("copy", tmp_path / "file", 5)


@pytest.fixture
def extra_task():
    """A task registered for one test only, removed afterwards."""
    from probe.tasks import catalogue as tasks

    register_task("extra_for_export", lambda: TemplateTask.from_strings(["a b"], [1.0]))
    yield "extra_for_export"
    tasks._REGISTRY.pop("extra_for_export")


@pytest.mark.slow
def test_export_catalogue_writes_every_registered_task(tmp_path, monkeypatch, capsys, extra_task):
    monkeypatch.setattr(cli, "EXPORT_SIZES", {"n_train": 12, "n_val": 3, "n_test": 3})
    folders = export_catalogue(tmp_path / "cat")
    assert [f.name for f in folders] == list_tasks() and extra_task in list_tasks()
    for name in list_tasks():
        dsd = load_dataset(tmp_path / "cat", name)
        assert dsd["train"].num_rows == 12
        # a task with parameters is exported with its defaults
        assert TemplateTask.from_dict(task_info(dsd)["task"]) == get_task(name)
        assert task_info(dsd)["seed"] == 0
    assert task_entry("majority_k").defaults == {"k": 3}
    assert capsys.readouterr().out.count("wrote") == len(list_tasks())
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_catalogue(tmp_path / "cat")
    export_catalogue(tmp_path / "cat", overwrite=True)


def read_only(monkeypatch, folder):
    """``folder`` made read-only, also for root (who may write anywhere): os.access says so."""
    import os

    folder.mkdir()
    folder.chmod(0o500)
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: False if str(p) == str(folder) else real(p, mode, **k)
    )
    return folder


@pytest.mark.parametrize("command", ["render", "export"])
def test_data_out_read_only_or_a_file_is_one_line_before_rendering(
    tmp_path, monkeypatch, capsys, command
):
    def no_render(*a, **k):
        raise AssertionError("rendered before checking the destination")

    monkeypatch.setattr(data, "render", no_render)
    args = ["data", command] + (["--task", "copy", "--n-train", "8"] if command == "render" else [])
    ro = read_only(monkeypatch, tmp_path / "ro")
    try:
        for out, message in [(ro / "sub", "not writable"), (tmp_path / "f", "not a folder")]:
            (tmp_path / "f").write_text("x")
            with pytest.raises(SystemExit) as e:
                probe_main([*args, "--out", str(out)])
            assert e.value.code == 2
            err = capsys.readouterr().err
            assert err.startswith("probe data: error: ") and message in err
            assert err.count("\n") == 1
    finally:
        ro.chmod(0o700)


def test_data_render_push_to_hub_uploads_the_folder(hub, tmp_path, capsys):
    out = tmp_path / "out"
    probe_main(
        ["data", "render", "--task", "copy", "--n-train", "8", "--n-val", "2"]
        + ["--n-test", "4", "--out", str(out), "--push-to-hub", "me/copy"]
    )
    printed = capsys.readouterr().out
    assert f"pushed {out} to {hub.url}/datasets/me/copy" in printed
    pushed = load_dataset("me/copy", "copy")
    assert pushed["test"].to_dict() == load_dataset(out, "copy")["test"].to_dict()


@pytest.mark.parametrize(
    ("repo", "message"),
    [
        ("me/a/b", "--push-to-hub 'me/a/b' is not a Hub repository id"),
        ("me/copy", "--push-to-hub me/copy: pushing to the Hub needs the network"),  # offline
    ],
)
def test_data_render_refuses_a_bad_push_in_one_line_before_rendering(
    tmp_path, monkeypatch, capsys, repo, message
):
    def no_render(*a, **k):
        raise AssertionError("rendered before checking the push")

    monkeypatch.setattr(data, "render", no_render)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        probe_main(
            ["data", "render", "--task", "copy", "--n-train", "8", "--out", str(out)]
            + ["--push-to-hub", repo]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"probe data: error: {message}") and err.count("\n") == 1
    assert not out.exists()
