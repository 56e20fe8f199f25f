"""probe.train.run on tiny models: training, evaluation on unseen symbols, resume,
LoRA, several processes, and the refusals a user relies on."""

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probe import build_model, get_task
from probe.data.tokenizer import SymbolTokenizer
from probe.jsonl import read_rows
from probe.models.build import readout
from probe.train.config import FinetuneConfig, build_parser, parse_config
from probe.train.metrics import per_sample_loss
from probe.train.plan import plan_run
from probe.train.run import finetune
from probe.train.setup import build_optimizer, build_run_model, load_run_data

ROOT = Path(__file__).resolve().parents[2]
TINY_LR = 1e-3
TINY = dict(
    n_train=16,
    n_val=5,
    n_test=13,  # eval batch 4: a partial last batch with one process and with two
    batch_size=8,
    eval_batch_size=4,
    max_steps=4,
    n_layer=1,
    n_embd=16,
    n_head=2,
    progress=False,
)


def tiny(tmp_path, name="run", **overrides) -> FinetuneConfig:
    return FinetuneConfig(**{**TINY, "output_dir": str(tmp_path / name), **overrides})


def direct_test_loss(config: FinetuneConfig, model) -> float:
    """Mean test loss of ``model`` over the whole test split in one batch, no accelerate."""
    plan = plan_run(config)
    data = load_run_data(plan)
    test = data.splits["test"]
    model.eval()
    with torch.no_grad():
        logits = readout(model, test["input_ids"], test["attention_mask"])
    return per_sample_loss(logits, test["labels"], data.label_kind).mean().item()


# -- training and evaluation -----------------------------------------------------------


def test_training_loss_falls_on_a_learnable_task(tmp_path):
    settings = dict(n_train=32, n_embd=32, batch_size=32, converge_loss=0.0)
    first = finetune(tiny(tmp_path, "first", max_steps=1, **settings))
    trained = finetune(tiny(tmp_path, "trained", max_steps=150, **settings))
    assert trained["train_loss"] < 0.25 * first["train_loss"]


