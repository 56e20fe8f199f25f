"""Training throughput: probe's accelerate loop vs a plain ``transformers.Trainer``.

Both train the same model (the paper's small transformer: GPT-2 architecture,
2 layers, width 128, 4 heads, from scratch, the same seed) on the same rendered
``aba_vs_abb`` split, with AdamW at a constant lr 1e-3, no weight decay,
batch 64, the same number of steps, no evaluation, no logging, no saving,
no early stop. Each side is timed over its training loop only (probe's
``train_s``, the Trainer's ``train_runtime``), and the two alternate over a
few repeats so a busy machine slows both alike; the best repeat of each counts.
Prints samples/s of each and ``probe/trainer: <ratio>`` (target >= 1.0).

    python bench/finetune.py [--steps 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from probe.tasks.catalogue import get_task  # noqa: E402
from probe.train.config import FinetuneConfig  # noqa: E402
from probe.train.run import finetune  # noqa: E402
from probe.train.setup import build_run_model, load_run_data  # noqa: E402

N_TRAIN, BATCH = 1024, 64


def config(out: str, steps: int) -> FinetuneConfig:
    return FinetuneConfig(
        task="aba_vs_abb",
        n_train=N_TRAIN,
        n_val=0,
        n_test=1,  # the test pass is outside the timed loop; keep it negligible
        batch_size=BATCH,
        max_steps=steps,
        converge_loss=0.0,
        checkpoints=False,
        progress=False,
        output_dir=out,
        overwrite=True,
    )


def run_probe(out: str, steps: int) -> float:
    row = finetune(config(out, steps))
    return row["train_samples_per_s"]


def run_trainer(out: str, steps: int) -> float:
    from datasets import Dataset
    from transformers import PrinterCallback, Trainer, TrainingArguments

    cfg = config(out, steps)
    data = load_run_data(cfg, get_task(cfg.task))
    torch.manual_seed(cfg.seed)
    model, _ = build_run_model(cfg, data)  # the same model, from the same seed
    train = Dataset.from_dict({k: v.tolist() for k, v in data.splits["train"].items()})
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=cfg.lr,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        eval_strategy="no",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.remove_callback(PrinterCallback)  # its end-of-run metrics line; we print ours
    result = trainer.train()
    return steps * BATCH / result.metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    best = {"probe": 0.0, "trainer": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for name, fn in (("probe", run_probe), ("trainer", run_trainer)):
                t = time.perf_counter()
                rate = fn(os.path.join(tmp, f"{name}-{i}"), args.steps)
                best[name] = max(best[name], rate)
                print(
                    f"  repeat {i} {name:7s}: {rate:8.0f} samples/s "
                    f"({time.perf_counter() - t:.1f}s with set-up)",
                    flush=True,
                )
    print(f"probe:   {best['probe']:.0f} samples/s")
    print(f"trainer: {best['trainer']:.0f} samples/s")
    print(f"probe/trainer: {best['probe'] / best['trainer']:.2f}")


if __name__ == "__main__":
    main()
