"""Train or fine-tune one model on one template task with accelerate; also a script.

Three doors share one :class:`~probe.train.config.FinetuneConfig`::

    accelerate launch -m probe.finetune --model gpt2 --ab kq --n-train 256
    probe finetune --model gpt2 --ab kq --n-train 256
    probe.finetune(probe.FinetuneConfig(model="gpt2", ab="kq", n_train=256))

A run renders (or loads) the task, builds the model (``probe.build_model``),
injects the identity scalings (``--ab``), optionally wraps it in LoRA adapters
(peft), trains with AdamW until a stop rule holds (``--max-steps``,
``--epochs``, or the training loss converged), evaluates on the validation
split and on the test split, whose symbols were never seen in training, and
appends one JSON line to ``OUTPUT_DIR/results.jsonl``. Checkpoints go through
``accelerator.save_state`` to ``OUTPUT_DIR/checkpoints/step-N``; ``--resume``
continues from the last one to the same final metrics as an uninterrupted run.

The same code runs on one CPU, one GPU, several GPUs or machines: ``accelerate
launch --multi_gpu --num_processes 2 -m probe.finetune ...`` falls back to the
gloo backend on a machine without GPUs. ``--batch-size`` is per process. With
several processes, run one ``finetune`` per launch: the run ends by destroying
the process group.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from probe import preempt
from probe.errors import Preempted, ProbeError, one_line, one_line_errors
from probe.files import write_atomic
from probe.jsonl import dumps
from probe.push import upload
from probe.train.config import AB, FinetuneConfig, parse_config
from probe.train.malloc import tune_malloc
from probe.train.plan import RunPlan, check_environment
from probe.train.run_dir import RESULTS_FILE, RunDir
from probe.train.setup import (
    ab_summary,
    build_optimizer,
    build_run_model,
    describe_model,
    load_run_data,
)

__all__ = ["FinetuneConfig", "finetune", "main", "model_card"]
MODEL_CARD = "README.md"


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Run one training run; returns the row appended to ``OUTPUT_DIR/results.jsonl``.

    The row holds ``test_loss``, ``test_error``, ``test_samples`` (unseen
    symbols), ``val_loss``, ``val_error``, ``val_samples``, ``train_loss``
    (mean over the last ``converge_window`` steps), ``steps``, ``epochs``,
    ``stopped`` (max_steps, epochs or converged), ``wall_s``, ``train_s`` and
    ``train_samples_per_s`` (the training loop alone), ``ab`` (the
    learned a/b: means, largest magnitudes and per-head values; None without
    ``--ab``), ``trainable_params``, ``mixed_precision`` (what ran: "no" for fp16 on
    a CPU, which accelerate runs in fp32), ``processes``, ``version`` and
    ``config`` (every field). Raises ``ValueError`` / ``FileExistsError`` /
    ``FileNotFoundError`` on bad input before any model or data work (a
    ``--push-to-hub`` that cannot work included), and ``FloatingPointError`` when
    the training loss stops being finite. With ``push_to_hub``, the saved model
    folder (``OUTPUT_DIR/model``: weights with the a/b scalings, tokenizer, model
    card, ``results.jsonl`` with the row) is then uploaded to that model repository
    (``ConnectionError`` if the upload fails; the run's files stay).
    """
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"finetune takes a FinetuneConfig, got {type(config).__name__}")
    run_dir = RunDir(config.output_dir)
    plan = check_environment(config, run_dir)
    tune_malloc()  # once per process: wide models stop paying fresh pages every step
    with preempt.handled(), _main_process_lock(run_dir):
        if (signal_name := preempt.requested()) is not None:  # e.g. a sweep's next cell
            raise Preempted(signal_name)
        run_dir.check(config)  # again, now that no other job can change the folder
        if config.resume and not run_dir.checkpoints():
            # killed before its first checkpoint: the same command can be requeued
            if _launch_main_process():
                print(
                    f"probe finetune: --resume: {str(run_dir.path)!r} holds no checkpoint "
                    "yet; starting the run from the beginning",
                    file=sys.stderr,
                    flush=True,
                )
            config = dataclasses.replace(config, resume=False)
            plan = plan.with_config(config)
        if config.resume and (row := run_dir.finished_row(config)) is not None:
            if config.save_model and run_dir.model_dir.is_dir() and not _model_complete(run_dir):
                # killed while saving the model: saved again from the final checkpoint
                row = _launch(plan, run_dir, finished=row)
            else:
                row = _already_finished(row, run_dir, config)
        else:
            row = _launch(plan, run_dir)
        if config.push_to_hub is not None and _launch_main_process():
            _push_model(run_dir, row, config)
        return row


