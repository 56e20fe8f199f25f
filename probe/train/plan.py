"""A run's plan: every name its config holds, resolved and judged once.

:func:`check_environment` judges everything that can be judged cheaply (the task
or dataset, the tokenizer, the model name, ``--ab``, trackers, the output
folder), so a bad run fails before any model or data work, and returns the
run's :class:`RunPlan`. ``probe.train.setup`` builds the run's pieces from the
plan; the packed path (``probe.train.pack``) and a sweep's preflight
(``probe.experiments.sweep.cell_plans``) read it too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.locate import looks_like_path
from probe.models.architectures import ARCHITECTURES, ArchSpec
from probe.models.paper import PAPER
from probe.models.resolve import MLP_MODEL_TYPE, ModelRef
from probe.push import check_push
from probe.train.config import AB, FinetuneConfig
from probe.train.run_dir import RunDir


@dataclass(frozen=True)
class RunPlan:
    """A run worked out once, before any model or data work: what its names resolve to.

    :func:`plan_run` makes it (every name resolved and judged once);
    :func:`load_run_data`, :func:`build_run_model`, :func:`describe_model`, the packed
    path (``probe.train.pack``) and a sweep's preflight read it instead of resolving
    the config's names again.
    """

    config: FinetuneConfig
    task: Any  # the TemplateTask (``--task``), or None for a --dataset (its card's, on load)
    model: ModelRef  # what --model names (probe.models.resolve.resolve_model)
    model_type: str  # an ARCHITECTURES key, or "mlp"
    architecture: ArchSpec | None  # its ARCHITECTURES row (None for an MLP baseline)
    label_kind: str | None  # the task's, or the loaded --dataset's (None: a Hub dataset)
    tokenizer: str | None  # what --task is rendered with (None: probe's SymbolTokenizer)
    tokenizer_gguf: str | None  # a GGUF file inside ``tokenizer`` (the model's own)
    dataset: Any  # a local --dataset, loaded once (a DatasetDict); None otherwise
    ab: AB  # the identity terms (``--ab``)

    def with_config(self, config: FinetuneConfig) -> RunPlan:
        """The same plan for a config that differs only in what resolves nothing (seed,
        sizes, output folder, the a/b terms of a model that has heads): a sweep's cells
        of one variant share one plan."""
        return dataclasses.replace(self, config=config, ab=config.identity)


def _resolve(config: FinetuneConfig) -> ModelRef:
    """What ``config.model`` names, found without building anything; a clear
    ``--model`` error otherwise."""
    from probe.models.resolve import accepted_names, resolve_model

    try:
        ref = resolve_model(config.model, config.gguf_file, pretrained=config.pretrained)
        ref.model_type()  # a checkpoint's config is read (and the Hub asked) here, once
        return ref
    except FileNotFoundError as err:
        if config.model.endswith(".gguf"):
            raise FileNotFoundError(f"--model {config.model!r}: no such GGUF file") from None
        raise ValueError(
            f"--model {config.model!r}: no such folder; --model accepts {accepted_names()}"
        ) from err
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--model {config.model!r} cannot be loaded ({err}); --model accepts {accepted_names()}"
        ) from err


def model_type(config: FinetuneConfig) -> str:
    """The architecture ``config.model`` names (an ``ARCHITECTURES`` key, or ``mlp``),
    found without building anything; a clear ``--model`` error otherwise."""
    return _resolve(config).model_type()


def check_task(config: FinetuneConfig):
    """The catalogue task ``--task`` names, with its parameters (None with ``--dataset``)."""
    from probe.tasks.catalogue import get_task

    if config.task is None:
        return None
    if ":" in config.task:  # the spec form, majority_k:k=5
        from probe.tasks.catalogue import resolve_task

        if config.task_params:
            raise ValueError(
                f"--task {config.task!r} carries its parameters already; drop --task-param"
            )
        return resolve_task(config.task)[0]
    return get_task(config.task, **config.task_params)


def plan_run(config: FinetuneConfig) -> RunPlan:
    """Resolve and judge the config's task (or dataset), tokenizer, model and ``--ab``
    once: a :class:`RunPlan`. Raises before any model or data work (a local
    ``--dataset`` is loaded here, once, and kept in the plan)."""
    task = check_task(config)
    dataset = None
    if task is None:
        path = Path(config.dataset).expanduser()
        if (looks_like_path(config.dataset) or path.exists()) and not path.is_dir():
            raise FileNotFoundError(f"--dataset {config.dataset!r}: no such folder")
        if path.is_dir():  # a local dataset is cheap to check now, before the folder changes
            dataset = check_dataset(config)
    if config.tokenizer is not None:
        _check_local("--tokenizer", config.tokenizer)
    ref = _resolve(config)
    kind = ref.model_type()
    ab = config.identity
    if ab.rotated and kind != MLP_MODEL_TYPE and not ARCHITECTURES[kind].rotary:
        rope = ", ".join(k for k, v in ARCHITECTURES.items() if v.rotary)
        raise ValueError(
            f"--ab {config.ab}: kq_rot rotates X by the model's rotary embedding, but "
            f"{config.model!r} ({kind}) has none; use --ab kq (RoPE models: {rope})"
        )
    if config.model == PAPER and config.pretrained:
        raise ValueError(
            "--model paper is built from its configuration (probe.models.paper) and has no "
            "checkpoint to load; drop --pretrained"
        )
    if kind == MLP_MODEL_TYPE:
        if ab:
            raise ValueError(
                f"--ab {config.ab} injects identity scalings into attention heads; the MLP "
                f"baseline {config.model!r} has none (mlp_xxt sees the X Xᵀ features instead)"
            )
        if config.lora_r:
            raise ValueError(
                f"--lora-r {config.lora_r}: LoRA adapts pretrained transformers; train the MLP "
                f"baseline {config.model!r} in full (drop --lora-r)"
            )
        if config.n_head is not None:
            raise ValueError("--n-head: the MLP baselines have no attention heads")
    elif config.lora_r and not config.pretrained:
        raise ValueError(
            f"--lora-r {config.lora_r}: LoRA adapts pretrained weights, but --model "
            f"{config.model} is built from scratch (fresh random weights, the default); pass "
            f"--pretrained to adapt the checkpoint, or drop --lora-r to train it in full"
        )
    if config.tokenizer is not None:
        tokenizer, tokenizer_gguf = config.tokenizer, None
    elif config.pretrained:  # the model's own
        tokenizer, tokenizer_gguf = ref.source, ref.gguf_file
    else:
        tokenizer = tokenizer_gguf = None
    if task is not None:
        label_kind = task.label_kind
    elif dataset is not None:
        from probe.data.render import task_info

        label_kind = task_info(dataset).get("label_kind")
    else:
        label_kind = None
    return RunPlan(
        config=config,
        task=task,
        model=ref,
        model_type=kind,
        architecture=ARCHITECTURES.get(kind),
        label_kind=label_kind,
        tokenizer=tokenizer,
        tokenizer_gguf=tokenizer_gguf,
        dataset=dataset,
        ab=ab,
    )


def check_environment(config: FinetuneConfig, run_dir: RunDir | None) -> RunPlan:
    """Judge the task, model, options and output folder; returns the run's
    :class:`RunPlan`. Raises before any model or data work. With ``run_dir=None`` the
    folder is not judged (a sweep checks every cell's settings before the first cell
    runs, while its folders do not exist yet)."""
    plan = plan_run(config)
    check_outputs(config, run_dir)
    return plan


def check_outputs(config: FinetuneConfig, run_dir: RunDir | None) -> None:
    """What a run writes to: its trackers, its ``--push-to-hub`` repository and its
    folder (``run_dir``; None: not judged)."""
    _check_trackers(config.trackers)
    if config.push_to_hub is not None:
        check_push(config.push_to_hub, "--push-to-hub")
    if run_dir is not None:
        run_dir.check(config)


RUN_SPLITS = ("train", "validation", "test")


def check_dataset(config: FinetuneConfig):
    """The ``--dataset`` as a run reads it: its splits, each with the columns training
    reads (``probe.data.hub.load_dataset`` refuses a split without them)."""
    from probe.data import hub

    dsd = hub.load_dataset(config.dataset, config.dataset_config)
    missing = [s for s in RUN_SPLITS if s not in dsd]
    if missing:
        raise ValueError(
            f"--dataset {config.dataset}: no {missing[0]!r} split (it has {', '.join(dsd)}); "
            f"a run reads {', '.join(RUN_SPLITS)}: render it with probe data render"
        )
    return dsd


def _check_local(flag: str, name: str) -> None:
    """A name written as a path (./x, /x, ~/x) must exist: it is no Hub id."""
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"{flag} {name!r}: no such folder")


def _check_trackers(trackers: list[str]) -> None:
    if not trackers:
        return
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType if t.value != "all"]
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in trackers:
        if name not in known:
            raise ValueError(
                f"--log-with {name!r} is not an accelerate tracker; known: {', '.join(known)}"
            )
        if name not in available:
            raise ValueError(
                f"--log-with {name}: the {name} package is not installed "
                f"(pip install {name}); installed trackers: {', '.join(sorted(available)) or 'none'}"
            )
