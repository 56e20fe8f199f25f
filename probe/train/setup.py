"""What a finetune run sets up before its loop: its plan, data, model, optimizer.

``check_environment`` judges everything that can be judged cheaply (the task,
the model name, trackers, the output folder) so a bad run fails before any
model or data work, and returns the run's :class:`RunPlan`: every name the
config holds resolved once. The rest builds the run's pieces from the plan.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from probe.locate import looks_like_path
from probe.models.architectures import ARCHITECTURES, ArchSpec, arch_spec
from probe.models.mlp import mlp_shape
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
        from probe.data.render import resolve_task

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


# -- data ---------------------------------------------------------------------------


@dataclass
class RunData:
    """A run's splits as tensors, with the task and tokenizer they came from."""

    task: Any  # TemplateTask
    tokenizer: Any
    label_kind: str
    splits: dict[str, dict[str, torch.Tensor]]  # split -> input_ids, attention_mask, labels


def _tensors(split, label_kind: str) -> dict[str, torch.Tensor]:
    cols = split.with_format("torch", columns=["input_ids", "attention_mask", "labels"])[:]
    labels = cols["labels"]
    return {
        "input_ids": cols["input_ids"].long(),
        "attention_mask": cols["attention_mask"].long(),
        "labels": labels.float() if label_kind == "regression" else labels.long(),
    }


def _first(split, n: int | None, what: str):
    if n is None:
        return split
    if n > len(split):
        raise ValueError(f"--{what} {n} exceeds the dataset's {len(split)} rows; pass at most that")
    return split.select(range(n))


def _render_tokenizer(plan: RunPlan):
    """The tokenizer to render --task with: --tokenizer, the model's own when pretrained,
    else None (probe's SymbolTokenizer)."""
    from probe.data.tokenizer import load_tokenizer_by_name

    if plan.tokenizer is None:
        return None
    return load_tokenizer_by_name(plan.tokenizer, gguf_file=plan.tokenizer_gguf)


def run_dataset(plan: RunPlan | FinetuneConfig):
    """The run's ``DatasetDict``: the task rendered with the run's sizes, tokenizer and
    seed (the same rows every time), or the first rows of ``--dataset``. Takes the
    run's plan (a config is planned first)."""
    from datasets import DatasetDict

    from probe.data import render as probe_data

    if isinstance(plan, FinetuneConfig):
        plan = plan_run(plan)
    config = plan.config
    if plan.task is not None:
        return probe_data.render(
            plan.task,
            n_train=config.n_train,
            n_val=config.n_val,
            n_test=config.n_test,
            tokenizer=_render_tokenizer(plan),
            seed=config.seed,
        )
    # the plan's copy stays whole: the run takes its first rows into a new dict
    dsd = DatasetDict(plan.dataset if plan.dataset is not None else check_dataset(config))
    dsd["train"] = _first(dsd["train"], config.n_train, "n-train")
    dsd["validation"] = _first(dsd["validation"], config.n_val, "n-val")
    dsd["test"] = _first(dsd["test"], config.n_test, "n-test")
    return dsd


def run_folder_dataset(folder: str | os.PathLike):
    """Exactly the data the run in ``folder`` (its ``--output-dir``, or the ``model/`` in
    it) trained and was tested on: :func:`run_dataset` of its saved config (same task,
    sizes, tokenizer and seed: the same rows). ``probe data render --from-run``,
    ``probe attention --model RUN`` and ``probe.run_folder_dataset`` all come here."""
    from probe.train.run_dir import CONFIG_FILE

    run = RunDir.find(folder)
    if run is None:
        raise FileNotFoundError(
            f"{str(folder)!r} is no run folder (it holds no {CONFIG_FILE}); pass the "
            "--output-dir of a probe finetune run"
        )
    return run_dataset(plan_run(run.finetune_config()))