def _launch(plan: RunPlan, run_dir: RunDir, finished: dict | None = None) -> dict[str, Any]:
    """Create the accelerator, run, and always tear down trackers and process group."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    start = time.perf_counter()
    config = plan.config

    accelerator = Accelerator(
        # Without a GPU (or other accelerator), accelerate treats `launch --multi_gpu`
        # processes as independent single-process runs unless told it is on CPU; then
        # it joins them in a gloo group.
        cpu=not has_accelerator(),
        mixed_precision=config.mixed_precision,
        log_with=config.trackers or None,
        # trackers write to OUTPUT_DIR/logs, one of the RUN_ARTIFACTS --overwrite removes
        project_config=ProjectConfiguration(
            project_dir=str(run_dir.path), logging_dir=str(run_dir.logs_dir)
        ),
    )
    atexit.unregister(_destroy_process_group)  # once, however many runs
    atexit.register(_destroy_process_group)
    try:
        return _run(accelerator, plan, run_dir, start, finished)
    finally:  # also after a failed run: trackers closed, no process group left behind
        accelerator.end_training()
        _destroy_process_group()


def _run(
    accelerator,
    plan: RunPlan,
    run_dir: RunDir,
    start: float,
    finished: dict | None = None,
) -> dict:
    """The steps of a run once the accelerator exists: folder, data, model, optimizer,
    loop, evaluation, results row. ``finished``: the row of a finished run whose
    ``model/`` is incomplete: its final checkpoint is loaded and saved as the model."""
    from accelerate.utils import set_seed

    from probe.models.build import readout
    from probe.train.loop import (
        BestStep,
        LoopSettings,
        TensorRows,
        TrainState,
        eval_loader,
        evaluate,
        fast_activations,
        train,
        train_loader,
        training_rows,
    )

    config = plan.config
    accelerator.wait_for_everyone()  # everyone has checked the folder before it changes
    if accelerator.is_main_process:
        run_dir.prepare(config.overwrite)
    accelerator.wait_for_everyone()

    precision_ran(accelerator, warn=True)
    set_seed(config.seed)
    data = load_run_data(plan)
    model, _ = build_run_model(plan, data)
    fast_activations(model)  # the same formula in one kernel
    if config.progress and accelerator.is_main_process:
        print(describe_model(plan, model), flush=True)  # what was built, before training
    optimizer = build_optimizer(model, config)
    label_kind = data.label_kind

    rows = {s: TensorRows(cols) for s, cols in data.splits.items()}
    rows["train"] = training_rows(model, data.splits["train"])  # readout checked once
    loaders = {"train": train_loader(rows["train"], config.batch_size, config.seed)}
    for split in ("validation", "test"):
        if len(rows[split]):
            loaders[split] = eval_loader(rows[split], config.eval_batch_size)
    if config.keep_best and "validation" not in loaders:  # a --dataset without one
        raise ProbeError(
            "--keep-best picks the step with the lowest validation loss, but this run has "
            "no validation samples; pass --n-val N or a dataset with a validation split"
        )
    names = list(loaders)
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *loaders.values())
    loaders = dict(zip(names, prepared, strict=True))
    if accelerator.is_main_process and not config.resume:
        # written (and trackers started) once the set-up has succeeded: a run that
        # failed before training (a dataset or tokenizer that cannot be loaded) leaves
        # no files behind for the next try to refuse
        run_dir.save_config(config)
    if config.trackers:
        accelerator.init_trackers("probe", config=_flat(config))

    state = TrainState(window=config.converge_window)
    accelerator.register_for_checkpointing(state)
    best = BestStep() if config.keep_best else None
    if best is not None:
        accelerator.register_for_checkpointing(best)
    loaded = _load_checkpoint(accelerator, run_dir) if config.resume else None
    if finished is not None:
        if accelerator.is_main_process:
            if config.progress:
                print(f"{run_dir.model_dir}: incomplete; saving it again", flush=True)
            _save_model(run_dir, accelerator.unwrap_model(model), data.tokenizer, finished)
        accelerator.wait_for_everyone()
        return finished

    def save() -> Path | None:
        """Checkpoint step-N: every process writes its part into a hidden folder, which
        the main process renames into place once all are done."""
        if not config.checkpoints:
            return None
        with _quiet("accelerate.utils.other"):  # tied embeddings: "Removed shared tensor"
            accelerator.save_state(str(run_dir.checkpoint_tmp(state.step)))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            run_dir.publish_checkpoint(state.step, config)
        accelerator.wait_for_everyone()
        return run_dir.checkpoint_root / f"step-{state.step}"

    def validate() -> dict[str, float]:
        if "validation" not in loaders:
            return {}
        return evaluate(accelerator, model, loaders["validation"], label_kind, readout, "val")

    settings = LoopSettings.from_config(config)
    previous = [loaded] if loaded else []  # the checkpoint this run continues from
    first_step, train_start = state.step, time.perf_counter()
    train(
        accelerator,
        model,
        optimizer,
        loaders["train"],
        state,
        settings,
        label_kind,
        readout,
        save,
        validate,
        last_checkpoint=previous[-1] if previous else None,
        best=best,
    )
    train_s = time.perf_counter() - train_start
    if config.checkpoints and not (previous and previous[-1].name == f"step-{state.step}"):
        save()

    metrics: dict[str, Any] = {"val_loss": None, "val_error": None, "val_samples": 0}
    metrics.update(validate())
    selected = {}
    if best is not None:  # the last step is a candidate too
        best.saw(metrics["val_loss"], state.step, accelerator.unwrap_model(model))
        if best.step != state.step:
            best.restore(accelerator.unwrap_model(model))
            metrics.update(validate())
        selected = {"best_step": best.step}
    metrics.update(evaluate(accelerator, model, loaders["test"], label_kind, readout, "test"))
    accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=state.step)
    unwrapped = accelerator.unwrap_model(model)
    row = run_row(
        config,
        data,
        unwrapped,
        state,
        metrics,
        n_train=len(rows["train"]),
        steps_per_epoch=len(loaders["train"]),
        wall_s=time.perf_counter() - start,
        train_s=train_s,
        steps_timed=state.step - first_step,
        processes=accelerator.num_processes,
        mixed_precision=precision_ran(accelerator),
        # what ran: compiled or not (the default decides by the run's length; --compile
        # may have fallen back to eager, and config.compile stays what was asked)
        compiled=state.compiled,
        **selected,  # --keep-best: the step whose model was tested
    )
    if accelerator.is_main_process:
        finish_run(run_dir, config, row, unwrapped, data.tokenizer)
    accelerator.wait_for_everyone()
    return row


def _load_checkpoint(accelerator, run_dir: RunDir) -> Path:
    """Load the newest checkpoint that loads: one that is corrupt (a broken file) or of
    another shape is passed over with a warning and renamed ``.step-N.unreadable``
    (kept for a look, no longer listed); none that loads is a one-line error."""
    checkpoints = run_dir.checkpoints()
    failures = []
    for checkpoint in reversed(checkpoints):
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as e:  # safetensors, torch and pickle errors come in many classes
            failures.append(f"{checkpoint.name}: {type(e).__name__}: {one_line(e)[:200]}")
            warnings.warn(
                f"--resume: cannot load {str(checkpoint)!r} ({failures[-1]})", stacklevel=2
            )
            continue
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # out of the way of the next checkpoints
            for bad in checkpoints[checkpoints.index(checkpoint) + 1 :]:
                bad.rename(bad.with_name(f".{bad.name}.unreadable"))
        accelerator.wait_for_everyone()
        return checkpoint
    raise ProbeError(
        f"--resume: no checkpoint in {str(run_dir.checkpoint_root)!r} can be loaded "
        f"({'; '.join(failures)}): they are corrupt or not this run's; pass --overwrite "
        "to start the run over"
    )


def run_row(
    config: FinetuneConfig,
    data,
    model: torch.nn.Module,
    state,
    metrics: dict[str, Any],
    *,
    n_train: int,
    steps_per_epoch: int,
    wall_s: float,
    train_s: float,
    steps_timed: int,
    processes: int,
    mixed_precision: str,
    **extra: Any,
) -> dict[str, Any]:
    """A finished run's results row (the keys :func:`finetune` documents), from its data,
    trained model (unwrapped), loop state and evaluation metrics; ``extra`` keys follow
    ``processes`` (a packed cell's ``packed``)."""
    from probe._version import __version__

    return {
        "task": data.task.name,
        "label_kind": data.label_kind,
        "model": config.model,
        "n_train": n_train,
        "seed": config.seed,
        **metrics,
        "train_loss": _finite_or_none(state.recent_loss),
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / steps_per_epoch, 4),
        "stopped": state.stopped,
        "wall_s": round(wall_s, 3),
        "train_s": round(train_s, 3),
        # samples seen by all processes together per second of the training loop
        "train_samples_per_s": round(steps_timed * config.batch_size * processes / train_s, 1)
        if train_s > 0
        else None,
        "ab": ab_summary(model) if config.identity else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "mixed_precision": mixed_precision,
        "processes": processes,
        # the float reductions' order, which a chaotic run's result depends on: the
        # paper model's plain cells end apart on 1 and 2 threads (results/paper/NOTES.md)
        "torch_threads": torch.get_num_threads(),
        **extra,
        # a --compile that fell back to eager says why (TrainState.compile_error)
        **({"compile_error": state.compile_error} if state.compile_error else {}),
        "version": __version__,
        "config": config.to_dict(),
    }


