"""``probe demo``: render a catalogue task and show what the dataset holds.

A few samples per split (text, ids, label), the alphabet sizes, and the check
that matters for the science: train, validation and test symbols are disjoint,
so the test split measures generalization to symbols never seen in training.
"""

from __future__ import annotations

import argparse

import numpy as np

from probe.data import dataset_tokenizer, render, task_info


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="probe demo", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="aba_vs_abb", help="a catalogue task (see `probe tasks`)")
    p.add_argument("--n-train", type=int, default=1024, help="training samples (= train symbols)")
    p.add_argument("--n-test", type=int, default=256, help="validation and test samples each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=3, help="samples shown per split")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    dsd = render(args.task, args.n_train, args.n_test, args.n_test, seed=args.seed)
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
        for row in ds.select(range(min(args.show, ds.num_rows))):
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
