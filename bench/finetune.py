"""Training throughput in CPU time: probe's loop as a share of the CPU's matmul peak,
and against a plain-PyTorch reference of the official model.

probe's side is the paper's model (``--model paper``: GPT-2 made the official
template-task transformer, 2 layers, width 128, d_head 64, from scratch) trained by
probe's own loop (``probe.train.loop.train``, set up as a run sets it up: accelerate,
the DataLoader, the readout, fused AdamW at lr 1e-3) on the rendered ``aba_vs_abb``
split, batch 64, one thread (``--threads``). The reference side is the official
``TemplateMatchingTransformer`` (eboix/relational-reasoning, ``experiments/models.py``)
written here in plain PyTorch from its description: pre-LN blocks (affine LayerNorms),
bidirectional attention with explicit matmuls and softmax, Q/K/V/output projections
without biases, a GELU MLP of width 4 · d with biases, ``nn.Linear``'s default init,
N(0, 1) token and position embeddings, a non-affine final LayerNorm and a linear head
read at the last position, d_head 64; trained by a bare loop with fused Adam (lr 1e-3)
on the same batches (probe's loader order, materialized once), squared error.

Timing holds on a machine shared with other work: every reading is the calling
thread's CPU time (``time.thread_time``; wall time printed beside it), windows of
16 steps of each side alternate round by round (the order rotates), the first
round warms up, and the best of ``--windows`` rounds counts for each side. The sgemm
peak is a 512 × 512 float32 matmul timed the same way between rounds, best of all.
Prints ``fraction of matmul peak (cpu time)`` (target >= 0.5 at one thread) and
``probe/official-fused`` (the reference's best CPU time per window over probe's;
target >= 1.1). The fraction is:

    fraction = 6 · P · T · samples_per_cpu_s / sgemm_flops_per_cpu_s

P is the number of weights in the model's matmuls (every ``nn.Linear`` and GPT-2
``Conv1D``: 12·d² per layer plus the scalar head), T the tokens per sample the
matmuls see (the padded sequence length, 4 for ``aba_vs_abb``), and 6 = 2 FLOPs per
multiply-add × (forward + the two backward products). Attention's own products and
the embedding lookups are left out (under 1 % here).

probe's side runs what ``probe finetune`` runs for a paper-protocol cell of this shape
(n 2048, 1000 epochs, no step limit: 32,000 steps, so the step is compiled by default:
``probe.train.loop.compiles``); a third side, ``eager``, trains with ``compile=False``,
what cells under ``COMPILE_MIN_STEPS`` steps run (its fraction and ratio are printed
too, and ``compiled/eager``; the compiled side's first window's CPU time over its best
is the warm-up, from inductor's cache when it holds the shape). ``--trainer`` also runs whole runs of
probe against a plain ``transformers.Trainer`` (``probe/trainer``, CPU time of each
training loop). ``--pack S`` also prints ``bench/pack.py``'s ``pack<4·S>/lone`` on the
aba_vs_abb 4 variants × S seeds grid at width 128.

    python bench/finetune.py [--windows 20] [--ab kq,vo] [--trainer] [--pack 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from probe.train.config import FinetuneConfig  # noqa: E402
from probe.train.plan import plan_run  # noqa: E402
from probe.train.setup import build_run_model, load_run_data  # noqa: E402

N_TRAIN, BATCH, CHUNK = 2048, 64, 16
PROTOCOL_EPOCHS = 1000  # the paper's (recipes/paper/base.yaml), no step limit
SETTINGS = {"ab": "none", "model": "paper"}  # --ab, --model: every side


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
        **{"a_lr": 1e-3, "b_lr": 1e-3, **SETTINGS},
        **extra,
    )


def cpu_and_wall(fn) -> tuple[float, float]:
    c, w = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - c, time.perf_counter() - w


def sgemm(n: int = 512, repeat: int = 20) -> tuple[float, float]:
    """FLOP/s of an n × n float32 matmul on this thread, best of ``repeat``: per CPU
    second and per wall second."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    cpu = wall = float("inf")
    for _ in range(repeat):
        c, w = cpu_and_wall(lambda: torch.mm(a, b))
        cpu, wall = min(cpu, c), min(wall, w)
    return 2 * n**3 / cpu, 2 * n**3 / wall