def finish_run(run_dir: RunDir, config: FinetuneConfig, row: dict, model, tokenizer) -> None:
    """The main process's last steps of a run: the row appended to the folder's results,
    the model saved (``save_model``: weights, tokenizer, card, row), the summary line."""
    run_dir.append_result(row)
    if config.save_model:
        _save_model(run_dir, model, tokenizer, row)
    if config.progress:
        print(_summary(row), flush=True)


def _save_model(run_dir: RunDir, model, tokenizer, row: dict) -> None:
    """``OUTPUT_DIR/model``: weights, tokenizer, then the card and the row (last: their
    presence says the folder is complete)."""
    model.save_pretrained(run_dir.model_dir)
    tokenizer.save_pretrained(run_dir.model_dir)
    _describe_model(run_dir, row)


def _model_complete(run_dir: RunDir) -> bool:
    """Whether ``model/`` holds a whole save: its row is written last."""
    return (run_dir.model_dir / RESULTS_FILE).is_file()


# -- the output folder --------------------------------------------------------------


def _launch_main_process() -> bool:
    """True in the main process of an ``accelerate launch`` (and in a plain process)."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


@contextlib.contextmanager
def _main_process_lock(run_dir: RunDir) -> Iterator[None]:
    """The folder lock, taken by the launch's main process only (the others of an
    ``accelerate launch`` work in the same folder under its lock)."""
    if not _launch_main_process():
        yield
        return
    with run_dir.lock():
        yield


# -- the saved model as a Hub repository --------------------------------------------


def _describe_model(run_dir: RunDir, row: dict[str, Any]) -> None:
    """Next to the saved weights and tokenizer: the model card (``README.md``) and the
    run's row (``results.jsonl``), so the folder is the Hub repository --push-to-hub
    uploads, unchanged."""
    write_atomic(run_dir.model_dir / MODEL_CARD, model_card(row))
    write_atomic(run_dir.model_dir / RESULTS_FILE, dumps(row) + "\n")


def _push_model(run_dir: RunDir, row: dict[str, Any], config: FinetuneConfig) -> None:
    """--push-to-hub: upload ``OUTPUT_DIR/model`` to the model repository."""
    repo = config.push_to_hub
    if not run_dir.model_dir.is_dir():  # a finished run resumed, saved without --save-model
        raise FileNotFoundError(
            f"--push-to-hub {repo}: {str(run_dir.model_dir)!r} does not exist: the run "
            f"finished without --save-model, so its trained model was not kept; train it "
            f"again with --overwrite --push-to-hub {repo}"
        )
    if not (run_dir.model_dir / MODEL_CARD).exists():  # saved before probe wrote cards
        _describe_model(run_dir, row)
    url = upload(
        run_dir.model_dir, repo, "model", f"probe finetune: {_title(row)}", flag="--push-to-hub"
    )
    if config.progress:
        print(f"pushed {run_dir.model_dir} to {url}", flush=True)


def _title(row: dict[str, Any]) -> str:
    cfg = row["config"]
    variant = f"+ {cfg['ab']}" if AB.parse(cfg["ab"]) else "plain"
    lora = f", LoRA r={cfg['lora_r']}" if cfg.get("lora_r") else ""
    scratch = "" if cfg.get("pretrained") else " from scratch"
    return (
        f"{row['model']}{scratch} ({variant}{lora}) on {row['task']}, n={row['n_train']}, "
        f"seed {row['seed']}"
    )


def model_card(row: dict[str, Any]) -> str:
    """The model card of a run's saved model: what was trained on what, its numbers on
    unseen symbols, the learned a/b, how to load it."""
    from huggingface_hub import ModelCardData

    cfg = row["config"]
    metric = "test_error" if row["label_kind"] == "symbolic" else "test_loss"
    data = ModelCardData(
        library_name="peft" if cfg.get("lora_r") else "transformers",
        tags=["probe", "template-tasks", "identity-scalings", row["task"]],
    )
    numbers = [
        ("test loss (unseen symbols)", row["test_loss"]),
        ("test error (unseen symbols)", row["test_error"]),
        ("validation loss", row["val_loss"]),
        ("steps", f"{row['steps']} ({row['stopped']})"),
    ]
    ab = row.get("ab") or {}
    numbers += [(f"mean {k}", ab[f"{k}_mean"]) for k in ("a", "b") if f"{k}_mean" in ab]
    table = "\n".join(f"| {name} | {_number(value)} |" for name, value in numbers)
    if cfg.get("lora_r"):
        load = (
            "from peft import AutoPeftModel\n"
            'model = AutoPeftModel.from_pretrained("path/to/this/folder")  # or its Hub id'
        )
    else:
        load = (
            "import probe\n"
            'model = probe.load_injected("path/to/this/folder")  # or its Hub id; a and b included'
        )
    return f"""---
{data.to_yaml()}
---

