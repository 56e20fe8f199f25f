"""How long ``attn_diagonal`` takes on a GPT-2-small shape (12 layers × 12 heads, 768 wide).

Random weights from ``GPT2Config()`` (the Hub is not needed). The target is at most 2 s
for the whole table on a 2-core CPU. Run: ``python bench/diagonal.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2Model

from probe.diagonal import attn_diagonal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config()).eval()
    start = time.perf_counter()
    attn_diagonal(model)  # the first call pays one-off costs (kernel and eigensolver setup)
    print(f"attn_diagonal GPT-2 small, first call: {time.perf_counter() - start:.3f} s")
    for fold in (False, True):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            df = attn_diagonal(model, fold_layernorm=fold)
            times.append(time.perf_counter() - start)
        print(
            f"attn_diagonal GPT-2 small (12 x 12 heads, d_model 768, fold_layernorm={fold}): "
            f"{len(df)} rows, best {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s "
            f"over {args.repeats} runs, torch threads {torch.get_num_threads()} (target <= 2 s)"
        )


if __name__ == "__main__":
    main()
