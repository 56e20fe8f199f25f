"""probe.data.hub: Hub layout on disk (round trip, atomic writes, card), offline errors."""

from __future__ import annotations

import os
import time

import datasets
import pytest

import probe.data.hub as hub
from probe.cli.data import EXPORT_SIZES
from probe.data.hub import load_dataset, load_tokenizer, save_dataset
from probe.data.render import render, task_info
from probe.tasks.catalogue import get_task
from probe.tasks.templates import TemplateTask

# -- Hub layout --------------------------------------------------------------------


def _same(a: datasets.DatasetDict, b: datasets.DatasetDict) -> None:
    assert list(a) == list(b)
    for split in a:
        assert a[split].to_dict() == b[split].to_dict()
        assert a[split].features == b[split].features


def test_hub_layout_round_trip_two_configs(tmp_path):
    folder = tmp_path / "tasks"
    aba = render("aba_vs_abb", 40, 8, 8, seed=1)
    vc = render("var_copy", 40, 8, 8, seed=2)
    save_dataset(aba, folder, "aba")
    save_dataset(vc, folder)  # config defaults to the task name
    assert sorted(os.listdir(folder)) == ["README.md", "aba", "var_copy"]
    assert sorted(os.listdir(folder / "aba")) == [
        "test-00000-of-00001.parquet",
        "tokenizer",
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]
    for config, original in [("aba", aba), ("var_copy", vc)]:
        loaded = datasets.load_dataset(str(folder), config)
        _same(loaded, original)
        assert task_info(loaded) == task_info(original)
        _same(load_dataset(folder, config), original)
        tok = load_tokenizer(folder, config)
        row = loaded["test"][0]
        assert tok.decode(row["input_ids"][: sum(row["attention_mask"]) - 1]) == row["text"]
    card = (folder / "README.md").read_text()
    assert "config_name: aba" in card and "config_name: var_copy" in card
    assert "probe data render --task var_copy --n-train 40" in card
    assert "`a = c ; b = d ; print a`" in card


def test_load_dataset_errors(tmp_path):
    folder = tmp_path / "tasks"
    save_dataset(render("copy", 10, 2, 2), folder, "one")
    save_dataset(render("copy", 10, 2, 2, seed=1), folder, "two")
    with pytest.raises(ValueError, match="no config 'three'; its configs: one, two"):
        load_dataset(folder, "three")
    with pytest.raises(ValueError, match="several configs"):
        load_dataset(folder)
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_dataset(str(tmp_path / "missing" / "folder"), "one")


def test_overwrite_refused_then_allowed(tmp_path):
    folder = tmp_path / "tasks"
    first = render("aba_vs_abb", 20, 4, 4, seed=0)
    second = render("aba_vs_abb", 20, 4, 4, seed=1)
    save_dataset(first, folder, "aba")
    with pytest.raises(FileExistsError, match="config 'aba' already exists.*--overwrite"):
        save_dataset(second, folder, "aba")
    _same(load_dataset(folder, "aba"), first)
    save_dataset(second, folder, "aba", overwrite=True)
    _same(load_dataset(folder, "aba"), second)
    assert sorted(os.listdir(folder)) == ["README.md", "aba"]  # nothing left behind