# {_title(row)}

Trained by probe {row["version"]} (the `symbol-probe` package) on the template
task `{row["task"]}` ({row["label_kind"]} labels; Boix-Adserà et al., *When can transformers
reason with abstract symbols?*, ICLR 2024). Its test split uses symbols never seen in
training; `{metric}` is the paper's measure.

| | |
|---|---|
{table}

```python
{load}
```

`results.jsonl` holds the run's results row: every metric, the learned a and b per head
(`ab`), and every setting (`config`; `probe.FinetuneConfig.from_dict(row["config"])`
reruns it).
"""


def _number(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _already_finished(row: dict, run_dir: RunDir, config: FinetuneConfig) -> dict[str, Any]:
    """``--resume`` of a run that finished: its row, not a second one."""
    if config.progress:
        print(f"{run_dir.path}: the run already finished; nothing to resume", flush=True)
        print(_summary(row), flush=True)
    return row


def _flat(config: FinetuneConfig) -> dict[str, Any]:
    """The config as tracker hyperparameters: scalars only (None and dicts as text)."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in config.to_dict().items()
    }


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _summary(row: dict[str, Any]) -> str:
    cfg = row["config"]
    variant = cfg["ab"] if AB.parse(cfg["ab"]) else "plain"
    if cfg["lora_r"]:
        variant += f", LoRA r={cfg['lora_r']}"
    val = "" if row["val_loss"] is None else f"; val loss {row['val_loss']:.4g}"
    return (
        f"{row['task']} | {row['model']} ({variant}) | n={row['n_train']} seed={row['seed']}: "
        f"test loss {row['test_loss']:.4g}, error {row['test_error']:.3f} on "
        f"{row['test_samples']} unseen-symbol samples{val} | {row['steps']} steps "
        f"({row['stopped']}), {row['wall_s']:.1f}s"
    )


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hide a library logger's warnings for a moment (errors still show)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def precision_ran(accelerator, warn: bool = False) -> str:
    """The mixed precision the run computes in: accelerate accepts fp16 on a CPU and
    reports it, but runs fp32 there (no autocast without native AMP), so that is "no"."""
    asked = accelerator.mixed_precision
    if asked in ("fp16", "bf16") and not accelerator.native_amp:
        if warn and accelerator.is_main_process:
            warnings.warn(
                f"mixed precision {asked} is not available on {accelerator.device.type}: "
                f"this run computes in fp32 and its row records mixed_precision 'no'; "
                f"use bf16 (CPUs) or a GPU for {asked}",
                stacklevel=2,
            )
        return "no"
    return asked


