"""The plan of a sweep's cells: which cells a call runs (shards, ``--variants``, n),
each cell's checked run plan and config (:func:`cell_plans`), the cells' settings
hashes, what is left to run (:func:`pending_cells`, for ``--resume``), the cells
``--until-n-star`` skips, time estimates from earlier rows; :func:`plan_sweep`
works all of it out once, for ``--dry-run`` and the run alike."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.checks import did_you_mean
from probe.experiments.pool import OK, is_failed, parse_jobs, parse_pack
from probe.experiments.recipe import Cell, SweepConfig
from probe.jsonl import json_default, read_rows


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} is not i/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need N >= 1 and 0 <= i < N (shards count from 0)")
    return i, n


def results_path(out: str | os.PathLike, shard: tuple[int, int] | None) -> Path:
    """``out/results.jsonl``, or ``out/results-shard-i-of-N.jsonl`` for a shard."""
    name = "results.jsonl" if shard is None else f"results-shard-{shard[0]}-of-{shard[1]}.jsonl"
    return Path(out) / name


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short hash of what a cell computes, to catch a recipe (or a FinetuneConfig
    default) changed between runs."""
    from probe.train.config import hashed_settings

    text = json.dumps(hashed_settings(dict(settings)), sort_keys=True, default=json_default)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cell_plans(
    config: SweepConfig, cells: Iterable[Cell], work_dir: str | os.PathLike
) -> dict[tuple[str, int, int], Any]:
    """Each cell's :class:`probe.train.plan.RunPlan`, keyed by ``cell.key``, checked as
    ``probe finetune`` would check it before its first step (``FinetuneConfig`` itself,
    then :func:`probe.train.plan.check_environment`: the task and its parameters, the
    model name, ``ab`` on an MLP, trackers), except the cell's output folder. A
    variant's names are resolved once: its cells differ only in n, seed and folder. The
    first bad cell is a ``ValueError`` naming it."""
    from probe.train.config import FinetuneConfig
    from probe.train.plan import check_environment

    plans = {}
    planned: dict[str, Any] = {}
    for c in cells:
        kwargs = dict(config.cell_settings(c), output_dir=str(Path(work_dir) / c.dirname()))
        # A cell without a row never finished: start it over. One bar over cells,
        # not one per run.
        kwargs.update(overwrite=True, progress=False)
        try:
            cfg = FinetuneConfig(**kwargs)
            # n and seed change nothing check_environment judges: once per variant
            rest = {k: v for k, v in kwargs.items() if k not in ("n_train", "seed", "output_dir")}
            key = json.dumps(rest, sort_keys=True, default=repr)
            if key not in planned:
                planned[key] = check_environment(cfg, None)
        except (TypeError, ValueError, OSError) as e:
            raise ValueError(f"cell {c.key} of recipe {config.name!r}: {e}") from e
        plans[c.key] = planned[key].with_config(cfg)
    return plans


def cell_configs(
    config: SweepConfig, cells: Iterable[Cell], work_dir: str | os.PathLike
) -> dict[tuple[str, int, int], Any]:
    """Each cell's FinetuneConfig, keyed by ``cell.key``, checked as :func:`cell_plans`
    checks it."""
    return {k: plan.config for k, plan in cell_plans(config, cells, work_dir).items()}


def select_cells(
    config: SweepConfig,
    shard: tuple[int, int] | None = None,
    variants: Sequence[str] | None = None,
    ns: Sequence[int] | None = None,
) -> list[Cell]:
    """The grid's cells this run owns: only ``variants`` (names of the recipe's, in its
    order) and only sample sizes ``ns`` if given, then every N-th from i for ``shard``
    (i, N)."""
    cells = config.cells()
    if ns is not None:
        cells = [c for c in cells if c.n in set(ns)]
    if variants:
        unknown = [v for v in variants if v not in config.variants]
        if unknown:
            hints = "".join(did_you_mean(v, config.variants) for v in unknown)
            raise ValueError(
                f"--variants {','.join(unknown)}: not in recipe {config.name!r}.{hints} Its "
                f"variants: {', '.join(config.variants)}"
            )
        cells = [c for c in cells if c.variant in set(variants)]
    return cells if shard is None else cells[shard[0] :: shard[1]]


def cell_hashes(
    config: SweepConfig, mine: list[Cell], configs: Mapping[tuple, Any]
) -> dict[tuple, str]:
    """Each cell's settings hash, as its row records it: every field, defaults included,
    so a changed default also counts as a change; the model as the recipe names it, not
    as resolved on this machine."""
    return {
        c.key: settings_hash(
            {**dataclasses.asdict(configs[c.key]), "model": config.cell_settings(c).get("model")}
        )
        for c in mine
    }