def test_a_folder_with_someone_elses_readme_is_refused(tmp_path):
    dsd = render("copy", 8, 4, 4, seed=0)
    notes = "# my project notes\n"
    (tmp_path / "README.md").write_text(notes)
    with pytest.raises(FileExistsError, match="README.md exists and is not a dataset card"):
        save_dataset(dsd, tmp_path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["README.md"]
    assert (tmp_path / "README.md").read_text() == notes
    (tmp_path / "README.md").write_text("---\nfoo: [\n---\n")
    with pytest.raises(ValueError, match="YAML front matter does not parse .* at line 3"):
        save_dataset(dsd, tmp_path)
    # a folder without a card takes the dataset beside what it holds
    (tmp_path / "README.md").unlink()
    (tmp_path / "notes.txt").write_text("x")
    save_dataset(dsd, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "copy", "notes.txt"]


def test_a_symbol_spelled_like_the_front_matter_fence_is_data(tmp_path):
    # a real tokenizer's vocabulary holds "---"; the card lists the symbols it drew
    dsd = render("copy", 4, 0, 2, train_symbols=["---", "--", "x", "y"], seed=0)
    assert "---" in dsd["train"].info.description
    save_dataset(dsd, tmp_path, "first")
    save_dataset(dsd, tmp_path, "second")  # reads the card written first
    info = task_info(load_dataset(tmp_path, "first"))
    assert info["alphabets"]["train"]["symbols"] == ["---", "--", "x", "y"]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    dsd = render("aba_vs_abb", 20, 4, 4)
    calls = []

    def failing(ds, file):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(ds, file)

    real_write = hub._write_parquet
    monkeypatch.setattr(hub, "_write_parquet", failing)
    # a fresh folder: not created at all
    with pytest.raises(OSError, match="disk full"):
        save_dataset(dsd, tmp_path / "new", "aba")
    assert os.listdir(tmp_path) == []
    # an existing folder: the other config and the card stay as they were
    monkeypatch.setattr(hub, "_write_parquet", real_write)
    save_dataset(dsd, tmp_path / "old", "keep")
    card = (tmp_path / "old" / "README.md").read_text()
    calls.clear()
    monkeypatch.setattr(hub, "_write_parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(dsd, tmp_path / "old", "aba")
    assert sorted(os.listdir(tmp_path / "old")) == ["README.md", "keep"]
    assert (tmp_path / "old" / "README.md").read_text() == card
    # and an overwrite that fails keeps the old config
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        save_dataset(dsd, tmp_path / "old", "keep", overwrite=True)
    assert sorted(os.listdir(tmp_path / "old")) == ["README.md", "keep"]
    assert len(os.listdir(tmp_path / "old" / "keep")) == 4


def test_offline_hub_id_fails_at_once():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError) as err:
        load_dataset("someone/template-tasks", "aba_vs_abb")
    assert time.perf_counter() - t0 < 5
    message = str(err.value)
    assert "'someone/template-tasks'" in message
    assert "offline" in message and "HF_HUB_OFFLINE" in message
    assert "`hf download --repo-type dataset someone/template-tasks" in message
    assert "pass the folder" in message


def test_committed_catalogue_loads():
    """data/template-tasks (written by `probe data export`) loads with its card."""
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "data", "template-tasks")
    if not os.path.isdir(folder):
        pytest.skip("data/template-tasks not exported yet")
    dsd = load_dataset(folder, "aba_vs_abb")
    info = task_info(dsd)
    assert get_task("aba_vs_abb") == TemplateTask.from_dict(info["task"])
    assert dsd["train"].num_rows == EXPORT_SIZES["n_train"]


# -- every saved dataset loads back; bad data is refused -------------------------------


def test_an_empty_split_saves_and_loads_back(tmp_path):
    # datasets cannot read an empty parquet split back (ArrowInvalid: BatchSize must be
    # greater than 0): the split gets no file, the card names it, load_dataset restores it
    dsd = render("aba_vs_abb", n_train=16, n_val=0, n_test=8, seed=0)
    save_dataset(dsd, tmp_path / "d", "aba")
    assert not (tmp_path / "d" / "aba" / "validation-00000-of-00001.parquet").exists()
    back = load_dataset(tmp_path / "d", "aba")
    assert list(back) == ["train", "validation", "test"]
    assert back["validation"].num_rows == 0
    assert back["validation"].features == dsd["validation"].features
    assert back["train"].to_dict() == dsd["train"].to_dict()
    assert task_info(back)["empty_splits"] == ["validation"]
    # the Hub layout itself loads with datasets (the empty split is simply absent)
    plain = datasets.load_dataset(str(tmp_path / "d"), "aba")
    assert list(plain) == ["train", "test"] and plain["test"].num_rows == 8
    # saved again, the card stays right
    save_dataset(back, tmp_path / "d", "aba", overwrite=True)
    assert load_dataset(tmp_path / "d", "aba")["validation"].num_rows == 0


def test_a_split_without_labels_is_refused_naming_split_and_column(tmp_path):
    dsd = render("aba_vs_abb", n_train=16, n_val=4, n_test=8, seed=0)
    save_dataset(dsd.remove_columns("labels"), tmp_path / "d", "nolabels")
    with pytest.raises(ValueError, match="split 'train' has no column 'labels'"):
        load_dataset(tmp_path / "d", "nolabels")