class ProbeSide:
    """probe's loop on the model, data and optimizer of a run; ``window()`` trains
    CHUNK more steps (one call of ``probe.train.loop.train``)."""

    def __init__(self, compile_step: bool | None = None):
        from accelerate import Accelerator

        from probe.models.build import readout
        from probe.train import loop
        from probe.train.setup import build_optimizer

        cfg = config(tempfile.gettempdir(), 1)
        plan = plan_run(cfg)
        data = load_run_data(plan)
        torch.manual_seed(cfg.seed)
        model, _ = build_run_model(plan, data)
        loop.fast_activations(model)
        optimizer = build_optimizer(model, cfg)
        accelerator = Accelerator(cpu=True)
        rows = loop.training_rows(model, data.splits["train"])
        loader = loop.train_loader(rows, BATCH, cfg.seed)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        self.state = loop.TrainState(window=cfg.converge_window)
        fields = {f: getattr(cfg, f) for f in ("epochs", "converge_loss", "max_grad_norm")}
        if compile_step is None:  # the default of a paper-protocol cell of this shape
            protocol = loop.LoopSettings.from_config(
                dataclasses.replace(cfg, epochs=PROTOCOL_EPOCHS, max_steps=0)
            )
            compile_step = loop.compiles(protocol, len(loader))
        self.compiled = compile_step

        def window() -> None:
            settings = loop.LoopSettings(
                max_steps=self.state.step + CHUNK,
                eval_every=0,
                checkpoint_every=0,
                log_every=10,
                progress=False,
                compile=compile_step,
                **fields,
            )
            loop.train(
                accelerator,
                model,
                optimizer,
                loader,
                self.state,
                settings,
                data.label_kind,
                readout,
                save=lambda: None,
            )

        self.window = window


