"""Train or fine-tune one model on one template task with accelerate; also a script.

Three doors share one :class:`~probe.config.FinetuneConfig`::

    accelerate launch probe/finetune.py --model gpt2 --ab kq --n-train 256
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
launch --multi_gpu --num_processes 2 probe/finetune.py ...`` falls back to the
gloo backend on a machine without GPUs. ``--batch-size`` is per process. With
several processes, run one ``finetune`` per launch: the run ends by destroying
the process group.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (`accelerate launch probe/finetune.py`): Python put probe/ itself
    # first on sys.path, where its modules would shadow top-level ones; put the
    # folder holding the package there instead, so `import probe` finds this checkout.
    from pathlib import Path as _Path

    sys.path[0] = str(_Path(__file__).resolve().parent.parent)

import atexit
import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from probe.config import FinetuneConfig, config_path, parse_config
from probe.run_setup import (
    ab_summary,
    build_optimizer,
    build_run_model,
    check_environment,
    checkpoint_dirs,
    load_run_data,
)

__all__ = ["FinetuneConfig", "finetune", "main"]

RESULTS_FILE = "results.jsonl"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
# Files a run writes in its output folder; --overwrite removes these and nothing else.
RUN_ARTIFACTS = (RESULTS_FILE, CHECKPOINTS, "run_config.json", "model", LOGS)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Run one training run; returns the row appended to ``OUTPUT_DIR/results.jsonl``.

    The row holds ``test_loss``, ``test_error``, ``test_samples`` (unseen
    symbols), ``val_loss``, ``val_error``, ``val_samples``, ``train_loss``
    (mean over the last ``converge_window`` steps), ``steps``, ``epochs``,
    ``stopped`` (max_steps, epochs or converged), ``wall_s``, ``train_s`` and
    ``train_samples_per_s`` (the training loop alone), ``ab`` (the
    learned a/b: means, largest magnitudes and per-head values; None without
    ``--ab``), ``trainable_params``, ``processes``, ``version`` and
    ``config`` (every field). Raises ``ValueError`` / ``FileExistsError`` /
    ``FileNotFoundError`` on bad input before any model or data work, and
    ``FloatingPointError`` when the training loss stops being finite.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"finetune takes a FinetuneConfig, got {type(config).__name__}")
    out = Path(config.output_dir)
    task = check_environment(config, _run_state(out, config))
    start = time.perf_counter()

    accelerator = Accelerator(
        # Without a GPU (or other accelerator), accelerate treats `launch --multi_gpu`
        # processes as independent single-process runs unless told it is on CPU; then
        # it joins them in a gloo group.
        cpu=not _has_accelerator(),
        mixed_precision=config.mixed_precision,
        log_with=config.trackers or None,
        # trackers write to OUTPUT_DIR/logs, one of the RUN_ARTIFACTS --overwrite removes
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / LOGS)),
    )
    atexit.unregister(_destroy_process_group)  # once, however many runs
    atexit.register(_destroy_process_group)
    try:
        return _run(accelerator, config, task, out, start)
    finally:  # also after a failed run: trackers closed, no process group left behind
        accelerator.end_training()
        _destroy_process_group()


def _run(accelerator, config: FinetuneConfig, task, out: Path, start: float) -> dict[str, Any]:
    """The body of :func:`finetune` once the accelerator exists."""
    from accelerate.utils import set_seed

    from probe import __version__
    from probe.models import readout
    from probe.train_loop import (
        LoopSettings,
        TensorRows,
        TrainState,
        eval_loader,
        evaluate,
        fast_activations,
        train,
        train_loader,
    )

    accelerator.wait_for_everyone()  # everyone has checked the folder before it changes
    if accelerator.is_main_process:
        _prepare_output_dir(out, config)
    accelerator.wait_for_everyone()

    set_seed(config.seed)
    data = load_run_data(config, task)
    model, trainable = build_run_model(config, data)
    fast_activations(model)  # the same formula in one kernel
    optimizer = build_optimizer(model, config)
    label_kind = data.label_kind

    rows = {s: TensorRows(cols) for s, cols in data.splits.items()}
    loaders = {"train": train_loader(rows["train"], config.batch_size, config.seed)}
    for split in ("validation", "test"):
        if len(rows[split]):
            loaders[split] = eval_loader(rows[split], config.eval_batch_size)
    names = list(loaders)
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *loaders.values())
    loaders = dict(zip(names, prepared, strict=True))
    if accelerator.is_main_process and not config.resume:
        # written (and trackers started) once the set-up has succeeded: a run that
        # failed before training (a dataset or tokenizer that cannot be loaded) leaves
        # no files behind for the next try to refuse
        _write_atomic(config_path(out), json.dumps(config.to_dict(), indent=2) + "\n")
    if config.trackers:
        accelerator.init_trackers("probe", config=_flat(config))

    state = TrainState(window=config.converge_window)
    accelerator.register_for_checkpointing(state)
    checkpoints = out / CHECKPOINTS
    if config.resume:
        accelerator.load_state(str(checkpoint_dirs(checkpoints)[-1]))

    def save() -> Path | None:
        if not config.checkpoints:
            return None
        path = checkpoints / f"step-{state.step}"
        with _quiet("accelerate.utils.other"):  # tied embeddings: "Removed shared tensor"
            accelerator.save_state(str(path))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # keep the newest checkpoint only
            for old in checkpoint_dirs(checkpoints)[:-1]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def validate() -> dict[str, float]:
        if "validation" not in loaders:
            return {}
        return evaluate(accelerator, model, loaders["validation"], label_kind, readout, "val")

    settings = LoopSettings.from_config(config)
    previous = checkpoint_dirs(checkpoints)
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
    )
    train_s = time.perf_counter() - train_start
    if config.checkpoints and not (previous and previous[-1].name == f"step-{state.step}"):
        save()

    metrics: dict[str, Any] = {"val_loss": None, "val_error": None, "val_samples": 0}
    metrics.update(validate())
    metrics.update(evaluate(accelerator, model, loaders["test"], label_kind, readout, "test"))
    accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=state.step)
    unwrapped = accelerator.unwrap_model(model)
    steps_per_epoch = len(loaders["train"])
    row = {
        "task": data.task.name,
        "label_kind": label_kind,
        "model": config.model,
        "n_train": len(rows["train"]),
        "seed": config.seed,
        **metrics,
        "train_loss": _finite_or_none(state.recent_loss),
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / steps_per_epoch, 4),
        "stopped": state.stopped,
        "wall_s": round(time.perf_counter() - start, 3),
        "train_s": round(train_s, 3),
        # samples seen by all processes together per second of the training loop
        "train_samples_per_s": round(
            (state.step - first_step) * config.batch_size * accelerator.num_processes / train_s, 1
        )
        if train_s > 0
        else None,
        "ab": ab_summary(unwrapped) if config.ab != "none" else None,
        "trainable_params": trainable,
        "processes": accelerator.num_processes,
        "version": __version__,
        "config": config.to_dict(),
    }
    if accelerator.is_main_process:
        _append_row(out / RESULTS_FILE, row)
        if config.save_model:
            unwrapped.save_pretrained(out / "model")
            data.tokenizer.save_pretrained(out / "model")
        if config.progress:
            print(_summary(row), flush=True)
    accelerator.wait_for_everyone()
    return row


# -- the output folder --------------------------------------------------------------


def _run_state(out: Path, config: FinetuneConfig) -> dict[str, Any]:
    """What an earlier run left in ``out``: the facts check_environment judges."""
    artifacts = [name for name in RUN_ARTIFACTS if (out / name).exists()]
    saved = None
    if config_path(out).is_file():
        saved = json.loads(config_path(out).read_text())
    return {
        "out": out,
        "artifacts": artifacts,
        "checkpoints": checkpoint_dirs(out / CHECKPOINTS),
        "saved_config": saved,
    }


def _prepare_output_dir(out: Path, config: FinetuneConfig) -> None:
    if config.overwrite:
        for name in RUN_ARTIFACTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _append_row(path: Path, row: dict[str, Any]) -> None:
    """One JSON line appended atomically: a single O_APPEND write under an exclusive
    lock, so concurrent runs sharing a results file never interleave their lines."""
    line = (json.dumps(row, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows: O_APPEND alone
            pass
        os.write(fd, line)
    finally:
        os.close(fd)


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
    variant = cfg["ab"] if cfg["ab"] != "none" else "plain"
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


def _has_accelerator() -> bool:
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _destroy_process_group() -> None:
    # Without it about one exit in three aborts with "terminate called without an
    # active exception" when the gloo group is torn down at interpreter exit.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``probe finetune`` / ``accelerate launch probe/finetune.py``: parse, run, report."""
    config = parse_config(sys.argv[1:] if argv is None else argv, prog="probe finetune")
    try:
        return finetune(config)
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError) as err:
        print(f"probe finetune: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    import probe.finetune

    probe.finetune.main()
