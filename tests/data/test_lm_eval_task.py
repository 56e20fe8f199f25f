"""probe.data.lm_eval_task: a probe dataset as an lm-evaluation-harness task, run offline."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml

import probe.data.lm_eval_task as lm_task
from probe.cli import main
from probe.data.hub import load_dataset, save_dataset
from probe.data.lm_eval_task import LABEL_WORDS, export_lm_eval_task
from probe.data.render import render


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A folder with a symbolic (``copy``) and a regression (``same_different``) config
    (the tests using it need the lm-eval extra, which `make test` installs)."""
    pytest.importorskip("lm_eval", reason="the extra: pip install 'symbol-probe[lm-eval]'")
    folder = tmp_path_factory.mktemp("ds")
    for task in ("copy", "same_different"):
        save_dataset(render(task, 12, 0, 6, seed=0), folder, task)
    return folder


class _Loader(yaml.SafeLoader):
    """lm-eval's YAML: its ``!function NAME`` tags read as the text ``!function NAME``."""


_Loader.add_constructor("!function", lambda ld, node: f"!function {ld.construct_scalar(node)}")


def _read_yaml(path):
    return yaml.load(path.read_text(), Loader=_Loader)


@pytest.mark.slow
def test_lm_eval_runs_the_exported_tasks_offline(dataset, tmp_path, smollm2_tokenizer):
    import shutil

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import GPT2Config, GPT2LMHeadModel

    for task in ("copy", "same_different"):
        export_lm_eval_task(dataset, task, tmp_path / "written" / task)
    # the folder moves (shared, copied elsewhere): its YAML still finds its data
    shutil.move(tmp_path / "written", tmp_path / "tasks")
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=256, vocab_size=len(smollm2_tokenizer)
    )
    lm = HFLM(
        pretrained=GPT2LMHeadModel(config).eval(),
        tokenizer=smollm2_tokenizer,
        batch_size=4,
        device="cpu",
        max_length=256,
    )
    out = simple_evaluate(
        model=lm,
        tasks=["probe_copy", "probe_same_different"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        num_fewshot=2,
        limit=3,
        log_samples=True,
        fewshot_random_seed=0,
    )
    res = out["results"]
    assert 0 <= res["probe_copy"]["exact_match,strip"] <= 1
    assert 0 <= res["probe_same_different"]["acc,none"] <= 1
    assert out["n-shot"] == {"probe_copy": 2, "probe_same_different": 2}

    train = load_dataset(dataset, "same_different")["train"]
    solved = {
        f"{t} -> {LABEL_WORDS[float(y)]}"
        for t, y in zip(train["text"], train["labels"], strict=True)
    }
    test = load_dataset(dataset, "same_different")["test"]
    for sample in out["samples"]["probe_same_different"]:
        context, choice = sample["arguments"][0][0], sample["arguments"][0][1]
        *shots, query = context.split("\n")
        assert len(shots) == 2 and set(shots) <= solved  # two solved rows of the train split
        assert query == f"{test['text'][sample['doc_id']]} ->"
        assert choice == " yes"
        assert sample["target"] == (0 if test["labels"][sample["doc_id"]] > 0 else 1)
    for sample in out["samples"]["probe_copy"]:
        *shots, query = sample["arguments"][0][0].split("\n")
        assert len(shots) == 2 and query.endswith(" ->")
        assert sample["target"] == query.removesuffix(" ->")  # copy: the answer is the input


def test_the_task_file_states_the_prompt_and_the_scoring(dataset, tmp_path):
    path = export_lm_eval_task(dataset, "same_different", tmp_path / "sd", shots=3)
    assert path == tmp_path / "sd" / "probe_same_different.yaml"
    listed = sorted(os.listdir(tmp_path / "sd"))
    assert listed == ["probe_data.py", path.name, "test.jsonl", "train.jsonl"]
    text = path.read_text()
    assert "+1 -> 'yes', -1 -> 'no'" in text  # the encoding, in the header comment
    config = _read_yaml(path)
    assert config["num_fewshot"] == 3 and config["fewshot_split"] == "train"
    assert config["test_split"] == "test" and config["output_type"] == "multiple_choice"
    assert config["doc_to_choice"] == ["yes", "no"]
    # no absolute path: the data is found beside the YAML, wherever the folder moves
    assert config["custom_dataset"] == "!function probe_data.load"
    assert str(tmp_path) not in text
    rows = [json.loads(line) for line in (tmp_path / "sd" / "test.jsonl").open()]
    labels = load_dataset(dataset, "same_different")["test"]["labels"]
    assert [r["answer"] for r in rows] == [LABEL_WORDS[float(y)] for y in labels]
    assert all(config["doc_to_choice"][r["label"]] == r["answer"] for r in rows)

    # zero shots writes no num_fewshot: lm-eval would pin 0 and ignore --num_fewshot
    path = export_lm_eval_task(dataset, "copy", tmp_path / "copy")
    config = _read_yaml(path)
    assert "num_fewshot" not in config and config["output_type"] == "generate_until"
    assert config["metric_list"][0]["metric"] == "exact_match"
    rows = [json.loads(line) for line in (tmp_path / "copy" / "train.jsonl").open()]
    assert rows and all(r["answer"] == r["input"] for r in rows)  # ids decoded to symbols


def test_bad_input_is_refused_before_anything_is_written(dataset, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="has no config 'nope'; its configs: copy, same_diff"):
        export_lm_eval_task(dataset, "nope", tmp_path / "a")
    with pytest.raises(ValueError, match="several configs; pick one of copy, same_different"):
        export_lm_eval_task(dataset, None, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no folder ./no/such"):
        export_lm_eval_task("./no/such", "copy", tmp_path / "a")
    with pytest.raises(ValueError, match="--shots must be >= 0"):
        export_lm_eval_task(dataset, "copy", tmp_path / "a", shots=-1)
    with pytest.raises(ValueError, match="--shots 13 exceeds the 12 training rows"):
        export_lm_eval_task(dataset, "copy", tmp_path / "a", shots=13)
    assert not os.listdir(tmp_path)

    out = tmp_path / "task"
    export_lm_eval_task(dataset, "copy", out)
    with pytest.raises(FileExistsError, match="--out .* exists; .* pass --overwrite"):
        export_lm_eval_task(dataset, "copy", out, shots=2)
    export_lm_eval_task(dataset, "copy", out, shots=2, overwrite=True)
    assert _read_yaml(out / "probe_copy.yaml")["num_fewshot"] == 2
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        export_lm_eval_task(dataset, "copy", out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"

    # a failure while writing leaves the old task in place and no temporary folder
    (out / "notes.txt").unlink()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lm_task, "_header", broken)
    with pytest.raises(OSError, match="disk full"):
        export_lm_eval_task(dataset, "same_different", out, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["task"]
    assert sorted(os.listdir(out)) == [
        "probe_copy.yaml",
        "probe_data.py",
        "test.jsonl",
        "train.jsonl",
    ]


def test_cli_writes_the_task(dataset, tmp_path, capsys):
    out = tmp_path / "t"
    main(["data", "lm-eval", "--dataset", str(dataset), "--config", "copy", "--out", str(out)])
    assert f"--include_path {out} --tasks probe_copy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["data", "lm-eval", "--dataset", str(dataset), "--config", "x", "--out", "new"])
    assert exit_.value.code == 2
    assert "has no config 'x'; its configs: copy, same_different" in capsys.readouterr().err


def test_cli_without_lm_eval_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exit_:
        main(["data", "lm-eval", "--dataset", str(tmp_path), "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "lm-evaluation-harness is not installed" in err
    assert "pip install 'symbol-probe[lm-eval]'" in err
    assert not out.exists()