class OfficialReference(nn.Module):
    """The official template-task transformer, written from its description (see the
    module docstring); ``kq`` / ``vo``: the identity terms a_h X Xᵀ and Σ_h b_h A_h X."""

    def __init__(self, vocab: int, context: int, dim: int, depth: int, kq=False, vo=False):
        super().__init__()
        self.heads, self.d_head = dim // 64, 64
        inner = self.heads * self.d_head
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(context, dim))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(dim),
                    "qk": nn.Linear(dim, 2 * inner, bias=False),
                    "v": nn.Linear(dim, inner, bias=False),
                    "out": nn.Linear(inner, dim, bias=False),
                    "ln2": nn.LayerNorm(dim),
                    "fc": nn.Linear(dim, 4 * dim),
                    "proj": nn.Linear(4 * dim, dim),
                }
            )
            block.a = nn.Parameter(torch.zeros(self.heads)) if kq else None
            block.b = nn.Parameter(torch.zeros(self.heads)) if vo else None
            self.blocks.append(block)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, 1)

    def attend(self, blk, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        split = lambda z: z.view(n, t, self.heads, self.d_head).transpose(1, 2)  # noqa: E731
        q, k = (split(z) for z in blk["qk"](x).chunk(2, dim=-1))
        v = split(blk["v"](x))
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.d_head**-0.5
        if blk.a is not None:
            dots = dots + blk.a.view(1, -1, 1, 1) * torch.matmul(x, x.transpose(-1, -2)).unsqueeze(
                1
            )
        att = dots.softmax(dim=-1)
        out = blk["out"](torch.matmul(att, v).transpose(1, 2).reshape(n, t, -1))
        if blk.b is not None:
            out = out + torch.matmul((att * blk.b.view(1, -1, 1, 1)).sum(1), x)
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for blk in self.blocks:
            x = x + self.attend(blk, blk["ln1"](x))
            x = x + blk["proj"](nn.functional.gelu(blk["fc"](blk["ln2"](x))))
        return self.head(self.norm(x[:, -1])).squeeze(-1)


class ReferenceSide:
    """The reference trained by a bare loop with fused Adam on probe's batches."""

    def __init__(self):
        from probe.train import loop

        cfg = config(tempfile.gettempdir(), 1)
        plan = plan_run(cfg)
        data = load_run_data(plan)
        rows = data.splits["train"]
        loader = loop.train_loader(loop.TensorRows(rows), BATCH, cfg.seed)
        self.batches = [(b["input_ids"], b["labels"].float()) for b in loader]
        torch.manual_seed(cfg.seed)
        model = OfficialReference(
            len(data.tokenizer), rows["input_ids"].shape[1], 128, 2, kq=cfg.kq, vo=cfg.vo
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        self.i = 0

        def window() -> None:
            model.train()
            for _ in range(CHUNK):
                ids, labels = self.batches[self.i % len(self.batches)]
                self.i += 1
                loss = (model(ids) - labels).square().mean()
                loss.backward()
                if not math.isfinite(loss.item()):
                    raise FloatingPointError("reference loss is not finite")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        self.window = window


def matmul_shape() -> tuple[int, int]:
    """(P, T): weights in the model's matmuls, and tokens per sample (padded length)."""
    cfg = config(tempfile.gettempdir(), 1)
    plan = plan_run(cfg)
    data = load_run_data(plan)
    model, _ = build_run_model(plan, data)
    weights = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    )
    return weights, data.splits["train"]["input_ids"].shape[1]


def trainer_rounds(steps: int, repeat: int) -> None:
    """Whole runs, alternated: probe's training loop against a ``transformers.Trainer``
    on the same model and split, CPU time of each training loop, best of ``repeat``."""
    from datasets import Dataset
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from probe.train import loop
    from probe.train.run import finetune

    def probe_run(out: str) -> float:
        original, spent = loop.train, []

        def timed(*a, **k):
            c = time.thread_time()
            try:
                return original(*a, **k)
            finally:
                spent.append(time.thread_time() - c)

        loop.train = timed
        try:
            finetune(config(out, steps))
        finally:
            loop.train = original
        return sum(spent)

    def trainer_run(out: str) -> float:
        cfg = config(out, steps)
        plan = plan_run(cfg)
        data = load_run_data(plan)
        torch.manual_seed(cfg.seed)
        model, _ = build_run_model(plan, data)
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
        trainer.remove_callback(PrinterCallback)
        c = time.thread_time()
        trainer.train()
        return time.thread_time() - c

    best = {"probe": float("inf"), "trainer": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            sides = [("probe", probe_run), ("trainer", trainer_run)][:: 1 if i % 2 == 0 else -1]
            for name, fn in sides:
                best[name] = min(best[name], fn(os.path.join(tmp, f"{name}-{i}")))
    for name, cpu in best.items():
        print(f"{name + ' runs:':14s} {steps * BATCH / cpu:6.0f} samples/cpu-s ({steps} steps)")
    print(f"probe/trainer (cpu time): {best['trainer'] / best['probe']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="alternated rounds timed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="paper", help="probe's side (the reference: paper)")
    parser.add_argument("--ab", default="none", help="inject a/b (e.g. kq,vo) on every side")
    parser.add_argument("--trainer", action="store_true", help="also probe/trainer (whole runs)")
    parser.add_argument("--steps", type=int, default=300, help="--trainer: steps per run")
    parser.add_argument("--repeat", type=int, default=3, help="--trainer: runs per side")
    parser.add_argument(
        "--pack", type=int, default=0, help="also pack<4*S>/lone, S seeds per variant"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    SETTINGS.update(ab=args.ab, model=args.model)
    probe = ProbeSide()
    sides = {"probe": probe, "official-fused": ReferenceSide(), "eager": ProbeSide(False)}
    cpu = dict.fromkeys(sides, float("inf"))
    wall = dict.fromkeys(sides, float("inf"))
    first = {}
    peak_cpu = peak_wall = 0.0
    names = list(sides)
    for r in range(args.windows + 1):  # round 0 warms up (and compiles)
        c, w = sgemm()
        peak_cpu, peak_wall = max(peak_cpu, c), max(peak_wall, w)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            c, w = cpu_and_wall(sides[name].window)
            if r == 0:
                first[name] = c
            else:
                cpu[name], wall[name] = min(cpu[name], c), min(wall[name], w)
    weights, tokens = matmul_shape()
    print(
        f"sgemm 512x512, {args.threads} thread(s): {peak_cpu / 1e9:.1f} GFLOP/cpu-s "
        f"({peak_wall / 1e9:.1f} GFLOP/wall-s); step matmuls: 6 x {weights} weights x "
        f"{tokens} tokens per sample; best of {args.windows} alternated rounds of "
        f"{CHUNK} steps, {args.model} ab={args.ab}; probe: compiled={probe.compiled} (the "
        f"default of a {PROTOCOL_EPOCHS}-epoch cell of n {N_TRAIN})"
    )
    for name in sides:
        rate = BATCH * CHUNK / cpu[name]
        print(
            f"{name + ':':16s} {1e3 * cpu[name] / CHUNK:.2f} ms cpu/step, {rate:.0f} "
            f"samples/cpu-s ({1e3 * wall[name] / CHUNK:.2f} ms wall/step)"
        )
    for name in (n for n in sides if n != "official-fused"):
        label = "" if name == "probe" else f" ({name})"
        rate = BATCH * CHUNK / cpu[name]
        print(
            f"fraction of matmul peak (cpu time){label}: {6 * weights * tokens * rate / peak_cpu:.2f}"
        )
        wrate = BATCH * CHUNK / wall[name]
        print(
            f"fraction of matmul peak (wall time){label}: {6 * weights * tokens * wrate / peak_wall:.2f}"
        )
    print(f"probe/official-fused: {cpu['official-fused'] / cpu['probe']:.2f}")
    print(f"probe/official-fused (wall): {wall['official-fused'] / wall['probe']:.2f}")
    print(f"eager/official-fused: {cpu['official-fused'] / cpu['eager']:.2f}")
    if probe.compiled:
        print(f"compiled/eager: {cpu['eager'] / cpu['probe']:.2f}")
        print(
            f"compile warm-up: {first['probe'] - cpu['probe']:.1f} cpu-s (first window over best)"
        )
    if args.trainer:
        trainer_rounds(args.steps, args.repeat)
    if args.pack:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from pack import VARIANTS, measure

        measure(len(VARIANTS) * args.pack, 128, steps=40, repeat=3, variants=VARIANTS)


if __name__ == "__main__":
    main()