# The fields every sweep row holds: what names its cell.
CELL_FIELDS = ("recipe", "variant", "n", "seed")


def pending_cells(
    config: SweepConfig,
    out: Path,
    mine: list[Cell],
    hashes: Mapping[tuple, str],
    *,
    resume: bool,
    retry_failed: bool = False,
) -> list[Cell]:
    """The cells of ``mine`` that still need a run, given the rows already in ``out``.

    Refuses done cells without ``resume``, and a done cell whose recorded settings hash
    differs from the recipe's now (it would be mixed with rows of other settings). A
    failed cell's row counts as done unless ``retry_failed``.
    """
    existing = sorted(out.glob("results*.jsonl")) if out.is_dir() else []
    done: dict[tuple, dict] = {}
    for row in read_rows(existing, required=CELL_FIELDS):
        if row.get("recipe") == config.name:
            done[(row["variant"], row["n"], row["seed"])] = row
    mine_done = [c for c in mine if c.key in done]
    if mine_done and not resume:
        raise FileExistsError(
            f"{out} already holds {len(mine_done)} of this run's {len(mine)} cells; pass "
            f"--resume to run only the missing ones, --out NEW_FOLDER to keep them apart, "
            f"or --overwrite to delete them and start over"
        )
    for c in mine_done:
        recorded = done[c.key].get("cell_hash")
        if recorded is not None and recorded != hashes[c.key]:
            raise ValueError(
                f"cell {c.key} in {out} was run with other settings than recipe "
                f"{config.name!r} now gives (hash {recorded} != {hashes[c.key]}); pass "
                f"--overwrite to start over, or --out to write elsewhere"
            )
    return [c for c in mine if c.key not in done or (retry_failed and is_failed(done[c.key]))]


def n_star_skips(config: SweepConfig, out: Path) -> dict[str, int]:
    """``--until-n-star``: per variant whose n* is settled by the rows in ``out``, the
    n that settled it (every larger n of that variant is skipped).

    A variant is settled once the mean of its metric over the recipe's seeds (every seed
    run and ``ok``) is at or below the recipe's threshold at two consecutive sample
    sizes of the grid: n* is the first of them, and the second confirms it."""
    import pandas as pd

    from probe.experiments.report import metric_of

    existing = sorted(out.glob("results*.jsonl")) if out.is_dir() else []
    rows = [r for r in read_rows(existing) if r.get("recipe") == config.name]
    if not rows:
        return {}
    metric = metric_of(pd.DataFrame(rows))
    values: dict[tuple[str, int], dict[int, float]] = {}
    for r in rows:
        ok = not is_failed(r) and r.get(metric) is not None
        values.setdefault((r["variant"], r["n"]), {})[r["seed"]] = r[metric] if ok else None
    settled = {}
    ns = sorted(config.n)
    for v in config.variants:
        below = []
        for n in ns:
            seen = values.get((v, n), {})
            full = all(seen.get(s) is not None for s in config.seeds)
            below.append(
                full and sum(seen[s] for s in config.seeds) / len(config.seeds) <= config.threshold
            )
        for i in range(len(ns) - 1):
            if below[i] and below[i + 1]:
                settled[v] = ns[i + 1]
                break
    return settled


def skipped_cells(
    config: SweepConfig, mine: Sequence[Cell], settled: Mapping[str, int]
) -> list[Cell]:
    """The cells of ``mine`` that ``--until-n-star`` skips: larger n than settled them."""
    return [c for c in mine if c.variant in settled and c.n > settled[c.variant]]


def finished_rows(folders: Iterable[Path]) -> list[dict]:
    """The finished rows (status ok) of ``folders``' results files."""
    rows: list[dict] = []
    for folder in folders:
        files = sorted(folder.glob("results*.jsonl")) if folder.is_dir() else []
        rows += [r for r in (read_rows(files) if files else []) if r.get("status", OK) == OK]
    return rows


def cell_estimates(rows: Iterable[dict]) -> dict[tuple[str, int], float]:
    """Mean ``wall_s`` per (variant, n) over finished ``rows`` (:func:`finished_rows`):
    what a cell of the same recipe took before (any seed)."""
    seconds: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if isinstance(row.get("wall_s"), (int, float)):
            seconds.setdefault((row["variant"], int(row["n"])), []).append(row["wall_s"])
    return {k: sum(v) / len(v) for k, v in seconds.items()}


@dataclass(frozen=True)
class StepCost:
    """A variant's cost from earlier rows, at its largest n run: seconds per training
    step and seconds outside training (set-up, evaluation) per cell."""

    per_step: float
    outside: float

    def seconds(self, steps: int) -> float:
        return self.outside + steps * self.per_step


