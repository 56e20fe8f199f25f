"""Rerun one cell of each `-dirty` group of committed rows at the commit the rows name,
and say whether its metrics are bit-identical to the committed row (issue 20, point 5).

A row's ``code`` field reads ``0.x.y+<commit>`` or ``0.x.y+<commit>-dirty``: before
commit 2a00520 the sweep wrote ``-dirty`` for any uncommitted tracked file in the
checkout (a results file being written, a NOTES edit), so ``-dirty`` alone does not say
whether probe/ itself differed from the commit. Rerunning a cell with the named
commit's own code answers it for that cell.

A group is one results folder x one ``code`` value x one variant; for each, the
cheapest cell (smallest n, then the smallest recorded ``wall_s``; a packed row only if
there is no other) is rerun in a detached worktree of the commit
(``git worktree add --detach /tmp/verify-<commit> <commit>``, removed afterwards),
in a fresh process with ``PYTHONPATH`` set to that worktree, one thread:

1. the cell's FinetuneConfig is built as the sweep built it, by the commit's own
   ``cell_configs`` from the commit's own recipe (``recipes/[paper/]<recipe>.yaml``);
   if the cell is not in that recipe (the recipe was edited in the dirty checkout),
   from the row's saved ``config`` with the commit's ``FinetuneConfig``;
2. its settings hash (the commit's ``settings_hash``) is compared with the row's
   ``cell_hash``: equal means the rerun trains exactly the committed cell's settings;
3. the commit's ``finetune`` runs it into a temporary folder, and test_loss,
   test_error, val_loss, val_error, train_loss and steps are compared exactly
   (``==`` on the floats as JSON gives them back).

A control: one clean row (no ``-dirty``) of the same era, rerun the same way, tells
whether a mismatch would come from the code or from this machine's torch.

    python results/verify_dirty.py --dry-run        # the groups and the cells it would run
    python results/verify_dirty.py                  # run them; prints the markdown table
    python results/verify_dirty.py --only paper/copy --json out.jsonl

Run from the repository root, with the venv's python; it sets HF_HUB_OFFLINE=1 and
OMP_NUM_THREADS=1 for the reruns.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("test_loss", "test_error", "val_loss", "val_error", "train_loss", "steps")

# One clean row per era as a control (folder, variant, n, seed): its code has no -dirty.
CONTROLS = [("paper/copy", "none_w64", 8, 2)]

CHILD = r"""
import dataclasses, json, sys
args = json.loads(sys.argv[1])
import probe
assert probe.__file__.startswith(args["tree"]), probe.__file__
try:
    from probe.experiments import sweep as S
except ImportError:
    from probe import sweep as S
try:  # the recipe and the plan of cells apart from the sweep
    from probe.experiments import cells as C
except ImportError:
    C = S
try:
    from probe.train.run import finetune
except ImportError:
    from probe.finetune import finetune
try:
    from probe.train.config import FinetuneConfig
except ImportError:
    from probe.config import FinetuneConfig
key = (args["variant"], args["n"], args["seed"])
cfg, how, model = None, None, None
try:
    sc = S.SweepConfig.from_yaml(args["recipe_path"])
    cells = [c for c in sc.cells() if c.key == key]
    if sc.name == args["recipe"] and cells:
        cfg = C.cell_configs(sc, cells, args["work"])[key]
        model = sc.cell_settings(cells[0]).get("model")
        how = "recipe"
except Exception as e:  # the recipe at the commit may not parse or hold the cell
    how = f"recipe failed: {type(e).__name__}"
if cfg is None:
    d = dict(args["config"], output_dir=args["work"] + "/cell", overwrite=True, progress=False)
    cfg = FinetuneConfig(**d)
    model = args["model"]
    how = "row config" + (f" ({how})" if how else "")
