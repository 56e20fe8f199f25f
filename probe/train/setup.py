"""What a finetune run sets up before its loop, from its plan: data, model, optimizer.

The plan (``probe.train.plan.RunPlan``, made by ``check_environment``) holds
every name of the config resolved once; nothing here resolves a name again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from probe.models.architectures import arch_spec
from probe.models.mlp import mlp_shape
from probe.models.paper import PAPER
from probe.train.config import FinetuneConfig
from probe.train.plan import RUN_SPLITS, RunPlan, check_dataset, plan_run
from probe.train.run_dir import RunDir

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


def run_dataset(plan: RunPlan):
    """The run's ``DatasetDict``: the plan's task rendered with the run's sizes,
    tokenizer (``--tokenizer``, the model's own when pretrained, else probe's
    SymbolTokenizer) and seed (the same rows every time), or the first rows of
    ``--dataset``."""
    from datasets import DatasetDict

    from probe.data import render as probe_data
    from probe.data.tokenizer import load_tokenizer_by_name

    config = plan.config
    if plan.task is not None:
        tokenizer = None
        if plan.tokenizer is not None:
            tokenizer = load_tokenizer_by_name(plan.tokenizer, gguf_file=plan.tokenizer_gguf)
        return probe_data.render(
            plan.task,
            n_train=config.n_train,
            n_val=config.n_val,
            n_test=config.n_test,
            tokenizer=tokenizer,
            seed=config.seed,
        )
    # the plan's copy stays whole: the run takes its first rows into a new dict
    dsd = DatasetDict(plan.dataset if plan.dataset is not None else check_dataset(config))
    for split, n, flag in (
        ("train", config.n_train, "n-train"),
        ("validation", config.n_val, "n-val"),
        ("test", config.n_test, "n-test"),
    ):
        if n is None:
            continue
        if n > len(dsd[split]):
            raise ValueError(
                f"--{flag} {n} exceeds the dataset's {len(dsd[split])} rows; pass at most that"
            )
        dsd[split] = dsd[split].select(range(n))
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
    from probe.models.build import build_from_ref
    from probe.models.identity import inject_ab
    from probe.models.lora import with_lora

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
        model = build_from_ref(
            plan.model, task=data.task, tokenizer=data.tokenizer, seed=config.seed, **overrides
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
        model = with_lora(
            model,
            config.lora_r,
            config.lora_alpha,
            config.lora_targets,
            ab=bool(plan.ab),
            regression=data.label_kind == "regression",
        )
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
