"""``probe data``: render template tasks to Hub-layout datasets (``render``, or a run's own
data with ``--from-run``), the whole catalogue (``export``), and lm-evaluation-harness
tasks over a rendered dataset (``lm-eval``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

NAME = "data"
HELP = "render template tasks to Hub-layout datasets"


def render_to_disk(
    task: str,
    out: str | os.PathLike,
    n_train: int,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
    config: str | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
) -> Path:
    """``probe data render``: check every argument, the destination and the push, then
    render and save (and push the folder to the dataset repository ``push_to_hub``).
    Returns the config folder."""
    from probe.checks import check_count
    from probe.data.hub import check_target, default_config, push_dataset, save_dataset
    from probe.data.render import render
    from probe.files import check_writable
    from probe.push import check_push
    from probe.tasks.catalogue import resolve_task

    if push_to_hub is not None:
        check_push(push_to_hub, "--push-to-hub")
    resolved, spec = resolve_task(task)
    n_val = 1000 if n_val is None else n_val
    n_test = 1000 if n_test is None else n_test
    check_count(n_train, "--n-train", low=1)
    check_count(n_val, "--n-val")
    check_count(n_test, "--n-test")
    check_count(seed, "--seed")
    config = check_target(out, config or default_config(resolved.name), overwrite)
    check_writable(Path(out), "--out")
    dsd = render(spec or resolved, n_train, n_val, n_test, tokenizer=tokenizer, seed=seed)
    folder = save_dataset(dsd, out, config, overwrite=overwrite)
    print(f"wrote {folder} ({', '.join(f'{s} {d.num_rows}' for s, d in dsd.items())})")
    if push_to_hub is not None:
        print(f"pushed {out} to {push_dataset(out, push_to_hub, config, flag='--push-to-hub')}")
    return folder


DEFAULT_EXPORT_DIR = Path("data/template-tasks")
EXPORT_SIZES = {"n_train": 2048, "n_val": 512, "n_test": 512}


def export_catalogue(
    out: str | os.PathLike = DEFAULT_EXPORT_DIR, overwrite: bool = False
) -> list[Path]:
    """``probe data export``: render every registered task (``probe.tasks.catalogue.list_tasks()``,
    with its default parameters, at ``EXPORT_SIZES``, seed 0) as the config of its
    name in the Hub-layout folder ``out``."""
    from probe.data.hub import check_target, default_config, save_dataset
    from probe.data.render import render
    from probe.files import check_writable
    from probe.tasks.catalogue import list_tasks

    names = list_tasks()
    configs = [check_target(out, default_config(name), overwrite) for name in names]
    check_writable(Path(out), "--out")
    folders = []
    for name, config in zip(names, configs, strict=True):
        dsd = render(name, seed=0, **EXPORT_SIZES)
        folders.append(save_dataset(dsd, out, config, overwrite=overwrite))
        print(f"wrote {folders[-1]}")
    return folders


def render_run_to_disk(
    run: str | os.PathLike,
    out: str | os.PathLike,
    config: str | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
) -> Path:
    """``probe data render --from-run RUN``: exactly the data the run in folder ``run``
    trained and was tested on (:func:`probe.train.setup.run_folder_dataset`), saved in Hub
    layout as config ``config`` (default: the task's name). Returns the config folder."""
    from probe.data.hub import check_target, default_config, push_dataset, save_dataset
    from probe.data.render import task_info
    from probe.files import check_writable
    from probe.push import check_push
    from probe.train.setup import run_folder_dataset

    if push_to_hub is not None:
        check_push(push_to_hub, "--push-to-hub")
    dsd = run_folder_dataset(run)  # a run's sizes: seconds
    config = check_target(out, config or default_config(task_info(dsd)["task"]["name"]), overwrite)
    check_writable(Path(out), "--out")
    folder = save_dataset(dsd, out, config, overwrite=overwrite)
    print(
        f"wrote {folder} (the data of run {run}: "
        f"{', '.join(f'{s} {d.num_rows}' for s, d in dsd.items())})"
    )
    if push_to_hub is not None:
        print(f"pushed {out} to {push_dataset(out, push_to_hub, config, flag='--push-to-hub')}")
    return folder


# `probe data render` options that a run fixes: refused next to --from-run
RUN_FIXED = ("task", "n_train", "n_val", "n_test", "seed", "tokenizer")


def run_render(args: argparse.Namespace) -> None:
    if args.from_run is not None:
        given = [f"--{k.replace('_', '-')}" for k in RUN_FIXED if getattr(args, k) is not None]
        if given:
            raise ValueError(
                f"--from-run renders the run's own task, sizes, seed and tokenizer; drop "
                f"{', '.join(given)}"
            )
        render_run_to_disk(
            args.from_run,
            args.out,
            config=args.config,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
        )
        return
    missing = [f"--{k.replace('_', '-')}" for k in ("task", "n_train") if getattr(args, k) is None]
    if missing:
        raise ValueError(f"pass {' and '.join(missing)} (or --from-run RUN: a run's own data)")
    render_to_disk(
        task=args.task,
        out=args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=0 if args.seed is None else args.seed,
        tokenizer=args.tokenizer,
        config=args.config,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
    )


def run_export(args: argparse.Namespace) -> None:
    export_catalogue(args.out, overwrite=args.overwrite)


def run_lm_eval(args: argparse.Namespace) -> None:
    from probe.data.lm_eval_task import export_lm_eval_task

    yaml_path = export_lm_eval_task(
        args.dataset,
        args.config,
        args.out,
        shots=args.shots,
        task_name=args.task_name,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {yaml_path}; run it with: lm_eval --model hf --model_args pretrained=MODEL "
        f"--include_path {yaml_path.parent} --tasks {yaml_path.stem}"
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    data = subparsers.add_parser(NAME, help=HELP, description=HELP[0].upper() + HELP[1:] + ".")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser(
        "render",
        help="render one task (or a run's own data, --from-run) to a Hub-layout folder",
        description="Render one task to a Hub-layout folder. The sizes set the vocabulary of "
        "probe's SymbolTokenizer (it grows with n-train + n-val + n-test): data for a trained "
        "model must be rendered as its run was, which --from-run RUN does.",
    )
    p.add_argument(
        "--task",
        default=None,
        help="a catalogue name (see `probe tasks`), with parameters as NAME:KEY=VALUE, e.g. "
        "majority_k:k=5 (required unless --from-run; default: none)",
    )
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="training samples (= train alphabet size; required unless --from-run; default: none)",
    )
    p.add_argument(
        "--n-val",
        type=int,
        default=None,
        help="validation samples (default: 1000; probe finetune's default is 256)",
    )
    p.add_argument(
        "--n-test", type=int, default=None, help="test samples, unseen symbols (default: 1000)"
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the draws (default: 0)")
    p.add_argument(
        "--from-run",
        default=None,
        metavar="RUN",
        help="render exactly the data of a probe finetune run (its --output-dir): its task, "
        "sizes, seed and tokenizer, the rows it trained and was tested on (default: none)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="a Hugging Face tokenizer id or folder (default: SymbolTokenizer)",
    )
    p.add_argument(
        "--config", default=None, help="config name inside the folder (default: the task name)"
    )
    p.add_argument("--out", required=True, help="output folder (Hub layout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing config")
    p.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO_ID",
        help="then upload the --out folder to this Hub dataset repository (needs a token: "
        "`hf auth login` or HF_TOKEN; default: none, nothing is pushed)",
    )
    p.set_defaults(run=run_render)
    p = data_sub.add_parser("export", help="render every registered task to data/template-tasks")
    p.add_argument(
        "--out",
        default=str(DEFAULT_EXPORT_DIR),
        help="output folder (Hub layout; default: %(default)s, the committed copy, which "
        "holds every task already: pass a new folder unless regenerating it)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the configs already in --out")
    p.set_defaults(run=run_export)
    from probe.data.lm_eval_task import ENCODING, INSTALL_HINT

    p = data_sub.add_parser(
        "lm-eval",
        help="write an lm-evaluation-harness task (YAML + data) over a Hub-layout dataset",
        description="Write an lm-evaluation-harness task over one config of a Hub-layout "
        "probe dataset: K solved rows drawn at random from the training split, one per line "
        "('INPUT -> ANSWER'), then the test row. Symbolic tasks are scored by exact match "
        "of the generated answer symbol; regression tasks as a two-way choice between "
        f"words ({ENCODING}), scored by acc. Needs lm-eval: {INSTALL_HINT}.",
    )
    p.add_argument(
        "--dataset", required=True, help="a folder written by probe data render, or its Hub id"
    )
    p.add_argument(
        "--config", default=None, help="config name in the dataset (default: its only one)"
    )
    p.add_argument("--out", required=True, help="output folder: the task's YAML and data")
    p.add_argument(
        "--shots",
        type=int,
        default=0,
        help="solved training rows shown before each test row (the YAML's num_fewshot; "
        "lm_eval --num_fewshot overrides it; default: %(default)s)",
    )
    p.add_argument(
        "--task-name", default=None, help="the lm-eval task name (default: probe_<config>)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the task in --out")
    p.set_defaults(run=run_lm_eval)
    return data