h = C.settings_hash({**dataclasses.asdict(cfg), "model": model})
res = dict(finetune(cfg))
out = {k: res.get(k) for k in @METRICS@}
print("@@RESULT@@" + json.dumps({"how": how, "cell_hash": h, "metrics": out, "wall_s": res.get("wall_s")}))
""".replace("@METRICS@", repr(METRICS))


def commit_of(code: str) -> str:
    return code.split("+", 1)[1].removesuffix("-dirty")


def load_rows() -> list[tuple[str, dict]]:
    rows = []
    for f in sorted((ROOT / "results").rglob("results*.jsonl")):
        folder = str(f.parent.relative_to(ROOT / "results"))
        for line in f.read_text().splitlines():
            if line.strip():
                rows.append((folder, json.loads(line)))
    return rows


def groups(rows) -> dict[tuple[str, str, str], list[dict]]:
    g = collections.defaultdict(list)
    for folder, r in rows:
        if str(r.get("code", "")).endswith("-dirty"):
            g[(folder, r["code"], r["variant"])].append(r)
    return dict(sorted(g.items()))


def cheapest(rs: list[dict]) -> dict:
    return min(rs, key=lambda r: (bool(r.get("packed")), r["n"], r.get("wall_s") or 0))


def recipe_path(tree: Path, folder: str, recipe: str) -> Path:
    sub = folder.split("/")[:-1]  # results/paper/<name> -> recipes/paper/<recipe>.yaml
    return tree.joinpath("recipes", *sub, f"{recipe}.yaml")


def worktree(commit: str) -> Path:
    path = Path(f"/tmp/verify-{commit}")
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
            check=True,
            capture_output=True,
        )
    return path


def rerun(folder: str, row: dict) -> dict:
    commit = commit_of(row["code"])
    tree = worktree(commit)
    work = tempfile.mkdtemp(prefix="verify-cell-")
    args = {
        "tree": str(tree),
        "variant": row["variant"],
        "n": row["n"],
        "seed": row["seed"],
        "recipe": row["recipe"],
        "recipe_path": str(recipe_path(tree, folder, row["recipe"])),
        "work": work,
        "config": row["config"],
        "model": row.get("model"),
    }
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    p = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(work, ignore_errors=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("@@RESULT@@")]
    if p.returncode or not line:
        return {"error": (p.stderr or p.stdout)[-2000:]}
    got = json.loads(line[-1].removeprefix("@@RESULT@@"))
    same = {k: got["metrics"][k] == row.get(k) for k in METRICS if k in row}
    return {
        **got,
        "hash_ok": got["cell_hash"] == row.get("cell_hash"),
        "same": same,
        "identical": all(same.values()),
    }


def fmt(x) -> str:
    return "—" if x is None else (repr(x) if isinstance(x, float) else str(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="list the groups and cells only")
    ap.add_argument("--only", default=None, help="only folders starting with this")
    ap.add_argument("--skip", default=None, help="leave out folders starting with this")
    ap.add_argument("--control-only", action="store_true", help="only the clean control cell")
    ap.add_argument("--no-control", action="store_true", help="skip the clean control cell")
    ap.add_argument("--json", default=None, help="append each result as a JSON line here")
    ap.add_argument("--keep-worktrees", action="store_true")
    a = ap.parse_args()

    rows = load_rows()
    todo = [(k, len(rs), cheapest(rs)) for k, rs in groups(rows).items()]
    if not a.no_control:
        for folder, variant, n, seed in CONTROLS:
            r = next(
                r
                for f, r in rows
                if f == folder and (r["variant"], r["n"], r["seed"]) == (variant, n, seed)
            )
            todo.append(((folder, r["code"], variant), 0, r))
    if a.only:
        todo = [t for t in todo if t[0][0].startswith(a.only)]
    if a.skip:
        todo = [t for t in todo if not t[0][0].startswith(a.skip)]
    if a.control_only:
        todo = [t for t in todo if t[1] == 0]
    print(
        f"{len(todo)} cells, ≈ {sum(r.get('wall_s') or 0 for *_, r in todo) / 60:.1f} min recorded",
        file=sys.stderr,
    )
    print(
        "| folder | code | variant | rows | cell rerun (n, seed) | committed test_loss / test_error "
        "| rerun test_loss / test_error | settings hash | identical? |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    used = set()
    try:
        for (folder, code, variant), count, r in todo:
            cell = f"n {r['n']}, seed {r['seed']}"
            if a.dry_run:
                print(
                    f"| {folder} | {code} | {variant} | {count or 'control'} | {cell} "
                    f"({r.get('wall_s')} s) | | | | |"
                )
                continue
            used.add(commit_of(code))
            res = rerun(folder, r)
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(
                        json.dumps(
                            {
                                "folder": folder,
                                "code": code,
                                "variant": variant,
                                "rows": count,
                                "n": r["n"],
                                "seed": r["seed"],
                                "committed": {k: r.get(k) for k in METRICS},
                                **res,
                            }
                        )
                        + "\n"
                    )
            if "error" in res:
                print(
                    f"| {folder} | {code} | {variant} | {count or 'control'} | {cell} | "
                    f"{fmt(r['test_loss'])} / {fmt(r.get('test_error'))} | error | | no |"
                )
                print(res["error"], file=sys.stderr)
                continue
            m = res["metrics"]
            diff = [k for k, ok in res["same"].items() if not ok]
            verdict = "**yes**" if res["identical"] else f"**no** ({', '.join(diff)} differ)"
            print(
                f"| {folder} | `{code}` | `{variant}` | {count or 'control (clean)'} | {cell} | "
                f"{fmt(r['test_loss'])} / {fmt(r.get('test_error'))} | "
                f"{fmt(m['test_loss'])} / {fmt(m.get('test_error'))} | "
                f"{'same' if res['hash_ok'] else 'differs'} ({res['how']}) | {verdict} |",
                flush=True,
            )
    finally:
        if not a.keep_worktrees:
            for c in used:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", f"/tmp/verify-{c}"],
                    capture_output=True,
                )


if __name__ == "__main__":
    main()
