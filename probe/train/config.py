"""``FinetuneConfig``: one run's settings, shared by the Python API and the command line.

Each field carries ``metadata={"help": ...}`` (as peft's configs do), so
:func:`build_parser` makes the ``argparse`` parser of ``probe finetune`` and
``accelerate launch -m probe.finetune`` from the same definition that
``probe.finetune(FinetuneConfig(...))`` takes. Values are checked when the
config is made (``__post_init__``): a bad value fails before any model or data
work, with a message that says what is accepted.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The paper's small transformer, used from scratch unless the shape is given.
from probe.checks import is_int
from probe.models.architectures import SMALL_SHAPE
from probe.tasks.templates import MAX_SAMPLES

AB_CHOICES = ("none", "kq", "vo", "kq,vo", "kq_rot", "kq_rot,vo")
# the a/b scalings' own AdamW learning rates (see FinetuneConfig.a_lr)
A_LR = 1e-2
B_LR = 3e-2
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16", "fp8")
DEFAULT_TASK = "aba_vs_abb"
DEFAULT_SIZES = {"n_train": 256, "n_val": 256, "n_test": 1000}


@dataclass(frozen=True)
class AB:
    """Which identity scalings a run injects (``--ab``): ``kq`` adds a_h X Xᵀ to the
    attention logits (``rotated``: X in the rotary embedding's basis, ``kq_rot``),
    ``vo`` adds b_h A_h X to each head's output. False when neither is on."""

    kq: bool = False
    vo: bool = False
    rotated: bool = False  # the KQ term in RoPE's basis (implies kq)

    @classmethod
    def parse(cls, text: str) -> AB:
        """``none``, ``kq``, ``vo``, ``kq,vo``, ``kq_rot`` or ``kq_rot,vo`` (checked by
        ``FinetuneConfig``)."""
        parts = {p.strip() for p in text.split(",")}
        rotated = "kq_rot" in parts
        return cls(kq=rotated or "kq" in parts, vo="vo" in parts, rotated=rotated)

    @classmethod
    def union(cls, values: typing.Iterable[AB]) -> AB:
        """Every term some of ``values`` has (a rotated KQ wins over a plain one)."""
        values = list(values)
        return cls(
            kq=any(v.kq for v in values),
            vo=any(v.vo for v in values),
            rotated=any(v.rotated for v in values),
        )

    def __bool__(self) -> bool:
        return self.kq or self.vo

    def __str__(self) -> str:
        """The ``--ab`` text: ``none``, ``kq``, ``kq_rot,vo``, ..."""
        parts = (["kq_rot" if self.rotated else "kq"] if self.kq else []) + (
            ["vo"] if self.vo else []
        )
        return ",".join(parts) or "none"

    @property
    def inject_kq(self) -> bool | str:
        """``inject_ab``'s ``kq``: True, False or ``"rotated"``."""
        return "rotated" if self.rotated else self.kq


# -- field roles ------------------------------------------------------------------
# Each field's metadata records its group (the --help section, as peft's configs
# group theirs) and the roles it plays elsewhere; the lists other modules need
# are derived from these (``fields_with``), never kept by hand.
MODEL, LORA, DATA, OPTIMIZATION, OUTPUTS = "model", "lora", "data", "optimization", "outputs"
GROUP_TITLES = {
    MODEL: "model",
    LORA: "LoRA (peft)",
    DATA: "data",
    OPTIMIZATION: "optimization",
    OUTPUTS: "evaluation and outputs",
}
# may change on --resume: says how long to train and how to report, not what a step computes
RESUMABLE = "resumable"
# left out of a sweep cell's settings hash: where and how a run is stored
UNHASHED = "unhashed"
# read by the training loop (probe.train.loop.LoopSettings)
LOOP = "loop"
# stated by the report under a curve when every row shares it
SETTING = "setting"
# added after results were recorded: in a cell's settings hash only when set to other
# than its default, so the cells recorded before the field existed keep their hashes
HASHED_WHEN_SET = "hashed_when_set"
ROLES = (RESUMABLE, UNHASHED, LOOP, SETTING, HASHED_WHEN_SET)

# Fields renamed after results were recorded: new name -> (old name, old value from new).
# Saved configs and recipes in the old names still load, and a cell's hash is computed
# in the old names, so committed results keep their hashes.
RENAMED = {"pretrained": ("from_scratch", lambda pretrained: not pretrained)}


def upgrade_names(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with renamed fields under their new names (``from_scratch`` -> ``pretrained``)."""
    d = dict(d)
    for new, (old, _) in RENAMED.items():
        if old in d and new not in d:
            d[new] = not d.pop(old)  # every rename so far is a negation
    return d


def _help(
    text: str, *, group: str, roles: tuple[str, ...] = (), grid: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A field's metadata: its help, its group, its roles and, for a field the sweep
    sets per cell, the recipe key or flag that sets it (``grid``)."""
    meta = {"help": text, "group": group, "roles": frozenset(roles), **extra}
    if grid is not None:
        meta["grid"] = grid
    return meta


def step_limit(max_steps: int, epochs: int, steps_per_epoch: int) -> int:
    """The most steps a run may take: ``max_steps`` or ``epochs`` of ``steps_per_epoch``,
    whichever ends it first (0: neither is set). An early stop may end it sooner."""
    limits = [max_steps] if max_steps else []
    if epochs:
        limits.append(epochs * steps_per_epoch)
    return min(limits) if limits else 0


@dataclass
class FinetuneConfig:
    """One training run: model, data, optimization and outputs.

    The defaults train the paper's small transformer (GPT-2 architecture, 2
    layers, width 128, 4 heads) from scratch on ``aba_vs_abb`` with AdamW
    (lr 1e-3; 0.01 and 0.03 for the scalings a and b; no weight decay), batch 64,
    for at most 1000 steps.
    """

    # -- model
    model: str = field(
        default="gpt2",
        metadata=_help(
            "a Hugging Face Hub id (gpt2, t5-small, ...), a local checkpoint folder, a .gguf "
            "file, or an MLP baseline name (see probe.build_model)",
            group=MODEL,
            roles=(SETTING,),
        ),
    )
    gguf_file: str | None = field(
        default=None,
        metadata=_help(
            "GGUF file name inside the --model folder or Hub repo (default: none)", group=MODEL
        ),
    )
    pretrained: bool = field(
        default=False,
        metadata=_help(
            "load the checkpoint's weights (build_model's pretrained=True)",
            negative=(
                "--from-scratch",
                "fresh weights from the model's config (the paper's setting; the default)",
            ),
            group=MODEL,
            roles=(SETTING,),
        ),
    )
    n_layer: int | None = field(
        default=None,
        metadata=_help(
            f"layers, from scratch only (default: {SMALL_SHAPE['n_layer']}; "
            "the MLP baselines keep their own)",
            group=MODEL,
            roles=(SETTING,),
        ),
    )
    n_embd: int | None = field(
        default=None,
        metadata=_help(
            f"model width, from scratch only (default: {SMALL_SHAPE['n_embd']}; "
            "the MLP baselines keep their own)",
            group=MODEL,
            roles=(SETTING,),
        ),
    )
    n_head: int | None = field(
        default=None,
        metadata=_help(
            f"attention heads, from scratch only (default: {SMALL_SHAPE['n_head']})",
            group=MODEL,
            roles=(SETTING,),
        ),
    )
    model_overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "a further config override passed to build_model, e.g. resid_pdrop=0.0 "
            "(repeatable; default: none)",
            flag="--model-override",
            group=MODEL,
        ),
    )
    ab: str = field(
        default="none",
        metadata=_help(
            "identity scalings injected into every head: none, kq (a_h X Xᵀ on the "
            "logits), vo (b_h A_h X on the output), kq,vo; kq_rot (RoPE models: X rotated "
            "by the layer's rotary embedding, inject_ab(kq='rotated')), kq_rot,vo",
            group=MODEL,
        ),
    )
    # -- LoRA (peft)
    lora_r: int = field(
        default=0,
        metadata=_help(
            "LoRA rank; 0 trains every weight (full fine-tuning)", group=LORA, roles=(SETTING,)
        ),
    )
    lora_alpha: float | None = field(
        default=None, metadata=_help("LoRA alpha (default: the rank, i.e. scale 1)", group=LORA)
    )
    lora_targets: str | None = field(
        default=None,
        metadata=_help(
            "comma-separated module names LoRA adapts (default: peft's per-architecture "
            "choice, e.g. c_attn for GPT-2, q,v for T5, q_proj,v_proj for Llama)",
            group=LORA,
        ),
    )
    # -- data
    task: str | None = field(
        default=None,
        metadata=_help(
            "a catalogue task, see `probe tasks`, optionally with parameters: "
            f"majority_k:k=5 (default: {DEFAULT_TASK})",
            group=DATA,
        ),
    )
    task_params: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "a catalogue task's parameter, e.g. k=5 (repeatable; default: the task's own)",
            flag="--task-param",
            group=DATA,
        ),
    )
    dataset: str | None = field(
        default=None,
        metadata=_help(
            "a rendered dataset: a Hub-layout folder or a Hub id, instead of --task "
            "(default: none: --task is rendered)",
            group=DATA,
        ),
    )
    dataset_config: str | None = field(
        default=None,
        metadata=_help(
            "config name inside --dataset (default: its only one)", flag="--config", group=DATA
        ),
    )
    tokenizer: str | None = field(
        default=None,
        metadata=_help(
            "tokenizer to render --task with: a Hub id or folder (default: probe's "
            "SymbolTokenizer from scratch, the model's own tokenizer with --pretrained)",
            group=DATA,
        ),
    )
    n_train: int | None = field(
        default=None,
        metadata=_help(
            "training samples (= train alphabet size; with --dataset: its first N rows) "
            f"(default: {DEFAULT_SIZES['n_train']}; with --dataset: all)",
            group=DATA,
            grid="n",
        ),
    )
    n_val: int | None = field(
        default=None,
        metadata=_help(
            "validation samples, 0 for none (with --dataset: its first N rows) "
            f"(default: {DEFAULT_SIZES['n_val']}; with --dataset: all)",
            group=DATA,
        ),
    )
    n_test: int | None = field(
        default=None,
        metadata=_help(
            "test samples, on unseen symbols (with --dataset: its first N rows) "
            f"(default: {DEFAULT_SIZES['n_test']}; with --dataset: all)",
            group=DATA,
            roles=(SETTING,),
        ),
    )
    seed: int = field(
        default=0,
        metadata=_help("seed of the data, the weights and the order", group=DATA, grid="seeds"),
    )
    # -- optimization
    lr: float = field(
        default=1e-3,
        metadata=_help("AdamW learning rate (constant)", group=OPTIMIZATION, roles=(SETTING,)),
    )
    a_lr: float | None = field(
        default=A_LR,
        metadata=_help(
            "AdamW learning rate of the KQ scalings a (--ab kq). Adam moves a scalar by "
            "about its learning rate per step, so at the matrices' 1e-3 a stays near 0 "
            "while the network memorizes; a scales X Xᵀ (diagonal ~ width), so it takes "
            "a smaller step than b. 'none': same as --lr",
            group=OPTIMIZATION,
        ),
    )
    b_lr: float | None = field(
        default=B_LR,
        metadata=_help(
            "AdamW learning rate of the VO scalings b (--ab vo); see --a-lr. 'none': same as --lr",
            group=OPTIMIZATION,
        ),
    )
    weight_decay: float = field(
        default=0.0,
        metadata=_help(
            "AdamW decoupled weight decay, on weight matrices only: never on embeddings "
            "(the rows of unseen symbols get no gradient, decay would only shrink them), "
            "biases, norms or a/b",
            group=OPTIMIZATION,
        ),
    )
    batch_size: int = field(
        default=64,
        metadata=_help("training batch size per process", group=OPTIMIZATION, roles=(SETTING,)),
    )
    eval_batch_size: int = field(
        default=512,
        metadata=_help("evaluation batch size per process", group=OPTIMIZATION, roles=(RESUMABLE,)),
    )
    max_steps: int = field(
        default=1000,
        metadata=_help(
            "stop after this many optimizer steps (0: no step limit)",
            group=OPTIMIZATION,
            roles=(SETTING, RESUMABLE, LOOP),
        ),
    )
    epochs: int = field(
        default=0,
        metadata=_help(
            "stop after this many epochs (0: as many as the steps need)",
            group=OPTIMIZATION,
            roles=(SETTING, RESUMABLE, LOOP),
        ),
    )
    converge_loss: float = field(
        default=1e-3,
        metadata=_help(
            "early stop once the mean training loss over the last --converge-window steps "
            "is at most this (0: never stop early)",
            group=OPTIMIZATION,
            roles=(RESUMABLE, LOOP),
        ),
    )
    converge_window: int = field(
        default=50, metadata=_help("steps averaged by the early-stopping rule", group=OPTIMIZATION)
    )
    keep_best: bool = field(
        default=False,
        metadata=_help(
            "model selection on the validation split: test (and save) the model of the "
            "step with the lowest validation loss, among every --eval-every step and the "
            "last, instead of the last step's; the row records that step (best_step). "
            "Needs --eval-every N and validation samples. The validation symbols are "
            "unseen in training and apart from the test ones, so the test stays unseen",
            group=OPTIMIZATION,
            roles=(SETTING, LOOP, HASHED_WHEN_SET),
        ),
    )
    patience: int = field(
        default=0,
        metadata=_help(
            "with --keep-best: stop once the validation loss has not improved for this "
            "many steps (0: train until --max-steps / --epochs)",
            group=OPTIMIZATION,
            roles=(SETTING, RESUMABLE, LOOP, HASHED_WHEN_SET),
        ),
    )
    max_grad_norm: float = field(
        default=0.0,
        metadata=_help(
            "clip the gradient norm to this (0: no clipping)", group=OPTIMIZATION, roles=(LOOP,)
        ),
    )
    mixed_precision: str | None = field(
        default=None,
        metadata=_help(
            "no, fp16, bf16 or fp8 (default: accelerate's setting, e.g. "
            "`accelerate launch --mixed_precision bf16`)",
            group=OPTIMIZATION,
        ),
    )
    compile: bool | None = field(
        default=None,
        metadata=_help(
            "torch.compile the training step: forward, readout and loss in one graph, and "
            "its backward (same numbers up to float rounding; falls back to eager with a "
            "warning where it fails). Unset (the default): on for a run of at least "
            "20,000 steps (probe.train.loop.COMPILE_MIN_STEPS), where its warm-up (seconds "
            "from inductor's cache, tens of seconds cold) pays back, off for shorter ones; "
            "a --pack compiles where each of its cells would alone; --compile / "
            "--no-compile force it. The row says what ran (compiled). bench/finetune.py "
            "and bench/pack.py --compiled measure it",
            group=OPTIMIZATION,
            # how the steps are computed, not what: free to change on resume, not hashed
            roles=(RESUMABLE, UNHASHED, LOOP),
        ),
    )
    # -- evaluation and outputs
    eval_every: int = field(
        default=0,
        metadata=_help(
            "validate every N steps (0: only at the end)", group=OUTPUTS, roles=(RESUMABLE, LOOP)
        ),
    )
    output_dir: str = field(
        default="runs/finetune",
        metadata=_help(
            "run folder: results.jsonl, checkpoints/, the final model",
            group=OUTPUTS,
            roles=(RESUMABLE, UNHASHED),
            grid="--out / --work-dir",
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_help(
            "replace a previous run's files in --output-dir",
            group=OUTPUTS,
            roles=(RESUMABLE, UNHASHED),
            grid="--overwrite",
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_help(
            "continue the run in --output-dir from its last checkpoint",
            group=OUTPUTS,
            roles=(RESUMABLE, UNHASHED),
            grid="--resume",
        ),
    )
    checkpoint_every: int = field(
        default=500,
        metadata=_help(
            "save a checkpoint every N steps, and at the end (0: only at the end)",
            group=OUTPUTS,
            roles=(RESUMABLE, UNHASHED, LOOP),
        ),
    )
    checkpoints: bool = field(
        default=True,
        metadata=_help(
            "save checkpoints (--no-checkpoints: none at all)", group=OUTPUTS, roles=(UNHASHED,)
        ),
    )
    save_model: bool = field(
        default=False,
        metadata=_help(
            "save the trained model and tokenizer to OUTPUT_DIR/model",
            group=OUTPUTS,
            roles=(RESUMABLE, UNHASHED),
        ),
    )
    push_to_hub: str | None = field(
        default=None,
        metadata=_help(
            "then upload the trained model folder (OUTPUT_DIR/model: weights with the a/b "
            "scalings, tokenizer, model card, the run's results row) to this Hub model "
            "repository, created if missing; implies --save-model. Needs a token (`hf auth "
            "login` or HF_TOKEN); with --resume of a finished run, pushes its saved model "
            "(default: none)",
            group=OUTPUTS,
            # where the model is published, not what it computes: not hashed, may change
            roles=(RESUMABLE, UNHASHED),
        ),
    )
    log_with: str | None = field(
        default=None,
        metadata=_help(
            "comma-separated accelerate trackers, e.g. tensorboard (default: none)",
            group=OUTPUTS,
            roles=(RESUMABLE, UNHASHED),
        ),
    )
    log_every: int = field(
        default=10,
        metadata=_help(
            "log the training loss every N steps", group=OUTPUTS, roles=(RESUMABLE, UNHASHED, LOOP)
        ),
    )
    progress: bool = field(
        default=True,
        metadata=_help(
            "show a progress bar and the closing summary line (main process)",
            group=OUTPUTS,
            roles=(RESUMABLE, UNHASHED, LOOP),
        ),
    )

    def __post_init__(self) -> None:
        if self.task is not None and self.dataset is not None:
            raise ValueError(
                f"both --task {self.task!r} and --dataset {self.dataset!r} given; "
                "pass one: a catalogue task to render, or a rendered dataset"
            )
        if self.dataset is None:
            self.task = self.task or DEFAULT_TASK
            for name, default in DEFAULT_SIZES.items():
                if getattr(self, name) is None:
                    setattr(self, name, default)
        elif self.task_params:
            raise ValueError("--task-param applies to --task, not to --dataset")
        if self.push_to_hub is not None:
            self.save_model = True  # the pushed folder is the saved model
        self._check_values()

    # -- derived views
    @property
    def identity(self) -> AB:
        """``ab`` as a value: which identity terms the run injects."""
        return AB.parse(self.ab)

    @property
    def kq(self) -> bool | str:
        """inject_ab's kq: True, False or "rotated" (``--ab kq_rot``)."""
        return self.identity.inject_kq

    @property
    def vo(self) -> bool:
        return self.identity.vo

    @property
    def shape_overrides(self) -> dict[str, int]:
        """The from-scratch shape in GPT-2's names (n_layer, n_embd, n_head)."""
        if self.pretrained:
            return {}
        return {k: getattr(self, k) or v for k, v in SMALL_SHAPE.items()}

    @property
    def planned_steps(self) -> int | None:
        """The most optimizer steps the run may take (:func:`step_limit` of its
        ``max_steps``, ``epochs`` and a task's ``n_train`` in batches); None for a
        ``--dataset``, whose size is known only once it is loaded."""
        if self.dataset is not None:
            return None
        n = self.n_train or DEFAULT_SIZES["n_train"]
        return step_limit(self.max_steps, self.epochs, math.ceil(n / self.batch_size))

    @property
    def trackers(self) -> list[str]:
        return [t.strip() for t in (self.log_with or "").split(",") if t.strip()]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        d = upgrade_names(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown FinetuneConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**d)

    # -- validation
    def _check_values(self) -> None:
        parts = [p.strip() for p in self.ab.split(",")]
        ordered = ",".join(p for p in ("kq", "kq_rot", "vo") if p in parts)  # vo,kq -> kq,vo
        known = len(set(parts)) == len(parts) and set(parts) <= {"kq", "kq_rot", "vo"}
        if self.ab not in AB_CHOICES and not (known and ordered in AB_CHOICES[1:]):
            raise ValueError(f"--ab {self.ab!r} is not one of {', '.join(AB_CHOICES)}")
        self.ab = self.ab if self.ab in AB_CHOICES else ordered
        positive = ["batch_size", "eval_batch_size", "converge_window", "log_every"]
        non_negative = [
            "max_steps",
            "epochs",
            "eval_every",
            "checkpoint_every",
            "lora_r",
            "patience",
        ]
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        for name in non_negative:
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.n_val is not None:
            _check_int("n_val", self.n_val, minimum=0)
        for name in ("n_train", "n_val", "n_test"):  # before any work, not after minutes
            value = getattr(self, name)
            if value is not None and value > MAX_SAMPLES:
                raise ValueError(
                    f"--{_flag(name)} {value} is more samples than one split can hold (at "
                    f"most {MAX_SAMPLES}: a split is rendered in memory, with an alphabet "
                    "of that many symbols); pass a smaller value"
                )
        for name in ("n_layer", "n_embd", "n_head"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.pretrained:
                raise ValueError(
                    f"--{_flag(name)} {value} sets the shape of a model built from scratch; "
                    "a --pretrained checkpoint keeps its own shape (drop the flag)"
                )
            _check_int(name, value, minimum=1)
        shape = self.shape_overrides
        if shape and shape["n_embd"] % shape["n_head"]:
            raise ValueError(
                f"--n-embd {shape['n_embd']} is not divisible by --n-head {shape['n_head']}; "
                "pick a width that is a multiple of the head count"
            )
        if self.max_steps == 0 and self.epochs == 0:
            raise ValueError("--max-steps 0 and --epochs 0 never stop; set one of them")
        if self.keep_best and not self.eval_every:
            raise ValueError(
                "--keep-best picks the step with the lowest validation loss, but --eval-every "
                "is 0 (validate only at the end); pass --eval-every N, e.g. 250"
            )
        if self.keep_best and self.n_val == 0:
            raise ValueError(
                "--keep-best picks the step with the lowest validation loss, but --n-val is 0 "
                "(no validation samples); pass --n-val N, e.g. 256"
            )
        if self.patience and not self.keep_best:
            raise ValueError(
                f"--patience {self.patience} stops on the validation loss, which only "
                "--keep-best tracks; add --keep-best --eval-every N, or drop --patience"
            )
        for name in ("lr", "weight_decay", "converge_loss", "max_grad_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"--{_flag(name)} {value!r} must be a finite number >= 0")
        if self.lr == 0:
            raise ValueError("--lr 0 trains nothing; pass a positive learning rate")
        for name in ("a_lr", "b_lr"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0
            ):
                raise ValueError(
                    f"--{_flag(name)} {value!r} must be a finite number > 0, or none for "
                    "--lr's value"
                )
        if self.lora_r == 0 and (self.lora_alpha is not None or self.lora_targets):
            raise ValueError("--lora-alpha / --lora-targets need --lora-r R > 0")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"--lora-alpha {self.lora_alpha!r} must be > 0")
        if self.mixed_precision is not None and self.mixed_precision not in (
            MIXED_PRECISION_CHOICES
        ):
            raise ValueError(
                f"--mixed-precision {self.mixed_precision!r} is not one of "
                f"{', '.join(MIXED_PRECISION_CHOICES)}"
            )
        if self.resume and self.overwrite:
            raise ValueError(
                "--resume continues the run in --output-dir, --overwrite "
                "replaces it; pass one of them"
            )
        if self.resume and not self.checkpoints:
            raise ValueError("--resume needs checkpoints; drop --no-checkpoints")
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            raise ValueError(f"--gguf-file {self.gguf_file!r} must name a .gguf file")
        if not str(self.output_dir).strip():
            raise ValueError("--output-dir is empty; pass a folder for the run's files")


def fields_with(role: str) -> tuple[str, ...]:
    """The FinetuneConfig fields playing ``role`` (one of ``ROLES``), in field order."""
    if role not in ROLES:
        raise ValueError(f"unknown field role {role!r}; roles: {', '.join(ROLES)}")
    return tuple(f.name for f in dataclasses.fields(FinetuneConfig) if role in f.metadata["roles"])


def grid_fields() -> dict[str, str]:
    """Fields the sweep sets for each cell -> the recipe key or flag that sets them."""
    return {
        f.name: f.metadata["grid"]
        for f in dataclasses.fields(FinetuneConfig)
        if "grid" in f.metadata
    }


def hashed_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of a config's settings (``to_dict()``) that says what a run computes:
    without the ``UNHASHED`` fields."""
    unhashed = fields_with(UNHASHED)
    kept = {k: v for k, v in settings.items() if k not in unhashed}
    defaults = {f.name: _default(f) for f in dataclasses.fields(FinetuneConfig)}
    for name in fields_with(HASHED_WHEN_SET):
        if name in kept and kept[name] == defaults[name]:
            del kept[name]
    for new, (old, old_value) in RENAMED.items():
        if new in kept:
            kept[old] = old_value(kept.pop(new))
    return kept


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(f"--{_flag(name)} {value!r} must be an integer >= {minimum}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


# -- argparse from the dataclass -------------------------------------------------


def _parse_pair(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a Python literal when it is one (5, 0.1, True)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


class _PairsAction(argparse.Action):
    """Repeatable ``--flag KEY=VALUE`` collected into a dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        pairs = dict(getattr(namespace, self.dest) or {})
        key, value = values
        pairs[key] = value
        setattr(namespace, self.dest, pairs)


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; other annotations unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args and typing.get_origin(annotation) is not dict else annotation


def _none_or(kind: type) -> Any:
    """An argparse type for an optional number: ``none`` gives None."""

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and {} (the field's help says what they mean)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, {}) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser(cls: type = FinetuneConfig, prog: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one flag per dataclass field (``--n-train`` for
    ``n_train``); the help and defaults come from the fields."""
    parser = argparse.ArgumentParser(
        prog=prog, description=config_description(cls), formatter_class=HelpFormatter
    )
    add_arguments(parser, cls)
    return parser


def config_description(cls: type = FinetuneConfig) -> str:
    """The first line of the dataclass's docstring: its parser's description."""
    return (cls.__doc__ or "").strip().splitlines()[0]


def add_arguments(parser: argparse.ArgumentParser, cls: type = FinetuneConfig) -> None:
    """One flag per dataclass field on ``parser`` (``--n-train`` for ``n_train``), in the
    fields' groups; the help and defaults come from the fields."""
    hints = typing.get_type_hints(cls)
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        flag = meta.get("flag", "--" + _flag(f.name))
        kind = _base_type(hints[f.name])
        default = _default(f)
        group = groups.get(meta.get("group"), parser)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta.get("help")}
        if kind is bool:
            if "negative" in meta:  # two flags, e.g. --pretrained / --from-scratch (default)
                group.add_argument(flag, action="store_true", **kwargs)
                negative, negative_help = meta["negative"]
                kwargs.update(help=negative_help, default=argparse.SUPPRESS)
                group.add_argument(negative, action="store_false", **kwargs)
            else:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(kind) is dict:
            group.add_argument(
                flag, type=_parse_pair, action=_PairsAction, metavar="KEY=VALUE", **kwargs
            )
        else:
            optional = type(None) in typing.get_args(hints[f.name]) and kind in (int, float)
            kind = _none_or(kind) if optional else kind
            group.add_argument(flag, type=kind, metavar=f.name.upper(), **kwargs)


def parse_config(argv: list[str] | None = None, prog: str | None = None) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from command-line arguments; a bad value exits with
    argparse's usage line and the config's own message."""
    parser = build_parser(FinetuneConfig, prog=prog)
    args = parser.parse_args(argv)
    try:
        return FinetuneConfig(**vars(args))
    except ValueError as err:
        parser.error(str(err))


def config_path(output_dir: str | Path) -> Path:
    """Where a run stores its config, to check that ``--resume`` continues the same run."""
    return Path(output_dir) / "run_config.json"