def has_accelerator() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _destroy_process_group() -> None:
    # Without it about one exit in three aborts with "terminate called without an
    # active exception" when the gloo group is torn down at interpreter exit.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``probe finetune`` / ``accelerate launch -m probe.finetune``: parse, run, report.
    A user error is one line (exit 2); a run stopped by SIGTERM, SIGUSR1 or Ctrl-C
    saves a checkpoint, prints the command that continues it and exits 75
    (``probe.errors.EXIT_PREEMPTED``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with one_line_errors("probe finetune"):
        config = parse_config(argv, prog="probe finetune")
        try:
            return finetune(config)
        except Preempted as stopped:
            stopped.command = continue_command(argv)
            raise


def continue_command(argv: list[str]) -> str:
    """The command that continues a stopped run: the same one, with ``--resume``."""
    args = [a for a in argv if a not in ("--overwrite", "--no-resume")]
    if "--resume" not in args:
        args.append("--resume")
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("finetune.py") else None
    if script is None:
        prefix = ["probe", "finetune"]
    elif any(k.startswith("ACCELERATE_") for k in os.environ):
        processes = os.environ.get("WORLD_SIZE", "1")
        prefix = ["accelerate", "launch", "--quiet"]  # a failure: probe's line, no traceback
        prefix += ["--num_processes", processes] if processes != "1" else []
        prefix.append(script)
    else:
        prefix = ["python", script]
    return shlex.join(prefix + args)