def load_run_data(plan: RunPlan) -> RunData:
    """The run's data (:func:`run_dataset`) with each split held as tensors."""
    from probe.data import hub
    from probe.data import render as probe_data

    dsd = run_dataset(plan)
    task = plan.task
    if task is None:
        from probe.tasks.templates import TemplateTask

        task = TemplateTask.from_dict(probe_data.task_info(dsd)["task"])
    config = plan.config
    tokenizer = hub.dataset_tokenizer_at(config.dataset, config.dataset_config, dsd)
    splits = {s: _tensors(dsd[s], task.label_kind) for s in RUN_SPLITS}
    return RunData(task=task, tokenizer=tokenizer, label_kind=task.label_kind, splits=splits)


# -- model and optimizer ------------------------------------------------------------


def build_run_model(plan: RunPlan, data: RunData) -> tuple[nn.Module, int]:
    """The model the plan names, with a/b injected and LoRA applied; and its
    number of trainable parameters."""
    from probe.models.build import build_model
    from probe.models.identity import inject_ab

    config = plan.config
    overrides = dict(config.model_overrides)
    if not config.pretrained:
        if plan.architecture is None:  # an MLP baseline
            shape = mlp_shape(config.n_layer, config.n_embd)
        else:
            s = config.shape_overrides
            shape = plan.architecture.shape(s["n_layer"], s["n_embd"], s["n_head"])
            if config.model == PAPER and config.n_head is None:
                shape.pop("n_head")  # the paper model's own default: n_embd // 64 (d_head 64)
        overrides = {**shape, **overrides}
    try:
        model = build_model(
            plan.model,
            task=data.task,
            tokenizer=data.tokenizer,
            pretrained=config.pretrained,
            gguf_file=config.gguf_file,
            seed=config.seed,
            **overrides,
        )
    except (TypeError, StrictDataclassError) as err:
        if not config.model_overrides:
            raise
        # build_model takes overrides as keyword arguments: an unknown one is a TypeError,
        # a value of the wrong type fails the config's own validation
        raise ValueError(f"--model-override {config.model_overrides}: {err}") from err
    if plan.ab:
        inject_ab(model, kq=plan.ab.inject_kq, vo=plan.ab.vo)
    if config.lora_r:
        model = _with_lora(model, plan, data.label_kind)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, trainable


def describe_model(plan: RunPlan, model: nn.Module) -> str:
    """What a run built, in one line: ``gpt2 from scratch (fresh weights), 2 layers,
    width 128, 4 heads, + KQ`` or ``gpt2 pretrained from PATH_OR_ID, + KQ, LoRA r=8``."""
    from probe.models.mlp import SymbolMLP

    config = plan.config
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    mlp = isinstance(base, SymbolMLP)
    if config.pretrained and not mlp:
        ref = plan.model
        where = ref.source + (f"/{ref.gguf_file}" if ref.gguf_file else "")
        text = f"{config.model} pretrained from {where}"
    elif mlp:
        cfg = base.config
        text = f"{config.model} from scratch (fresh weights), {cfg.n_layer} layers, width {cfg.d_embed}"
    else:
        spec, cfg = arch_spec(base), base.config
        shape = (getattr(cfg, k) for k in (spec.n_layers_key, spec.d_model_key, spec.n_heads_key))
        text = "{} from scratch (fresh weights), {} layers, width {}, {} heads".format(
            config.model, *shape
        )
    if plan.ab:
        text += ", + " + str(plan.ab).upper()
    if config.lora_r:
        text += f", LoRA r={config.lora_r}"
    return text