def test_a_column_the_card_lists_but_the_file_lacks_is_refused(tmp_path):
    import pyarrow.parquet as pq

    dsd = render("aba_vs_abb", n_train=16, n_val=4, n_test=8, seed=0)
    for column in ("labels", "attention_mask"):
        folder = save_dataset(dsd, tmp_path / column, "aba")
        file = folder / "test-00000-of-00001.parquet"
        pq.write_table(pq.read_table(file).drop([column]), file)
        # datasets fills the column from the card's features with None (NaN in training)
        assert datasets.load_dataset(str(tmp_path / column), "aba")["test"][column][0] is None
        with pytest.raises(ValueError, match=f"split 'test' has no value in column '{column}'"):
            load_dataset(tmp_path / column, "aba")


# -- pushing (the stand-in Hub of tests/hub_server.py) ----------------------------------


def _local_files(folder) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def test_save_dataset_pushes_the_folder_and_load_dataset_reads_it_back(hub, tmp_path):
    folder = tmp_path / "tasks"
    aba = render("aba_vs_abb", 24, 8, 8, seed=3)
    save_dataset(render("var_copy", 12, 4, 4, seed=4), folder, "vc")
    assert save_dataset(aba, folder, "aba", push_to_hub="me/tasks") == folder / "aba"
    repo = hub.repo("me/tasks", "dataset")
    assert repo.files == _local_files(folder)  # the whole folder, its card listing both configs
    assert {"aba/train-00000-of-00001.parquet", "vc/tokenizer/tokenizer.json"} <= set(repo.files)
    back = load_dataset("me/tasks", "aba")  # through the stand-in, not the local folder
    _same(back, aba)
    assert task_info(back) == task_info(aba)


def test_save_dataset_refuses_a_push_that_cannot_work_before_writing(tmp_path):
    # offline mode, as every test outside the `hub` fixture runs
    with pytest.raises(ValueError, match="push_to_hub me/tasks: pushing to the Hub needs"):
        save_dataset(render("aba_vs_abb", 8, 2, 2), tmp_path / "tasks", push_to_hub="me/tasks")
    with pytest.raises(ValueError, match="push_to_hub 'me/a/b' is not a Hub repository id"):
        save_dataset(render("aba_vs_abb", 8, 2, 2), tmp_path / "tasks", push_to_hub="me/a/b")
    assert not (tmp_path / "tasks").exists()


def test_a_rewritten_local_file_is_read_as_it_is_now(tmp_path):
    """issue 21: the datasets cache keys local files by path and mtime; a file rewritten
    with its old mtime (cp -p, rsync -t) must not come back with its old rows."""

    first, second = (render("copy", 8, 2, 4, seed=s) for s in (0, 1))
    save_dataset(first, tmp_path / "a", "copy")
    save_dataset(second, tmp_path / "b", "copy")
    assert load_dataset(tmp_path / "a", "copy")["train"]["text"] == first["train"]["text"]
    (old,) = (tmp_path / "a" / "copy").glob("train-*.parquet")
    (new,) = (tmp_path / "b" / "copy").glob("train-*.parquet")
    stat = old.stat()
    old.write_bytes(new.read_bytes())
    os.utime(old, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_dataset(tmp_path / "a", "copy")["train"]["text"] == second["train"]["text"]


def test_a_folder_missing_a_split_is_refused_naming_it(tmp_path):

    save_dataset(render("copy", 8, 2, 4), tmp_path, "copy")
    for f in (tmp_path / "copy").glob("validation-*.parquet"):
        f.unlink()
    with pytest.raises(ValueError, match=r"split 'validation' of config 'copy' has no file"):
        load_dataset(tmp_path, "copy")


def test_a_relative_folder_missing_here_says_so_before_the_hub_id(tmp_path, monkeypatch, capsys):
    from probe.cli import main as cli

    monkeypatch.chdir(tmp_path)  # not the root of the clone: data/template-tasks is not here
    with pytest.raises(SystemExit):
        cli(
            [
                "data",
                "lm-eval",
                "--dataset",
                "data/template-tasks",
                "--config",
                "copy",
                "--out",
                "x",
            ]
        )
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"no folder 'data/template-tasks' under the current folder {tmp_path}" in err
    assert "run from the root of the clone" in err and "read as a Hub id" in err
