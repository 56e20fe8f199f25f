"""Training throughput: probe's accelerate loop vs a plain ``transformers.Trainer``,
and as a share of the CPU's matmul peak.

Both train the same model (the paper's small transformer: GPT-2 architecture,
2 layers, width 128, 4 heads, from scratch, the same seed) on the same rendered
``aba_vs_abb`` split, with AdamW at a constant lr 1e-3, no weight decay,
batch 64, the same number of steps, no evaluation, no logging, no saving,
no early stop, on one thread (``--threads``). Each side is timed over its
training loop only (probe's ``train_s``, the Trainer's ``train_runtime``), and
the sides alternate over a few repeats so a busy machine slows all alike; the
best repeat of each counts. Prints samples/s and ms/step of each and
``probe/trainer: <ratio>`` (target >= 1.0). Then it times probe's loop itself
(``probe.train.loop.train``, the same set-up as a run) as the best of
``--windows`` 16-step windows, and prints ``fraction of matmul peak: <x>``
(target >= 0.6 at one thread). Last, ``pack<K>/lone: <x>`` (``--pack``, default 16):
``bench/pack.py``'s per-cell throughput of ``probe sweep --pack K`` at width 128.

The fraction is:

    fraction = 6 · P · T · samples_per_s / sgemm_flops_per_s

P is the number of weights in the model's matmuls (every ``nn.Linear`` and
GPT-2 ``Conv1D``: 12·d² per layer plus the scalar head, 393,344 at d = 128), T
the tokens per sample the matmuls see (the padded sequence length, 4 for
``aba_vs_abb``), and 6 = 2 FLOPs per multiply-add × (forward + the two
backward products, grad-input and grad-weight). Attention's own products
(QKᵀ, AV: T² per head) and the embedding lookups are left out (under 1 % here).
The sgemm peak is a 512 × 512 float32 matmul timed in the same process on the
same threads, between the repeats and the windows, best of all: both sides are
best-of readings, so a machine busy with other work lowers neither much. With ``--compile`` a third
side trains with ``compile=True``; its first run's extra ``train_s`` over its
best run is the compile warm-up.

    python bench/finetune.py [--steps 300] [--repeat 3] [--windows 20] [--compile] [--ab kq,vo]
"""

from __future__ import annotations

import argparse
import os
import sys
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
AB = {"ab": "none"}  # --ab: the identity scalings on every side


def config(out: str, steps: int, **extra) -> FinetuneConfig:
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
        **AB,
        **extra,
    )


def run_probe(out: str, steps: int, **extra) -> tuple[float, float]:
    """samples/s and train_s of one probe run."""
    row = finetune(config(out, steps, **extra))
    return row["train_samples_per_s"], row["train_s"]


def run_compiled(out: str, steps: int) -> tuple[float, float]:
    return run_probe(out, steps, compile=True)


