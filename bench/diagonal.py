"""How long ``attn_diagonal`` takes on a GPT-2-small shape (12 layers × 12 heads, 768 wide).

Random weights from ``GPT2Config()`` (the Hub is not needed). The target is at most 2 s
for the whole table on a 2-core CPU. Run: ``python bench/diagonal.py [--repeats N]
[--threads N]``.

The table is many small tensor operations, so torch's intra-op threads mostly
synchronize: on an idle 2-core machine 2 threads took 0.19 s, but with other jobs on the
cores the same run took 1.2-2.2 s while ``--threads 1`` (or ``OMP_NUM_THREADS=1``) stayed
at 0.3 s. Both settings are worth a look where the CPU is shared.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2Model

from probe.analysis.diagonal import attn_diagonal
from probe.models.identity import inject_ab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config()).eval()
    start = time.perf_counter()
    attn_diagonal(model)  # the first call pays one-off costs (kernel and eigensolver setup)
    print(f"attn_diagonal GPT-2 small, first call: {time.perf_counter() - start:.3f} s")
    for label, fold in (("plain", False), ("fold_layernorm", True)):
        _time(model, label, fold, args.repeats)
    # identity scalings: M + a·I from the d_head-sized eigenvalues (unfolded, or constant gains)
    inject_ab(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ab_scalings" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
    _time(model, "injected a, b", False, args.repeats)
    # folded non-constant norm gains with scalings: Γ(M + aI)Γ, full rank (eff copying is NaN)
    with torch.no_grad():
        for block in model.h:
            block.ln_1.weight.uniform_(0.5, 1.5, generator=gen)
    _time(model, "injected a, b + fold_layernorm (varied gains)", True, args.repeats)


def _time(model: torch.nn.Module, label: str, fold: bool, repeats: int) -> None:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        df = attn_diagonal(model, fold_layernorm=fold)
        times.append(time.perf_counter() - start)
    print(
        f"attn_diagonal GPT-2 small (12 x 12 heads, d_model 768), {label}: {len(df)} rows, "
        f"best {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s over {repeats} "
        f"run(s), torch threads {torch.get_num_threads()} (target <= 2 s)"
    )


if __name__ == "__main__":
    main()
