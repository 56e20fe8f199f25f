"""``FinetuneConfig``: one run's settings, shared by the Python API and the command line.

Each field carries ``metadata={"help": ...}`` (as peft's configs do), so
:func:`build_parser` makes the ``argparse`` parser of ``probe finetune`` and
``accelerate launch probe/finetune.py`` from the same definition that
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

AB_CHOICES = ("none", "kq", "vo", "kq,vo")
# the a/b scalings' own AdamW learning rates (see FinetuneConfig.a_lr)
A_LR = 1e-2
B_LR = 3e-2
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16", "fp8")
# The paper's small transformer, used from scratch unless the shape is given.
SMALL_SHAPE = {"n_layer": 2, "n_embd": 128, "n_head": 4}
DEFAULT_TASK = "aba_vs_abb"
DEFAULT_SIZES = {"n_train": 256, "n_val": 256, "n_test": 1000}


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


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
            "file, or an MLP baseline name (see probe.build_model)"
        ),
    )
    gguf_file: str | None = field(
        default=None, metadata=_help("GGUF file name inside the --model folder or Hub repo")
    )
    from_scratch: bool = field(
        default=True,
        metadata=_help(
            "fresh weights from the model's config (the paper's setting)",
            negative=("--pretrained", "load the checkpoint's weights (not from scratch)"),
        ),
    )
    n_layer: int | None = field(
        default=None,
        metadata=_help(
            f"layers, from scratch only (default: {SMALL_SHAPE['n_layer']}; "
            "the MLP baselines keep their own)"
        ),
    )
    n_embd: int | None = field(
        default=None,
        metadata=_help(
            f"model width, from scratch only (default: {SMALL_SHAPE['n_embd']}; "
            "the MLP baselines keep their own)"
        ),
    )
    n_head: int | None = field(
        default=None,
        metadata=_help(f"attention heads, from scratch only (default: {SMALL_SHAPE['n_head']})"),
    )
    model_overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "a further config override passed to build_model, e.g. resid_pdrop=0.0 (repeatable)",
            flag="--model-override",
        ),
    )
    ab: str = field(
        default="none",
        metadata=_help(
            "identity scalings injected into every head: none, kq (a_h X Xᵀ on the "
            "logits), vo (b_h A_h X on the output) or kq,vo"
        ),
    )
    # -- LoRA (peft)
    lora_r: int = field(
        default=0, metadata=_help("LoRA rank; 0 trains every weight (full fine-tuning)")
    )
    lora_alpha: float | None = field(
        default=None, metadata=_help("LoRA alpha (default: the rank, i.e. scale 1)")
    )
    lora_targets: str | None = field(
        default=None,
        metadata=_help(
            "comma-separated module names LoRA adapts (default: peft's per-architecture "
            "choice, e.g. c_attn for GPT-2, q,v for T5, q_proj,v_proj for Llama)"
        ),
    )
    # -- data
    task: str | None = field(
        default=None,
        metadata=_help(
            "a catalogue task, see `probe tasks`, optionally with parameters: "
            f"majority_k:k=5 (default: {DEFAULT_TASK})"
        ),
    )
    task_params: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help("a catalogue task's parameter, e.g. k=5 (repeatable)", flag="--task-param"),
    )
    dataset: str | None = field(
        default=None,
        metadata=_help("a rendered dataset: a Hub-layout folder or a Hub id (instead of --task)"),
    )
    dataset_config: str | None = field(
        default=None, metadata=_help("config name inside --dataset", flag="--config")
    )
    tokenizer: str | None = field(
        default=None,
        metadata=_help(
            "tokenizer to render --task with: a Hub id or folder (default: probe's "
            "SymbolTokenizer from scratch, the model's own tokenizer with --pretrained)"
        ),
    )
    n_train: int | None = field(
        default=None,
        metadata=_help(
            "training samples (= train alphabet size; with --dataset: its first N rows) "
            f"(default: {DEFAULT_SIZES['n_train']}; with --dataset: all)"
        ),
    )
    n_val: int | None = field(
        default=None,
        metadata=_help(
            "validation samples, 0 for none (with --dataset: its first N rows) "
            f"(default: {DEFAULT_SIZES['n_val']}; with --dataset: all)"
        ),
    )
    n_test: int | None = field(
        default=None,
        metadata=_help(
            "test samples, on unseen symbols (with --dataset: its first N rows) "
            f"(default: {DEFAULT_SIZES['n_test']}; with --dataset: all)"
        ),
    )
    seed: int = field(default=0, metadata=_help("seed of the data, the weights and the order"))
    # -- optimization
    lr: float = field(default=1e-3, metadata=_help("AdamW learning rate (constant)"))
    a_lr: float | None = field(
        default=A_LR,
        metadata=_help(
            "AdamW learning rate of the KQ scalings a (--ab kq). Adam moves a scalar by "
            "about its learning rate per step, so at the matrices' 1e-3 a stays near 0 "
            "while the network memorizes; a scales X Xᵀ (diagonal ~ width), so it takes "
            "a smaller step than b. 'none': same as --lr"
        ),
    )
    b_lr: float | None = field(
        default=B_LR,
        metadata=_help(
            "AdamW learning rate of the VO scalings b (--ab vo); see --a-lr. 'none': same as --lr"
        ),
    )
    weight_decay: float = field(
        default=0.0,
        metadata=_help(
            "AdamW decoupled weight decay, on weight matrices only: never on embeddings "
            "(the rows of unseen symbols get no gradient, decay would only shrink them), "
            "biases, norms or a/b"
        ),
    )
    batch_size: int = field(default=64, metadata=_help("training batch size per process"))
    eval_batch_size: int = field(default=512, metadata=_help("evaluation batch size per process"))
    max_steps: int = field(
        default=1000, metadata=_help("stop after this many optimizer steps (0: no step limit)")
    )
    epochs: int = field(
        default=0, metadata=_help("stop after this many epochs (0: as many as the steps need)")
    )
    converge_loss: float = field(
        default=1e-3,
        metadata=_help(
            "early stop once the mean training loss over the last --converge-window steps "
            "is at most this (0: never stop early)"
        ),
    )
    converge_window: int = field(
        default=50, metadata=_help("steps averaged by the early-stopping rule")
    )
    max_grad_norm: float = field(
        default=0.0, metadata=_help("clip the gradient norm to this (0: no clipping)")
    )
    mixed_precision: str | None = field(
        default=None,
        metadata=_help(
            "no, fp16, bf16 or fp8 (default: accelerate's setting, e.g. "
            "`accelerate launch --mixed_precision bf16`)"
        ),
    )
    compile: bool = field(
        default=False,
        metadata=_help(
            "torch.compile the training step's forward and backward (same numbers up to "
            "float rounding; falls back with a warning where it fails). Off by default: "
            "its warm-up (tens of seconds on a CPU) outweighs what it saves on a cell of a "
            "few hundred steps (bench/finetune.py --compile measures both)"
        ),
    )
    # -- evaluation and outputs
    eval_every: int = field(
        default=0, metadata=_help("validate every N steps (0: only at the end)")
    )
    output_dir: str = field(
        default="runs/finetune",
        metadata=_help("run folder: results.jsonl, checkpoints/, the final model"),
    )
    overwrite: bool = field(
        default=False, metadata=_help("replace a previous run's files in --output-dir")
    )
    resume: bool = field(
        default=False,
        metadata=_help("continue the run in --output-dir from its last checkpoint"),
    )
    checkpoint_every: int = field(
        default=500,
        metadata=_help("save a checkpoint every N steps, and at the end (0: only at the end)"),
    )
    checkpoints: bool = field(
        default=True, metadata=_help("save checkpoints (--no-checkpoints: none at all)")
    )
    save_model: bool = field(
        default=False,
        metadata=_help("save the trained model and tokenizer to OUTPUT_DIR/model"),
    )
    log_with: str | None = field(
        default=None,
        metadata=_help("comma-separated accelerate trackers, e.g. tensorboard (default: none)"),
    )
    log_every: int = field(default=10, metadata=_help("log the training loss every N steps"))
    progress: bool = field(
        default=True,
        metadata=_help("show a progress bar and the closing summary line (main process)"),
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
        self._check_values()

    # -- derived views
    @property
    def kq(self) -> bool:
        return "kq" in self.ab.split(",")

    @property
    def vo(self) -> bool:
        return "vo" in self.ab.split(",")

    @property
    def shape_overrides(self) -> dict[str, int]:
        """The from-scratch shape in GPT-2's names (n_layer, n_embd, n_head)."""
        if not self.from_scratch:
            return {}
        return {k: getattr(self, k) or v for k, v in SMALL_SHAPE.items()}

    @property
    def trackers(self) -> list[str]:
        return [t.strip() for t in (self.log_with or "").split(",") if t.strip()]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
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
        if self.ab not in AB_CHOICES and sorted(parts) != ["kq", "vo"]:
            raise ValueError(f"--ab {self.ab!r} is not one of {', '.join(AB_CHOICES)}")
        self.ab = "kq,vo" if sorted(parts) == ["kq", "vo"] else self.ab
        positive = ["batch_size", "eval_batch_size", "converge_window", "log_every"]
        non_negative = ["max_steps", "epochs", "eval_every", "checkpoint_every", "lora_r"]
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        for name in non_negative:
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.n_val is not None:
            _check_int("n_val", self.n_val, minimum=0)
        for name in ("n_layer", "n_embd", "n_head"):
            value = getattr(self, name)
            if value is None:
                continue
            if not self.from_scratch:
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


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and {} (the field's help says what they mean)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, {}) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser(cls: type = FinetuneConfig, prog: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one flag per dataclass field (``--n-train`` for
    ``n_train``); the help and defaults come from the fields."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(cls.__doc__ or "").strip().splitlines()[0],
        formatter_class=_HelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        flag = meta.get("flag", "--" + _flag(f.name))
        kind = _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta.get("help")}
        if kind is bool:
            if "negative" in meta:  # two flags, e.g. --from-scratch (default) / --pretrained
                parser.add_argument(flag, action="store_true", **kwargs)
                negative, negative_help = meta["negative"]
                kwargs.update(help=negative_help, default=argparse.SUPPRESS)
                parser.add_argument(negative, action="store_false", **kwargs)
            else:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(kind) is dict:
            parser.add_argument(
                flag, type=_parse_pair, action=_PairsAction, metavar="KEY=VALUE", **kwargs
            )
        else:
            optional = type(None) in typing.get_args(hints[f.name]) and kind in (int, float)
            kind = _none_or(kind) if optional else kind
            parser.add_argument(flag, type=kind, metavar=f.name.upper(), **kwargs)
    return parser


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
