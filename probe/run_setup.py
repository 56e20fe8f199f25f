"""What a finetune run sets up before its loop: checks, data, model, optimizer.

``check_environment`` judges everything that can be judged cheaply (the task,
the model name, trackers, the output folder) so a bad run fails before any
model or data work. The rest builds the run's pieces from a checked config.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from probe.config import FinetuneConfig

# Fields a --resume may change: they say how long to train and how to report,
# not what the steps compute.
RESUMABLE_FIELDS = (
    "max_steps",
    "epochs",
    "converge_loss",
    "eval_every",
    "eval_batch_size",
    "checkpoint_every",
    "save_model",
    "log_with",
    "log_every",
    "progress",
    "output_dir",
    "resume",
    "overwrite",
)

# The from-scratch shape (layers, width, heads) in each architecture's config names;
# feed-forward width 4x the model width everywhere (GPT-2's own default), and T5's
# per-head width = width / heads, so one shape means the same model family-wide.
SHAPE_KEYS: dict[str, Any] = {
    "gpt2": lambda n, d, h: {"n_layer": n, "n_embd": d, "n_head": h},
    "t5": lambda n, d, h: {
        "num_layers": n,
        "d_model": d,
        "num_heads": h,
        "d_ff": 4 * d,
        "d_kv": d // h,
    },
    "llama": lambda n, d, h: {
        "num_hidden_layers": n,
        "hidden_size": d,
        "num_attention_heads": h,
        "num_key_value_heads": h,
        "intermediate_size": 4 * d,
    },
    "bert": lambda n, d, h: {
        "num_hidden_layers": n,
        "hidden_size": d,
        "num_attention_heads": h,
        "intermediate_size": 4 * d,
    },
    # the MLP baselines: hidden layers and embedding width; they have no heads
    "mlp": lambda n, d, h: {"n_layer": n, "d_embed": d},
}
# Heads newly initialized on top of a checkpoint for regression labels (transformers'
# names); LoRA trains them in full.
REGRESSION_HEADS = ("score", "classifier", "classification_head")
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(folder: Path) -> list[Path]:
    """``folder/step-N`` checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


# -- checks -------------------------------------------------------------------------


def model_type(config: FinetuneConfig) -> str:
    """The architecture ``config.model`` names (gpt2, t5, llama, bert or mlp), found
    without building anything; a clear error for a name that is none of them."""
    from probe.architectures import ALIASES, ARCHITECTURES, arch_spec
    from probe.mlp import MLP_VARIANTS
    from probe.models import SCRATCH_PRESETS
    from probe.paper import PAPER

    name = config.model
    path = Path(name).expanduser()
    gguf = config.gguf_file
    accepted = (
        "a Hub id (gpt2, t5-small, HuggingFaceTB/SmolLM2-135M, ...), a folder saved with "
        "save_pretrained, a .gguf file, an architecture name from scratch "
        f"({', '.join(sorted(ARCHITECTURES))}), a preset ({', '.join([*SCRATCH_PRESETS, PAPER])}) or an "
        f"MLP baseline ({', '.join(MLP_VARIANTS)})"
    )
    built_in = name in MLP_VARIANTS or name in SCRATCH_PRESETS or name == PAPER
    architecture = config.from_scratch and (name in ARCHITECTURES or name in ALIASES)
    if gguf is not None and not path.is_dir():
        what = "a GGUF file already" if name.endswith(".gguf") else "built in, not a checkpoint"
        if name.endswith(".gguf") or built_in or architecture:
            raise ValueError(
                f"--gguf-file {gguf!r} names a file inside the --model folder or Hub repo, "
                f"but --model {name!r} is {what}; pass --model FOLDER --gguf-file FILE, "
                "or --model PATH.gguf alone"
            )
    if name in MLP_VARIANTS:
        return "mlp"
    if name in SCRATCH_PRESETS:
        return SCRATCH_PRESETS[name][0]
    if name == PAPER:  # probe.paper: a GPT-2 made the official model
        return "gpt2"
    if architecture:
        return ALIASES.get(name, name)
    from transformers import AutoConfig

    if name.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"--model {name!r}: no such GGUF file")
        path, gguf = path.parent, path.name
    elif name.startswith((".", "/", "~")) and not path.exists():  # a path, not a Hub id
        raise ValueError(f"--model {name!r}: no such folder; --model accepts {accepted}")
    try:
        hf_config = AutoConfig.from_pretrained(str(path) if path.exists() else name, gguf_file=gguf)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--model {name!r} cannot be loaded ({err}); --model accepts {accepted}"
        ) from err
    if hf_config.model_type == "probe_mlp":
        return "mlp"
    return ALIASES.get(hf_config.model_type, arch_spec(hf_config).model_type)