def _with_lora(model: nn.Module, plan: RunPlan, label_kind: str) -> nn.Module:
    """LoRA adapters on the target modules; a/b and a regression head train in full."""
    from peft import LoraConfig, get_peft_model

    from probe.models.identity import MODULE_NAME

    config = plan.config
    full = [MODULE_NAME] if plan.ab else []
    if label_kind == "regression":  # (LoRA on an MLP baseline is refused earlier)
        head = arch_spec(model).regression_head
        full += [head] if isinstance(getattr(model, head, None), nn.Module) else []
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)})
    targets = None  # peft's per-architecture default
    if config.lora_targets:
        targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()]
        missing = [t for t in targets if t not in linear]
        if missing:
            raise ValueError(
                f"--lora-targets: {', '.join(missing)} names no linear layer of "
                f"{type(model).__name__}; its linear layers: {', '.join(linear)}"
            )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha or config.lora_r,
        target_modules=targets,
        lora_dropout=0.0,
        modules_to_save=full or None,
        # GPT-2's Conv1D stores its weight transposed ([in, out])
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()),
    )
    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated name; nothing the user can act on
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return get_peft_model(model, lora)
    except ValueError as err:  # e.g. no default targets known for this architecture
        raise ValueError(
            f"LoRA could not wrap {type(model).__name__}: {err}. Name the layers to adapt "
            f"with --lora-targets; its linear layers: {', '.join(linear)}"
        ) from err


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def build_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`optimizer_groups`: :func:`adamw`."""
    return adamw(optimizer_groups(model, config), config)


def optimizer_groups(model: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups for ``model``: weight decay on weight matrices only, never on embeddings; the
    a/b scalings at their own learning rate.

    Decoupled decay shrinks every row of an embedding at each step, but only
    the rows of training symbols get gradients back: the rows of unseen test
    symbols would just fade. Biases, norms and the a/b scalings are vectors and
    get no decay either.

    Adam's step is about the learning rate in every coordinate, whatever the
    gradient's size, so a scalar that must reach O(1) needs O(1 / lr) steps: at
    the matrices' 1e-3 the network memorizes its training symbols long before a
    and b matter (``copy`` at width 256, n = 32: b reached 0.025 and the test
    error was 0.99; with ``b_lr`` 0.03, b = 0.3 and the error 0.0). a multiplies
    X Xᵀ, whose diagonal is about the width, so its step moves the logits far
    more than b's: at 0.03 ``aba_vs_abb`` + KQ runs oscillated and some never
    converged in 1000 steps, where at 0.01 every one converged within 250.
    """
    from probe.models.identity import ABScalings

    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    scaling = {
        id(p): name
        for m in model.modules()
        if isinstance(m, ABScalings)
        for name, p in m.named_parameters()
    }
    decay, rest, a, b = [], [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in scaling:
            (a if scaling[id(p)] == "a" else b).append(p)
        elif p.dim() >= 2 and id(p) not in embedding_weights:
            decay.append(p)
        else:
            rest.append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": rest, "weight_decay": 0.0},
        {"params": a, "weight_decay": 0.0, "lr": config.a_lr or config.lr},
        {"params": b, "weight_decay": 0.0, "lr": config.b_lr or config.lr},
    ]
    return [g for g in groups if g["params"]]


def adamw(groups: list[dict[str, Any]], config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW at ``config.lr`` over ``groups``, fused where torch has the kernel for them."""
    params = [p for g in groups for p in g["params"]]
    # the fused kernel (one launch for all tensors) where torch has one for these tensors
    fused = all(p.is_floating_point() for p in params) and all(
        p.device.type in _FUSED_ADAMW_DEVICES for p in params
    )
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused)


_FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps", "xpu")


def ab_summary(model: nn.Module) -> dict[str, Any]:
    """The learned a/b: mean, largest magnitude and the per-head values, in
    ``ab_values`` row order (layer, head, module)."""
    from probe.models.identity import ab_values

    df = ab_values(model)
    summary: dict[str, Any] = {"modules": sorted(df["module"].unique().tolist())}
    for col in ("a", "b"):
        values = df[col].dropna()
        if len(values):
            summary[f"{col}_mean"] = round(float(values.mean()), 6)
            summary[f"{col}_absmax"] = round(float(values.abs().max()), 6)
            summary[col] = [round(float(v), 5) for v in df[col]]
    return summary