def test_one_process_counts_each_test_sample_once_and_weights_the_last_batch_right(tmp_path):
    config = tiny(tmp_path, save_model=True)
    row = finetune(config)
    assert (row["test_samples"], row["val_samples"], row["processes"]) == (13, 5, 1)
    assert row["torch_threads"] == torch.get_num_threads()  # the row says what ran it
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert row["test_loss"] == pytest.approx(direct_test_loss(config, model), rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_count_each_test_sample_once(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m probe.finetune` on a CPU
    machine, from a folder outside the clone (the README's launch): gloo, and every test
    sample counted exactly once (13 over a total batch of 8 leaves a partial last batch
    that accelerate pads with repeats)."""
    out = tmp_path / "run"
    flags = ["--n-train", "16", "--n-val", "5", "--n-test", "13", "--batch-size", "4"]
    flags += ["--eval-batch-size", "4", "--max-steps", "3", "--n-layer", "1"]
    flags += ["--n-embd", "16", "--n-head", "2", "--no-progress", "--save-model"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    cmd = [*launch, "-m", "probe.finetune", *flags, "--output-dir", str(out)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = read_rows(out / "results.jsonl")  # one line: only the main process writes
    assert (row["processes"], row["test_samples"], row["val_samples"]) == (2, 13, 5)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    config = FinetuneConfig.from_dict(row["config"])
    assert row["test_loss"] == pytest.approx(direct_test_loss(config, model), rel=1e-5)


@pytest.mark.slow
def test_a_quiet_launch_with_bad_input_ends_with_probe_s_one_line(tmp_path):
    """`accelerate launch --quiet -m probe.finetune` (the README's launches) with a bad
    value, from a folder outside the clone: probe's one line, no accelerate traceback."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--cpu"]
    launch += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--num_cpu_threads_per_process", "1"]
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    cmd = [*launch, "-m", "probe.finetune", "--task", "no_such_task"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "CalledProcessError" not in done.stderr
    errors = [x for x in done.stderr.splitlines() if "error" in x.lower()]
    assert errors == [x for x in errors if x.startswith("probe finetune: error: unknown task")]
    assert len(errors) == 1, done.stderr


def test_the_continue_command_of_a_launched_run_is_a_quiet_launch(monkeypatch):
    from probe.train import run

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sys, "argv", ["/x/probe/finetune.py", "--task", "copy"])
    command = run.continue_command(["--task", "copy"])
    assert (
        command
        == "accelerate launch --quiet --num_processes 2 /x/probe/finetune.py --task copy --resume"
    )


def test_resume_reaches_the_same_final_metrics_as_an_uninterrupted_run(tmp_path):
    # 24 samples in batches of 8: the interruption at step 10 falls mid-epoch; dropout
    # on, so the restored random state matters too
    dropout = {"resid_pdrop": 0.1, "attn_pdrop": 0.1, "embd_pdrop": 0.1}
    common = dict(n_train=24, ab="kq,vo", checkpoint_every=7, model_overrides=dropout)
    whole = finetune(tiny(tmp_path, "whole", max_steps=20, **common))
    cut = tiny(tmp_path, "cut", max_steps=10, **common)
    first = finetune(cut)
    resumed = finetune(tiny(tmp_path, "cut", max_steps=20, resume=True, **common))
    assert first["steps"] == 10 and resumed["steps"] == 20
    for key in ("test_loss", "test_error", "val_loss", "train_loss", "ab"):
        assert resumed[key] == whole[key], key
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step-20"]
    assert len(read_rows(tmp_path / "cut" / "results.jsonl")) == 2  # one row per run


def test_resume_refuses_changed_settings(tmp_path):
    finetune(tiny(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match=r"lr: 0\.001 -> 0\.01"):
        finetune(tiny(tmp_path, max_steps=4, lr=0.01, resume=True))


@pytest.mark.parametrize("model", ["gpt2", "t5", "llama"])
@pytest.mark.parametrize("task, kind", [("aba_vs_abb", "regression"), ("var_copy", "symbolic")])
def test_each_architecture_and_head_completes_a_short_run(tmp_path, model, task, kind):
    row = finetune(tiny(tmp_path, model=model, task=task, ab="kq,vo", checkpoints=False))
    assert row["label_kind"] == kind
    assert row["test_samples"] == 13 and row["steps"] == 4
    assert torch.isfinite(torch.tensor(row["test_loss"])) and 0 <= row["test_error"] <= 1
    expected = {"t5": ["decoder", "encoder"]}.get(model, ["self"])
    assert row["ab"]["modules"] == expected
    assert row["ab"]["a_absmax"] > 0 and row["ab"]["b_absmax"] > 0  # a and b trained


def test_mlp_baseline_runs_at_the_asked_shape(tmp_path):
    row = finetune(tiny(tmp_path, model="mlp_xxt", n_head=None, checkpoints=False))
    assert row["ab"] is None and row["test_samples"] == 13
    # --n-layer 1 --n-embd 16 on `a b a` + readout (4 positions), d_hidden 256, one output:
    # embeddings V x 16, features 4 * 16 + 4 * 4 (X Xᵀ) -> 256 -> 1
    vocab = 3 + 16 + 5 + 13  # specials, then the train / validation / test symbols
    expected = vocab * 16 + (80 * 256 + 256) + (256 + 1)
    assert row["trainable_params"] == expected


def test_result_row_is_one_json_line_with_the_run(tmp_path):
    row = finetune(tiny(tmp_path, seed=3, checkpoints=False))
    (line,) = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert json.loads(line) == row
    assert row["config"]["seed"] == 3 and row["n_train"] == 16
    assert row["stopped"] == "max_steps" and row["version"]
    for key in ("wall_s", "train_s"):
        assert isinstance(row[key], float) and row[key] > 0
    # errors are fractions of the 13 test and 5 validation samples; losses are positive
    assert round(row["test_error"] * 13, 6) == int(round(row["test_error"] * 13))
    assert round(row["val_error"] * 5, 6) == int(round(row["val_error"] * 5))
    assert row["test_loss"] > 0 and row["val_loss"] > 0


def test_a_saved_dataset_trains_like_the_rendered_task(tmp_path):
    from probe import render, save_dataset

    dsd = render("aba_vs_abb", n_train=16, n_val=5, n_test=13, seed=0)
    save_dataset(dsd, tmp_path / "data", "aba")
    from_task = finetune(tiny(tmp_path, "task", checkpoints=False))
    from_disk = finetune(
        tiny(
            tmp_path,
            "disk",
            task=None,
            dataset=str(tmp_path / "data"),
            dataset_config="aba",
            n_train=None,
            n_val=None,
            n_test=None,
            checkpoints=False,
        )
    )
    assert from_disk["test_samples"] == 13 and from_disk["task"] == "aba_vs_abb"
    assert from_disk["test_loss"] == pytest.approx(from_task["test_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="exceeds the dataset's 16 rows"):
        finetune(tiny(tmp_path, "big", task=None, dataset=str(tmp_path / "data"), n_train=17))


def test_stop_rules_epochs_and_convergence(tmp_path):
    # 16 samples in batches of 8: two steps per epoch; validation every 2 steps on the way
    row = finetune(tiny(tmp_path, "epochs", max_steps=0, epochs=3, eval_every=2))
    assert (row["steps"], row["epochs"], row["stopped"]) == (6, 3.0, "epochs")
    # a threshold every loss is under: stops once the window (3 steps) is full
    row = finetune(tiny(tmp_path, "conv", max_steps=100, converge_loss=100.0, converge_window=3))
    assert (row["steps"], row["stopped"]) == (3, "converged")


def test_validating_on_the_way_leaves_the_run_unchanged(tmp_path):
    # dropout on (gpt2's 0.1): an evaluation that drew from the random state (a
    # DataLoader iterator draws its base seed) would change the next steps' masks
    plain = finetune(tiny(tmp_path, "plain", max_steps=8))
    watched = finetune(tiny(tmp_path, "watched", max_steps=8, eval_every=1))
    assert (watched["test_loss"], watched["train_loss"]) == (
        plain["test_loss"],
        plain["train_loss"],
    )


def test_keep_best_tests_the_model_of_the_step_with_the_lowest_validation_loss(tmp_path):
    # at lr 0.03 the validation loss is lowest early (step 4 of 12) and the last step's
    # is far above it
    common = dict(max_steps=12, lr=0.03)
    best = finetune(tiny(tmp_path, "best", eval_every=2, keep_best=True, **common))
    last = finetune(tiny(tmp_path, "last", **common))
    assert best["steps"] == 12 and 0 < best["best_step"] < 12
    assert best["val_loss"] < last["val_loss"]
    there = finetune(tiny(tmp_path, "there", max_steps=best["best_step"], lr=0.03))
    for key in ("val_loss", "test_loss", "test_error"):
        assert best[key] == there[key], key
    assert "best_step" not in last


def test_keep_best_with_patience_stops_once_validation_stops_improving(tmp_path):
    row = finetune(tiny(tmp_path, max_steps=12, eval_every=1, keep_best=True, patience=2, lr=0.03))
    assert row["stopped"] == "patience" and row["steps"] - row["best_step"] == 2


def test_resume_of_a_keep_best_run_chooses_among_the_same_steps(tmp_path):
    # cut at step 6, after the best step (4): the resumed run must still test step 4's model
    common = dict(eval_every=2, keep_best=True, lr=0.03, checkpoint_every=3)
    whole = finetune(tiny(tmp_path, "whole", max_steps=12, **common))
    finetune(tiny(tmp_path, "cut", max_steps=6, **common))
    resumed = finetune(tiny(tmp_path, "cut", max_steps=12, resume=True, **common))
    for key in ("best_step", "val_loss", "test_loss", "steps"):
        assert resumed[key] == whole[key], key


def test_keep_best_and_patience_leave_the_hashes_of_cells_recorded_before_them_alone():
    """Fields added after results were recorded count in a cell's hash only when set."""
    from probe.experiments.cells import settings_hash

    plain = FinetuneConfig().to_dict()
    before = {k: v for k, v in plain.items() if k not in ("keep_best", "patience")}
    assert settings_hash(plain) == settings_hash(before)
    chosen = FinetuneConfig(keep_best=True, eval_every=100, patience=500).to_dict()
    assert settings_hash(chosen) != settings_hash({**chosen, "patience": 0})


# -- LoRA --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 'pretrained' GPT-2 folder with its SymbolTokenizer (symbolic head)."""
    folder = tmp_path_factory.mktemp("ckpt")
    regular = sorted(
        set(get_task("aba_vs_abb").regular_tokens + get_task("var_copy").regular_tokens)
    )
    tok = SymbolTokenizer.build(regular, 64)
    model = build_model(
        "gpt2",
        task=get_task("var_copy"),
        tokenizer=tok,
        pretrained=False,
        n_layer=1,
        n_embd=16,
        n_head=2,
        seed=0,
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "task, full", [("aba_vs_abb", {"ab_scalings", "score"}), ("var_copy", {"ab_scalings"})]
)
def test_lora_trains_only_adapters_ab_and_a_new_head(tmp_path, checkpoint, task, full):
    config = tiny(
        tmp_path,
        model=str(checkpoint),
        pretrained=True,
        task=task,
        ab="kq",
        lora_r=2,
        n_layer=None,
        n_embd=None,
        n_head=None,
    )
    plan = plan_run(config)
    data = load_run_data(plan)
    model, n_trainable = build_run_model(plan, data)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    adapters = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    fully = {n.split(".modules_to_save.")[0].rsplit(".", 1)[-1] for n in names if n not in adapters}
    assert adapters and fully == full  # the regression head `score` is new, so it trains
    optimized = {id(p) for g in build_optimizer(model, config).param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert n_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    row = finetune(config)
    assert row["trainable_params"] == n_trainable and row["ab"]["a_absmax"] > 0


@pytest.mark.parametrize("a_lr, b_lr", [(0.25, 0.5), (None, None)])
def test_ab_scalings_step_at_their_own_learning_rates(tmp_path, a_lr, b_lr):
    # Adam's first step is lr * sign(gradient) in every coordinate: after one step each
    # a sits at +-a_lr and each b at +-b_lr (the matrices' lr when None)
    config = tiny(tmp_path, ab="kq,vo", a_lr=a_lr, b_lr=b_lr, lr=TINY_LR, max_steps=1)
    expected = {"a": a_lr or TINY_LR, "b": b_lr or TINY_LR}
    plan = plan_run(config)
    data = load_run_data(plan)
    model, _ = build_run_model(plan, data)
    groups = build_optimizer(model, config).param_groups
    for name in ("a", "b"):
        ids = {id(p) for n, p in model.named_parameters() if n.endswith(f"ab_scalings.{name}")}
        (group,) = [g for g in groups if {id(p) for p in g["params"]} & ids]
        assert {id(p) for p in group["params"]} == ids
        assert group["lr"] == expected[name] and group["weight_decay"] == 0.0
    row = finetune(config)
    for name in ("a", "b"):
        moved = [abs(v) for v in row["ab"][name]]
        assert moved == pytest.approx([expected[name]] * len(moved), rel=1e-3)


def test_lora_targets_must_name_linear_layers(tmp_path, checkpoint):
    config = tiny(
        tmp_path,
        model=str(checkpoint),
        pretrained=True,
        lora_r=2,
        lora_targets="c_attn,qkv",
        n_layer=None,
        n_embd=None,
        n_head=None,
    )
    with pytest.raises(ValueError, match="qkv names no linear layer.*c_attn, c_fc, c_proj"):
        finetune(config)


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"task": "nope"}, ValueError, "known tasks: same_different"),
        ({"task": "majority_k", "task_params": {"q": 1}}, ValueError, "parameters"),
        ({"task": "majority_k:q=1"}, ValueError, "parameters"),
        ({"ab": "kq,xx"}, ValueError, "none, kq, vo, kq,vo"),
        ({"ab": "kq_rot"}, ValueError, "kq_rot rotates X by the model's rotary embedding"),
        ({"model": "mlp", "lora_r": 2, "n_head": None}, ValueError, "LoRA"),
        ({"lora_r": 8}, ValueError, "--lora-r 8: LoRA adapts pretrained.*pass --pretrained"),
        ({"model": "mlp", "ab": "kq", "n_head": None}, ValueError, "MLP"),
        ({"model": "no-such-model-xyz"}, ValueError, "--model accepts"),
        ({"model": "/no/such/folder"}, ValueError, "no such folder; --model accepts"),
        ({"gguf_file": "x.gguf"}, ValueError, "--model 'gpt2'.*'gpt2' is built in"),
        ({"tokenizer": "./no/such/tokenizer"}, FileNotFoundError, "--tokenizer.*no such folder"),
        ({"n_train": 0}, ValueError, "integer >= 1"),
        ({"n_head": 3}, ValueError, "not divisible"),
        ({"pretrained": True}, ValueError, "keeps its own shape"),
        ({"max_steps": 0}, ValueError, "never stop"),
        ({"keep_best": True}, ValueError, "--keep-best .*pass --eval-every N"),
        ({"keep_best": True, "eval_every": 2, "n_val": 0}, ValueError, "--n-val is 0"),
        ({"patience": 3}, ValueError, "--patience 3 .*add --keep-best"),
        ({"lr": float("nan")}, ValueError, "finite"),
        ({"b_lr": 0.0}, ValueError, "--b-lr 0.0 must be a finite number > 0"),
        ({"a_lr": float("inf")}, ValueError, "--a-lr inf must be a finite number > 0"),
        ({"log_with": "nonsense"}, ValueError, "tensorboard"),
        ({"task": "aba_vs_abb", "dataset": "some/data"}, ValueError, "pass one"),
        ({"resume": True, "overwrite": True}, ValueError, "one of them"),
        ({"push_to_hub": "me/a/b"}, ValueError, "--push-to-hub 'me/a/b' is not a Hub repo"),
        ({"push_to_hub": "me/run"}, ValueError, "--push-to-hub me/run: .*needs the network"),
    ],
)
def test_bad_input_is_refused_before_any_model_or_data_work(
    tmp_path, monkeypatch, overrides, error, match
):
    def no_work(*args, **kwargs):
        raise AssertionError("model or data work started before the input was checked")

    monkeypatch.setattr("probe.train.run.load_run_data", no_work)
    monkeypatch.setattr("probe.train.run.build_run_model", no_work)
    with pytest.raises(error, match=match):
        finetune(tiny(tmp_path, **overrides))


def test_existing_output_dir_is_refused_without_overwrite(tmp_path):
    finetune(tiny(tmp_path, max_steps=1))
    with pytest.raises(FileExistsError, match="--overwrite"):
        finetune(tiny(tmp_path, max_steps=1))
    (tmp_path / "run" / "notes.txt").write_text("mine")
    finetune(tiny(tmp_path, max_steps=1, overwrite=True))
    assert len(read_rows(tmp_path / "run" / "results.jsonl")) == 1  # the old row is gone
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # only run files go


def test_a_run_that_fails_in_set_up_leaves_nothing_to_refuse(tmp_path):
    with pytest.raises(ValueError, match="--model-override"):
        finetune(tiny(tmp_path, model_overrides={"no_such_field": 1}))
    assert not any((tmp_path / "run").iterdir())  # no run_config.json to block a retry
    assert finetune(tiny(tmp_path, max_steps=1))["steps"] == 1


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    config = tiny(tmp_path, lr=1e30, max_steps=50, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"at step \d+.*checkpoints/step-\d+"):
        finetune(config)


# -- the command line ------------------------------------------------------------------


def test_flags_map_to_config_fields():
    config = parse_config(
        [
            "--pretrained",
            "--model",
            "some/ckpt",
            "--ab",
            "vo,kq",
            "--task-param",
            "k=5",
            "--task",
            "majority_k",
            "--model-override",
            "resid_pdrop=0.0",
            "--no-checkpoints",
            "--a-lr",
            "none",
        ]
    )
    assert config.a_lr is None and parse_config(["--b-lr", "0.1"]).b_lr == 0.1
    assert config.pretrained is True and config.ab == "kq,vo"
    assert config.task_params == {"k": 5} and config.model_overrides == {"resid_pdrop": 0.0}
    assert config.checkpoints is False
    config = parse_config(["--dataset", "data/x", "--config", "aba"])
    assert (config.dataset, config.dataset_config, config.task) == ("data/x", "aba", None)
    help_text = build_parser().format_help()
    assert "--lora-targets" in help_text and "--log-with" in help_text


def test_help_shows_each_default_once():
    help_text = build_parser().format_help().split("options:")[1]
    entries = re.split(r"\n  (?=-)", " ".join(help_text.split("\n\n")))
    for entry in entries:
        assert " ".join(entry.split()).count("(default") <= 1, entry
    assert "(default: None)" not in help_text and "(default: {})" not in help_text
    assert "--n-layer N_LAYER     layers, from scratch only (default: 2;" in help_text
    assert "(default: 0.001)" in help_text  # --lr, from the field's own default


def test_bad_flag_value_exits_with_the_accepted_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--ab", "kq,xx"])
    assert exit_info.value.code == 2
    assert "none, kq, vo, kq,vo" in capsys.readouterr().err


def test_probe_finetune_command_appends_a_row(tmp_path):
    from probe.cli import main

    out = tmp_path / "cli"
    main(
        [
            "finetune",
            "--output-dir",
            str(out),
            "--n-train",
            "16",
            "--n-test",
            "8",
            "--n-val",
            "0",
            "--max-steps",
            "2",
            "--n-layer",
            "1",
            "--n-embd",
            "16",
            "--n-head",
            "2",
            "--no-progress",
            "--no-checkpoints",
        ]
    )
    (row,) = read_rows(out / "results.jsonl")
    assert row["test_samples"] == 8 and row["val_loss"] is None


def test_resume_of_a_finished_run_returns_its_row_without_a_second_one(tmp_path):
    first = finetune(tiny(tmp_path, max_steps=3))
    again = finetune(tiny(tmp_path, max_steps=3, resume=True))
    assert again == first
    assert len(read_rows(tmp_path / "run" / "results.jsonl")) == 1


def test_resume_after_a_kill_during_a_save_continues_from_the_last_complete_checkpoint(
    tmp_path, monkeypatch
):
    from accelerate import Accelerator

    whole = finetune(tiny(tmp_path, "whole", max_steps=6, checkpoint_every=2))
    real_save = Accelerator.save_state

    def killed_at_step_4(self, output_dir=None, **kwargs):
        real_save(self, output_dir, **kwargs)
        if "step-4" in str(output_dir):  # the files are there, the rename never happens
            raise KeyboardInterrupt

    monkeypatch.setattr(Accelerator, "save_state", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny(tmp_path, max_steps=6, checkpoint_every=2))
    monkeypatch.undo()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".step-4.tmp", "step-2"]
    resumed = finetune(tiny(tmp_path, max_steps=6, checkpoint_every=2, resume=True))
    assert resumed["test_loss"] == whole["test_loss"] and resumed["steps"] == 6
    assert [p.name for p in checkpoints.iterdir()] == ["step-6"]


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    from probe.files import folder_lock

    with folder_lock(tmp_path / "run", "--output-dir"):
        with pytest.raises(
            FileExistsError, match=f"in use by another probe process \\(pid {os.getpid()}\\)"
        ):
            finetune(tiny(tmp_path, max_steps=1))


def test_tensorboard_receives_losses_metrics_and_a_b_per_head(tmp_path):
    pytest.importorskip("tensorboard")  # in the dev extras: installed by make test
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    row = finetune(tiny(tmp_path, ab="kq,vo", max_steps=4, log_every=2, log_with="tensorboard"))
    acc = EventAccumulator(str(tmp_path / "run" / "logs" / "probe"))  # the scalars' file
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "test_loss", "test_error", "a/L0/h0", "b/L0/h1"} <= tags
    assert [e.step for e in acc.Scalars("a/L0/h0")] == [2, 4]
    assert acc.Scalars("test_loss")[-1].value == pytest.approx(row["test_loss"], rel=1e-5)
    assert acc.Scalars("a/L0/h0")[-1].value == pytest.approx(row["ab"]["a"][0], abs=1e-4)


TRACKIO_RUN = """
import json, sys
from probe.train.config import FinetuneConfig
from probe.train.run import finetune
row = finetune(FinetuneConfig(**json.loads(sys.argv[1])))
from trackio.sqlite_storage import SQLiteStorage  # reads TRACKIO_DIR, as the run wrote
(run,) = SQLiteStorage.get_runs("probe")
print(json.dumps({"row": row, "logs": SQLiteStorage.get_logs("probe", run)}, default=str))
"""


@pytest.mark.slow
def test_trackio_offline_receives_losses_metrics_and_a_b_per_head(tmp_path):
    # local-first: TRACKIO_DIR (read when trackio is imported, so a fresh process) keeps
    # its database in tmp_path; nothing reaches the network
    pytest.importorskip("trackio")  # not in the extras: trackio 0.43 pins pillow<13
    config = {**TINY, "output_dir": str(tmp_path / "run"), "ab": "kq,vo", "max_steps": 4}
    config.update(log_every=2, log_with="trackio")
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    env["TRACKIO_DIR"] = str(tmp_path / "trackio")
    cmd = [sys.executable, "-c", TRACKIO_RUN, json.dumps(config)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith('{"row"')]  # trackio talks
    found = json.loads(line)
    row, logs = found["row"], found["logs"]
    assert (tmp_path / "trackio" / "probe.db").is_file()
    train = [x for x in logs if "train_loss" in x]
    assert [x["step"] for x in train] == [2, 4]
    assert {"a/L0/h0", "b/L0/h1"} <= set(train[-1])
    assert train[-1]["a/L0/h0"] == pytest.approx(row["ab"]["a"][0], abs=1e-4)
    (final,) = [x for x in logs if "test_loss" in x]
    assert final["test_loss"] == pytest.approx(row["test_loss"], rel=1e-5)
    assert final["test_error"] == row["test_error"]


def test_a_saved_dataset_with_an_empty_validation_split_trains(tmp_path):
    from probe import render, save_dataset

    save_dataset(render("aba_vs_abb", n_train=16, n_val=0, n_test=13, seed=0), tmp_path / "d", "a")
    row = finetune(
        tiny(
            tmp_path,
            task=None,
            dataset=str(tmp_path / "d"),
            dataset_config="a",
            n_train=None,
            n_val=None,
            n_test=None,
            checkpoints=False,
        )
    )
    assert row["val_loss"] is None and row["test_samples"] == 13


def test_a_saved_dataset_without_labels_is_refused_before_training(tmp_path):
    from probe import render, save_dataset

    dsd = render("aba_vs_abb", n_train=16, n_val=4, n_test=13, seed=0)
    save_dataset(dsd.remove_columns("labels"), tmp_path / "d", "a")
    del dsd["validation"]
    save_dataset(dsd, tmp_path / "d", "no-val")
    earlier = finetune(tiny(tmp_path, checkpoints=False))  # a run --overwrite would replace
    for config, said in [
        ("a", "split 'train' has no column 'labels'"),
        ("no-val", "no 'validation' split \\(it has train, test\\)"),
    ]:
        bad = tiny(tmp_path, task=None, dataset=str(tmp_path / "d"), dataset_config=config)
        with pytest.raises(ValueError, match=said):
            finetune(dataclasses.replace(bad, overwrite=True))
    assert read_rows(tmp_path / "run" / "results.jsonl") == [earlier]  # refused before any work


@pytest.mark.slow
def test_the_row_records_the_precision_that_ran(tmp_path):
    # accelerate accepts fp16 on a CPU and reports it, but computes in fp32. A fresh
    # process: accelerate keeps one precision per process once a run has set it.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-c", "from probe.cli import main; main()", "finetune",
               "--n-train", "16", "--n-val", "0", "--n-test", "8", "--max-steps", "2",
               "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--no-checkpoints",
               "--no-progress", "--mixed-precision", "fp16", "--output-dir", str(tmp_path / "r")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mixed precision fp16 is not available on cpu" in done.stderr
    (row,) = read_rows(tmp_path / "r" / "results.jsonl")
    assert row["mixed_precision"] == "no" and row["config"]["mixed_precision"] == "fp16"
    assert finetune(tiny(tmp_path, "plain", checkpoints=False))["mixed_precision"] == "no"


def test_the_first_line_of_a_run_says_what_was_built(tmp_path, capsys, checkpoint):
    finetune(tiny(tmp_path, "scratch", ab="kq", progress=True, checkpoints=False))
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "gpt2 from scratch (fresh weights), 1 layers, width 16, 2 heads, + KQ"
    pretrained = tiny(
        tmp_path,
        "pretrained",
        model=str(checkpoint),
        pretrained=True,
        lora_r=2,
        n_layer=None,
        n_embd=None,
        n_head=None,
        progress=True,
        checkpoints=False,
    )
    finetune(pretrained)
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"{checkpoint} pretrained from {checkpoint}, LoRA r=2"


# -- --push-to-hub (the stand-in Hub of tests/hub_server.py) ------------------------------


def test_push_to_hub_leaves_a_cells_hash_alone_and_implies_save_model():
    """Where a model is published is not what a run computes: committed results stay valid."""
    from probe.experiments.cells import settings_hash

    plain, pushed = FinetuneConfig(), FinetuneConfig(push_to_hub="me/run")
    assert pushed.save_model and not plain.save_model
    assert settings_hash(plain.to_dict()) == settings_hash(pushed.to_dict())


def test_push_to_hub_uploads_the_model_folder_that_loads_back_with_its_a_b(hub, tmp_path):
    from probe.models.identity import ab_values, load_injected

    config = tiny(tmp_path, ab="kq,vo", push_to_hub="me/aba-kq")
    row = finetune(config)
    model_dir = tmp_path / "run" / "model"
    local = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    assert hub.repo("me/aba-kq").files == local
    assert {"README.md", "results.jsonl", "config.json", "model.safetensors"} <= set(local)
    assert read_rows(model_dir / "results.jsonl") == [json.loads(json.dumps(row))]
    card = local["README.md"].decode()
    assert card.startswith("---\nlibrary_name: transformers\n") and "probe.load_injected" in card

    pushed, saved = load_injected("me/aba-kq"), load_injected(model_dir)
    a_b = ab_values(pushed)
    assert a_b[["a", "b"]].equals(ab_values(saved)[["a", "b"]])
    assert a_b["a"].round(5).tolist() == row["ab"]["a"] and a_b["a"].abs().max() > 0
    test = load_run_data(plan_run(config)).splits["test"]
    with torch.no_grad():
        outputs = [
            readout(m.eval(), test["input_ids"], test["attention_mask"]) for m in (pushed, saved)
        ]
    assert torch.equal(*outputs)


def test_resume_of_a_finished_run_pushes_its_saved_model_without_training(hub, tmp_path):
    first = finetune(tiny(tmp_path, max_steps=2, save_model=True))
    again = finetune(tiny(tmp_path, max_steps=2, resume=True, push_to_hub="me/later"))
    assert again == first
    assert "model.safetensors" in hub.repo("me/later").files
    finetune(tiny(tmp_path, "plain", max_steps=2))  # finished without --save-model
    with pytest.raises(FileNotFoundError, match="finished without --save-model"):
        finetune(tiny(tmp_path, "plain", max_steps=2, resume=True, push_to_hub="me/later"))


def test_a_run_whose_steps_left_take_over_an_hour_says_so_once(tmp_path, monkeypatch):
    import warnings

    import probe.train.loop as loop

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune(tiny(tmp_path, "short", max_steps=8))  # seconds: nothing said
    assert not [w for w in caught if "steps left" in str(w.message)]
    monkeypatch.setattr(loop, "LONG_RUN_S", 0.0)  # as if every run were long
    with pytest.warns(RuntimeWarning, match=r"s a step on cpu, the \d+ steps left take about"):
        finetune(tiny(tmp_path, "long", max_steps=8))