def check_environment(config: FinetuneConfig, run_state: dict[str, Any]):
    """Judge the task, model, options and output folder; returns the catalogue task
    (None with ``--dataset``). Raises before any model or data work."""
    from probe.tasks import get_task

    task = None
    if config.task is not None and ":" in config.task:  # the spec form, majority_k:k=5
        from probe.data import resolve_task

        if config.task_params:
            raise ValueError(
                f"--task {config.task!r} carries its parameters already; drop --task-param"
            )
        task, _ = resolve_task(config.task)
    elif config.task is not None:
        task = get_task(config.task, **config.task_params)
    else:
        path = Path(config.dataset).expanduser()
        if (config.dataset.startswith((".", "/", "~")) or path.exists()) and not path.is_dir():
            raise FileNotFoundError(f"--dataset {config.dataset!r}: no such folder")
    if config.tokenizer is not None:
        _check_local("--tokenizer", config.tokenizer)
    kind = model_type(config)
    if config.model == "paper" and not config.from_scratch:
        raise ValueError(
            "--model paper is built from its configuration (probe.paper) and has no "
            "checkpoint to load; drop --pretrained"
        )
    if kind == "mlp":
        if config.ab != "none":
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
    _check_trackers(config.trackers)
    _check_output_dir(config, run_state)
    return task


def _check_local(flag: str, name: str) -> None:
    """A name written as a path (./x, /x, ~/x) must exist: it is no Hub id."""
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
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