def sgemm_flops(n: int = 512, repeat: int = 20) -> float:
    """FLOP/s of an n × n float32 matmul on this process's threads, best of ``repeat``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def loop_steps_per_s(compile_step: bool, windows: int, chunk: int = 16) -> float:
    """Steps/s of probe's own loop (``probe.train.loop.train``) on the same model,
    data and optimizer as a run, as the best of ``windows`` calls of ``chunk``
    steps each (one epoch of the 1024-sample split): the same best-of-windows
    reading as the sgemm peak, so a busy machine distorts neither."""
    from accelerate import Accelerator

    from probe.models.build import readout
    from probe.train import loop as train_loop
    from probe.train.setup import build_optimizer

    cfg = config(tempfile.gettempdir(), 1)
    data = load_run_data(cfg, get_task(cfg.task))
    torch.manual_seed(cfg.seed)
    model, _ = build_run_model(cfg, data)
    if hasattr(train_loop, "fast_activations"):  # absent before the fast step
        train_loop.fast_activations(model)
    optimizer = build_optimizer(model, cfg)
    accelerator = Accelerator(cpu=True)
    loader = train_loop.train_loader(train_loop.TensorRows(data.splits["train"]), BATCH, cfg.seed)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state = train_loop.TrainState(window=cfg.converge_window)
    fields = {f: getattr(cfg, f) for f in ("epochs", "converge_loss", "max_grad_norm")}
    extra = {"compile": compile_step}
    best = float("inf")
    for i in range(windows + 1):  # the first window warms up (and compiles)
        settings = train_loop.LoopSettings(
            max_steps=state.step + chunk,
            eval_every=0,
            checkpoint_every=0,
            log_every=10,
            progress=False,
            **fields,
            **extra,
        )
        t = time.perf_counter()
        train_loop.train(
            accelerator,
            model,
            optimizer,
            loader,
            state,
            settings,
            data.label_kind,
            readout,
            save=lambda: None,
        )
        if i:
            best = min(best, time.perf_counter() - t)
    return chunk / best


def matmul_shape() -> tuple[int, int]:
    """(P, T): weights in the model's matmuls, and tokens per sample (padded length)."""
    cfg = config(tempfile.gettempdir(), 1)
    data = load_run_data(cfg, get_task(cfg.task))
    model, _ = build_run_model(cfg, data)
    weights = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    )
    return weights, data.splits["train"]["input_ids"].shape[1]


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
    runtime = result.metrics["train_runtime"]
    return steps * BATCH / runtime, runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=20, help="16-step windows timed")
    parser.add_argument("--ab", default="none", help="inject a/b (e.g. kq,vo) on every side")
    parser.add_argument("--compile", action="store_true", help="also time probe with compile=True")
    parser.add_argument(
        "--pack", type=int, default=16, help="also print pack<K>/lone (bench/pack.py; 0: skip)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    AB["ab"] = args.ab
    sides = {"probe": run_probe, "trainer": run_trainer}
    if args.compile:
        sides["compiled"] = run_compiled
    best = dict.fromkeys(sides, 0.0)
    train_s: dict[str, list[float]] = {name: [] for name in sides}
    peak = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            peak = max(peak, sgemm_flops())
            for name, fn in sides.items():
                t = time.perf_counter()
                rate, seconds = fn(os.path.join(tmp, f"{name}-{i}"), args.steps)
                best[name] = max(best[name], rate)
                train_s[name].append(seconds)
                print(
                    f"  repeat {i} {name:8s}: {rate:8.0f} samples/s "
                    f"({time.perf_counter() - t:.1f}s with set-up)",
                    flush=True,
                )
        peak = max(peak, sgemm_flops())
    # the step itself: best 16-step windows of probe's loop, between sgemm readings
    loops = {"probe": False, "compiled": True} if args.compile else {"probe": False}
    step_rate = {}
    for name, compiled in loops.items():
        step_rate[name] = BATCH * loop_steps_per_s(compiled, args.windows)
        peak = max(peak, sgemm_flops())
    weights, tokens = matmul_shape()
    for name in sides:
        print(
            f"{name + ':':9s} {best[name]:6.0f} samples/s, "
            f"{1e3 * BATCH / best[name]:.2f} ms/step (whole runs)"
        )
    print(
        f"sgemm 512x512, {args.threads} thread(s): {peak / 1e9:.1f} GFLOP/s; "
        f"step matmuls: 6 x {weights} weights x {tokens} tokens per sample"
    )
    for name, rate in step_rate.items():
        label = "" if name == "probe" else " (compiled)"
        print(
            f"{name} loop: {1e3 * BATCH / rate:.2f} ms/step, {rate:.0f} samples/s "
            f"(best of {args.windows} windows of 16 steps)"
        )
        print(f"fraction of matmul peak{label}: {6 * weights * tokens * rate / peak:.2f}")
    if args.compile:
        warm_up = train_s["compiled"][0] - min(train_s["compiled"])
        print(f"compile warm-up: {warm_up:.1f} s (first compiled run's train_s over its best)")
        print(f"compiled/probe: {best['compiled'] / best['probe']:.2f}")
    print(f"probe/trainer: {best['probe'] / best['trainer']:.2f}")
    if args.pack:  # the per-cell throughput of --pack K, the paper model at width 128
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from pack import measure

        measure(args.pack, 128, steps=40)


if __name__ == "__main__":
    main()