def step_costs(rows: Iterable[dict]) -> dict[str | None, StepCost]:
    """Per variant, :class:`StepCost` from finished ``rows`` (:func:`finished_rows`) at
    the variant's largest n (the steps of a small n are cheaper: its batch is the whole
    set); under ``None``, the mean over variants, for a variant never run."""
    rows_at: dict[str, tuple[int, list[dict]]] = {}
    for row in rows:
        fields = (row.get(k) for k in ("wall_s", "train_s", "steps"))
        if not all(isinstance(x, (int, float)) and x > 0 for x in fields):
            continue
        n, at_n = rows_at.get(row["variant"], (-1, []))
        if int(row["n"]) > n:
            rows_at[row["variant"]] = (int(row["n"]), [row])
        elif int(row["n"]) == n:
            at_n.append(row)
    costs: dict[str | None, StepCost] = {
        variant: StepCost(
            sum(r["train_s"] / r["steps"] for r in at_n) / len(at_n),
            sum(max(r["wall_s"] - r["train_s"], 0.0) for r in at_n) / len(at_n),
        )
        for variant, (_, at_n) in rows_at.items()
    }
    if costs:
        costs[None] = StepCost(
            sum(c.per_step for c in costs.values()) / len(costs),
            sum(c.outside for c in costs.values()) / len(costs),
        )
    return costs


def estimate_cells(
    cells: Sequence[Cell], configs: Mapping[tuple, Any], folders: Sequence[Path]
) -> dict[tuple, tuple[float, str]]:
    """Seconds each of ``cells`` should take, with how that was estimated: the mean
    ``wall_s`` of the same (variant, n) in the rows of ``folders`` (:func:`cell_estimates`), else
    the cell's planned steps (``FinetuneConfig.planned_steps``) at its variant's
    seconds per step (:func:`step_costs`; "N steps at M ms"). Cells with neither are
    left out."""
    rows = finished_rows(folders)  # read once for both
    same = cell_estimates(rows)
    costs = step_costs(rows)
    out: dict[tuple, tuple[float, str]] = {}
    for c in cells:
        if (c.variant, c.n) in same:
            out[c.key] = (same[(c.variant, c.n)], "")
            continue
        cost = costs.get(c.variant) or costs.get(None)
        steps = configs[c.key].planned_steps if c.key in configs else None
        if cost is not None and steps:
            how = f"{steps:,} steps at {1e3 * cost.per_step:.0f} ms"
            out[c.key] = (cost.seconds(steps), how)
    return out


@dataclass(frozen=True)
class SweepPlan:
    """A sweep call worked out before its first cell: this call's cells, each one's
    checked run plan and config, their settings hashes, and the workers and packs."""

    config: SweepConfig
    grid: list[Cell]  # every cell of the recipe
    cells: list[Cell]  # this call's (shard, --variants, n)
    plans: dict[tuple[str, int, int], Any]  # cell.key -> probe.train.plan.RunPlan
    configs: dict[tuple[str, int, int], Any]  # cell.key -> FinetuneConfig
    hashes: dict[tuple[str, int, int], str]  # cell.key -> settings hash
    jobs: int
    pack: int


def plan_sweep(
    config: SweepConfig,
    out: Path,
    work_dir: Path,
    *,
    shard: tuple[int, int] | None = None,
    variants: Sequence[str] | None = None,
    ns: Sequence[int] | None = None,
    jobs: int = 1,
    pack: int = 1,
    check_work_dir: bool = True,
) -> SweepPlan:
    """Everything a sweep call checks before its first cell, once, for ``--dry-run``
    and the run alike: ``--jobs`` and ``--pack``, this call's cells
    (:func:`select_cells`), every cell's plan as ``probe finetune`` checks it
    (:func:`cell_plans`), their hashes, every pack (``probe.train.pack.check_packable``)
    and the ``--out`` and ``--work-dir`` folders."""
    from probe.files import check_folder

    jobs, pack = parse_jobs(jobs), parse_pack(pack)
    mine = select_cells(config, shard, variants, ns)
    plans = cell_plans(config, mine, work_dir)
    configs = {k: plan.config for k, plan in plans.items()}
    hashes = cell_hashes(config, mine, configs)
    if pack > 1:
        from probe.train.pack import check_packable

        check_packable(list(plans.values()))
    check_folder(out, "--out")
    if check_work_dir:
        check_folder(work_dir, "--work-dir")
    return SweepPlan(config, config.cells(), mine, plans, configs, hashes, jobs, pack)