def _check_output_dir(config: FinetuneConfig, run_state: dict[str, Any]) -> None:
    out, artifacts = run_state["out"], run_state["artifacts"]
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output-dir {str(out)!r} is a file; pass a folder")
    if config.resume:
        if not run_state["checkpoints"]:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {str(out / 'checkpoints')!r}; start the run "
                "without --resume"
            )
        saved = run_state["saved_config"] or {}
        mine = config.to_dict()
        changed = sorted(
            k for k in mine if k not in RESUMABLE_FIELDS and saved.get(k, mine[k]) != mine[k]
        )
        if changed:
            diffs = ", ".join(f"{k}: {saved[k]!r} -> {mine[k]!r}" for k in changed)
            raise ValueError(
                f"--resume continues the run in {str(out)!r}, but these settings differ from "
                f"it: {diffs}. Only {', '.join(RESUMABLE_FIELDS)} may change on resume"
            )
    elif artifacts and not config.overwrite:
        raise FileExistsError(
            f"--output-dir {str(out)!r} already holds a run ({', '.join(artifacts)}); pass "
            "--overwrite to replace it, --resume to continue it, or another --output-dir"
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


def _render_tokenizer(config: FinetuneConfig):
    """The tokenizer to render --task with: --tokenizer, the model's own when pretrained,
    else None (probe's SymbolTokenizer)."""
    if config.tokenizer is not None:
        return _load_tokenizer("--tokenizer", config.tokenizer)
    if config.from_scratch:
        return None
    if config.model.endswith(".gguf"):
        path = Path(config.model).expanduser()
        return _load_tokenizer("--model", str(path.parent), gguf_file=path.name)
    return _load_tokenizer("--model", config.model, gguf_file=config.gguf_file)


def _load_tokenizer(flag: str, name: str, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    _check_local(flag, name)
    try:
        return AutoTokenizer.from_pretrained(name, gguf_file=gguf_file)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{flag} {name!r}: no tokenizer could be loaded ({str(err).splitlines()[0]}); pass "
            "a Hub id that is cached or reachable, or a folder saved with save_pretrained"
        ) from err


def _dataset_tokenizer(config: FinetuneConfig, dsd):
    """The rendering tokenizer: for a local folder the one saved beside the data,
    else the one the dataset's card describes."""
    from probe import data as probe_data
    from probe import hub

    folder = Path(config.dataset).expanduser() if config.dataset else None
    if folder is not None and folder.is_dir():
        name = config.dataset_config or dsd["train"].info.config_name
        try:
            return hub.load_tokenizer(folder, name)
        except FileNotFoundError:
            pass
    return probe_data.dataset_tokenizer(dsd)


def load_run_data(config: FinetuneConfig, task) -> RunData:
    """Render the task (or load the dataset) and hold each split as tensors."""
    from probe import data as probe_data

    if task is not None:
        dsd = probe_data.render(
            task,
            n_train=config.n_train,
            n_val=config.n_val,
            n_test=config.n_test,
            tokenizer=_render_tokenizer(config),
            seed=config.seed,
        )
    else:
        from probe import hub

        dsd = hub.load_dataset(config.dataset, config.dataset_config)
        dsd["train"] = _first(dsd["train"], config.n_train, "n-train")
        dsd["validation"] = _first(dsd["validation"], config.n_val, "n-val")
        dsd["test"] = _first(dsd["test"], config.n_test, "n-test")
    info = probe_data.task_info(dsd)
    if task is None:
        from probe.templates import TemplateTask

        task = TemplateTask.from_dict(info["task"])
    tokenizer = _dataset_tokenizer(config, dsd)
    splits = {s: _tensors(dsd[s], task.label_kind) for s in ("train", "validation", "test")}
    return RunData(task=task, tokenizer=tokenizer, label_kind=task.label_kind, splits=splits)


# -- model and optimizer ------------------------------------------------------------


def build_run_model(config: FinetuneConfig, data: RunData) -> tuple[nn.Module, int]:
    """The model the config names, with a/b injected and LoRA applied; and its
    number of trainable parameters."""
    from probe.identity import inject_ab
    from probe.models import build_model

    overrides = dict(config.model_overrides)
    if config.from_scratch:
        kind = model_type(config)
        if kind == "mlp":
            given = {k: getattr(config, k) for k in ("n_layer", "n_embd")}
            shape = SHAPE_KEYS["mlp"](given["n_layer"], given["n_embd"], None)
            overrides = {**{k: v for k, v in shape.items() if v is not None}, **overrides}
        else:
            s = config.shape_overrides
            shape = SHAPE_KEYS[kind](s["n_layer"], s["n_embd"], s["n_head"])
            if config.model == "paper" and config.n_head is None:
                shape.pop("n_head")  # the paper model's own default: n_embd // 64 (d_head 64)
            overrides = {**shape, **overrides}
    try:
        model = build_model(
            config.model,
            task=data.task,
            tokenizer=data.tokenizer,
            pretrained=not config.from_scratch,
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
    if config.ab != "none":
        inject_ab(model, kq=config.kq, vo=config.vo)
    if config.lora_r:
        model = _with_lora(model, config, data.label_kind)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, trainable


def _with_lora(model: nn.Module, config: FinetuneConfig, label_kind: str) -> nn.Module:
    """LoRA adapters on the target modules; a/b and a regression head train in full."""
    from peft import LoraConfig, get_peft_model

    from probe.identity import MODULE_NAME

    full = [MODULE_NAME] if config.ab != "none" else []
    if label_kind == "regression":
        full += [h for h in REGRESSION_HEADS if isinstance(getattr(model, h, None), nn.Module)]
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
    """AdamW; weight decay on weight matrices only, never on embeddings; the
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
    from probe.identity import ABScalings

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
    params = decay + rest + a + b
    # the fused kernel (one launch for all tensors) where torch has one for these tensors
    fused = all(p.is_floating_point() for p in params) and all(
        p.device.type in _FUSED_ADAMW_DEVICES for p in params
    )
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, fused=fused)


_FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps", "xpu")


def ab_summary(model: nn.Module) -> dict[str, Any]:
    """The learned a/b: mean, largest magnitude and the per-head values, in
    ``ab_values`` row order (layer, head, module)."""
    from probe.identity import ab_values

    df = ab_values(model)
    summary: dict[str, Any] = {"modules": sorted(df["module"].unique().tolist())}
    for col in ("a", "b"):
        values = df[col].dropna()
        if len(values):
            summary[f"{col}_mean"] = round(float(values.mean()), 6)
            summary[f"{col}_absmax"] = round(float(values.abs().max()), 6)
            summary[col] = [round(float(v), 5) for v in df[col]]
    return summary


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``results.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
