"""``probe demo`` (``make demo``): the dataset, then the quickstart.

First what a rendered template task holds: a few samples per split (text, ids,
label), the alphabet sizes, and the check that matters for the science: train,
validation and test symbols are disjoint, so the test split measures
generalization to symbols never seen in training. Then the quickstart
(``probe.quickstart``): a small transformer trained with and without the KQ
identity, and its test loss on those unseen symbols.

    probe demo                          # both
    probe demo --summary-only           # the dataset only
    probe demo --n 32 128 --seed 1      # quickstart options pass through
"""

from __future__ import annotations

import argparse

import numpy as np

from probe.data import dataset_tokenizer, render, task_info

SUMMARY_N_TRAIN = 1024  # samples (= symbols) of the summary's training split
SUMMARY_N_TEST = 256  # samples of its validation and test splits each


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more samples")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probe demo", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="aba_vs_abb", help="a catalogue task (see `probe tasks`)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the runs")
    p.add_argument("--show", type=_non_negative, default=3, help="samples shown per split")
    p.add_argument(
        "--summary-only", action="store_true", help="show the dataset, skip the training"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    # options the summary does not know go to the quickstart
    args, rest = _parser().parse_known_args(argv)
    summarize(args.task, SUMMARY_N_TRAIN, SUMMARY_N_TEST, args.seed, args.show)
    if not args.summary_only:
        from probe.quickstart import main as quickstart

        print()
        quickstart([*rest, "--seed", str(args.seed)])


def summarize(task: str, n_train: int, n_test: int, seed: int, show: int) -> None:
    """Print a rendered task's templates, a few samples per split and the disjointness check."""
    dsd = render(task, n_train, n_test, n_test, seed=seed)
    info = task_info(dsd)
    tok = dataset_tokenizer(dsd)
    task = info["task"]
    print(f"task {task['name']} ({info['label_kind']} labels), seed {info['seed']}")
    for i, (t, y) in enumerate(zip(task["templates"], task["labels"], strict=True)):
        print(f"  template {i}: {t:<28} -> {y}")
    print(f"tokenizer {info['tokenizer']}: {len(tok)} ids, readout token {info['readout_token']}")

    # symbols are the real tokens that are neither regular tokens nor the readout
    not_symbols = [
        info["readout_token_id"],
        *(i for r in info["regular_token_ids"].values() for i in r),
    ]
    symbol_sets = {}
    for split, ds in dsd.items():
        alphabet = info["alphabets"][split]
        ids = np.asarray(ds["input_ids"])
        real = np.asarray(ds["attention_mask"]).astype(bool)
        used = np.unique(ids[real & ~np.isin(ids, not_symbols)])
        symbol_sets[split] = set(used.tolist())
        print(
            f"\n{split}: {ds.num_rows} samples over an alphabet of {alphabet['size']} symbols "
            f"({len(used)} used)"
        )
        for row in ds.select(range(min(show, ds.num_rows))):
            label = row["labels"]
            if info["label_kind"] == "symbolic":
                label = tok.convert_ids_to_tokens(label)
            print(f"  {row['text']:<36} -> {label}   ids {row['input_ids']}")

    pairs = [("train", "validation"), ("train", "test"), ("validation", "test")]
    shared = {f"{a}/{b}": len(symbol_sets[a] & symbol_sets[b]) for a, b in pairs}
    ok = not any(shared.values())
    print(
        "\ndisjoint alphabets: "
        + ", ".join(f"{k} share {v}" for k, v in shared.items())
        + (" -> OK: the test uses only unseen symbols" if ok else " -> FAILED")
    )
    if not ok:
        raise SystemExit(1)
