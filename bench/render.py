"""How fast probe.render turns a template task into a complete DatasetDict.

Renders 1,000,000 `aba_vs_abb` training samples (validation and test 1,000 each)
into a DatasetDict with every column (input_ids, attention_mask, labels,
template, text) and prints `render: <N> samples/s` (target: >= 500,000 on 2
cores). For comparison, the same run measures a generator in the style of the
paper's code (a Python loop per sample, bare integer lists, no tokenizer, no
text), and rendering through a real byte-level BPE tokenizer (SmolLM2's).

The SymbolTokenizer over a million symbols is built once per alphabet and
timed on its own line: building it is a cost of the vocabulary, not of rendering.

    python bench/render.py [--n 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from probe.data.render import render  # noqa: E402
from probe.data.tokenizer import SymbolTokenizer  # noqa: E402


def paper_style(n: int, n_symbols: int, seed: int = 0) -> tuple[list[list[int]], list[float]]:
    """A Python loop per sample, as in the paper's generator: pick a template, draw
    distinct symbols, write the row of symbol indices (bare ints)."""
    rng = random.Random(seed)
    templates = [(0, 1, 0), (0, 1, 1)]
    labels = [1.0, -1.0]
    xs, ys = [], []
    for _ in range(n):
        t = rng.randrange(2)
        a = rng.randrange(n_symbols)
        b = rng.randrange(n_symbols - 1)
        b += b >= a  # distinct from a
        sym = (a, b)
        xs.append([sym[j] for j in templates[t]])
        ys.append(labels[t])
    return xs, ys


def best(fn, repeat: int) -> float:
    """The fastest of ``repeat`` runs, in seconds (the machine is shared)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="training samples")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-bpe", action="store_true", help="skip the SmolLM2 tokenizer")
    args = parser.parse_args()
    n, small = args.n, 1000
    print(f"aba_vs_abb: {n:,} train + {small:,} validation + {small:,} test samples")

    t = best(lambda: paper_style(n, n), args.repeat)
    print(f"paper-style Python loop (ints only, no text): {n / t:,.0f} samples/s")

    t0 = time.perf_counter()
    tok = SymbolTokenizer.build([], n + 2 * small)
    build = time.perf_counter() - t0
    print(
        f"SymbolTokenizer over {n + 2 * small:,} symbols: built in {build:.2f} s (once per alphabet)"
    )

    t = best(lambda: render("aba_vs_abb", n, small, small, tokenizer=tok), args.repeat)
    print(f"render: {n / t:,.0f} samples/s")
    t = best(lambda: render("aba_vs_abb", n, small, small), 1)
    print(f"render building its own tokenizer: {n / t:,.0f} samples/s ({t:.2f} s in all)")

    if args.skip_bpe:
        return
    from transformers import AutoTokenizer

    from probe.models.offline import smollm2_gguf

    p = smollm2_gguf()
    bpe = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    t0 = time.perf_counter()
    render("aba_vs_abb", small, small, small, train_symbols=small, tokenizer=bpe)
    scan = time.perf_counter() - t0
    print(f"SmolLM2 BPE: vocabulary scanned for single-token symbols in {scan:.2f} s (once)")
    t = best(
        lambda: render("aba_vs_abb", n, small, small, train_symbols=20_000, tokenizer=bpe),
        args.repeat,
    )
    print(f"render through SmolLM2's byte-level BPE (20,000 train symbols): {n / t:,.0f} samples/s")


if __name__ == "__main__":
    main()
