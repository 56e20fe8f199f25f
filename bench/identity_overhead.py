"""Training-step cost of the identity scalings: GPT-2 eager vs sdpa vs injected (kq + vo).

One training step = forward, backward and an AdamW step on a GPT-2 configuration of
4 layers, width 256, 8 heads, sequence 16, batch 64 (a vocabulary of 64 symbols,
as in the template tasks). The three models are stepped in turn, so slow phases of a
shared machine hit all of them alike, and each reports the median of its step times.
On CPU it runs single-threaded by default: on a shared machine, thread contention
swamps the differences being measured.

    python bench/identity_overhead.py [--steps 40] [--warmup 5] [--device cpu] [--threads 1]

Prints one line per model and the lines ``injected/eager: <ratio>`` and
``injected/sdpa: <ratio>`` (ratios of the medians; target: injected/eager <= 1.15),
then the same ratios as medians of the per-round ratios, which cancel slow phases
of the machine better.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from probe.models.identity import inject_ab

SHAPE = {"n_layer": 4, "n_embd": 256, "n_head": 8, "seq": 16, "batch": 64, "vocab": 64}


def make(variant: str, device: str) -> tuple[GPT2LMHeadModel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=SHAPE["n_layer"],
        n_embd=SHAPE["n_embd"],
        n_head=SHAPE["n_head"],
        n_positions=SHAPE["seq"],
        vocab_size=SHAPE["vocab"],
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa" if variant == "sdpa" else "eager",
    )
    model = GPT2LMHeadModel(config).to(device).train()
    if variant == "injected":
        inject_ab(model, kq=True, vo=True)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def step(model, optimizer, ids: torch.Tensor) -> None:
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = ("eager", "sdpa", "injected")
    models = {v: make(v, args.device) for v in variants}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, SHAPE["vocab"], (SHAPE["batch"], SHAPE["seq"]), generator=g)
    ids = ids.to(args.device)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(args.warmup + args.steps):
        for v in variants:  # interleaved: machine noise falls on all three alike
            sync(args.device)
            start = time.perf_counter()
            step(*models[v], ids)
            sync(args.device)
            if i >= args.warmup:
                times[v].append(time.perf_counter() - start)

    median = {v: statistics.median(times[v]) for v in variants}
    print(
        f"GPT-2 {SHAPE['n_layer']} layers x {SHAPE['n_embd']} wide, {SHAPE['n_head']} heads, "
        f"seq {SHAPE['seq']}, batch {SHAPE['batch']}; device {args.device}, "
        f"torch threads {torch.get_num_threads()}; median of {args.steps} steps"
    )
    for v in variants:
        print(f"{v:>9}: {1e3 * median[v]:8.2f} ms/step")
    print(f"injected/eager: {median['injected'] / median['eager']:.3f}")
    print(f"injected/sdpa: {median['injected'] / median['sdpa']:.3f}")
    for base in ("eager", "sdpa"):
        paired = statistics.median(
            [i / b for i, b in zip(times["injected"], times[base], strict=True)]
        )
        print(f"paired injected/{base}: {paired:.3f}")


if __name__ == "__main__":
    main()
