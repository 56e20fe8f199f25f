"""LoRA adapters on a built model (peft), with the a/b scalings and a regression
head left to train in full."""

from __future__ import annotations

import warnings

from torch import nn

from probe.models.architectures import arch_spec
from probe.models.identity import MODULE_NAME


def with_lora(
    model: nn.Module,
    r: int,
    alpha: int | None = None,
    targets: str | None = None,
    *,
    ab: bool = False,
    regression: bool = False,
) -> nn.Module:
    """``model`` wrapped with rank-``r`` LoRA adapters (``alpha`` defaults to ``r``) on
    ``targets`` (comma-separated names of linear layers; peft's per-architecture default
    when ``None``). ``ab``: the injected a/b scalings train in full; ``regression``:
    so does the model's regression head."""
    from peft import LoraConfig, get_peft_model

    full = [MODULE_NAME] if ab else []
    if regression:  # (LoRA on an MLP baseline is refused earlier)
        head = arch_spec(model).regression_head
        full += [head] if isinstance(getattr(model, head, None), nn.Module) else []
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)})
    names = None  # peft's per-architecture default
    if targets:
        names = [t.strip() for t in targets.split(",") if t.strip()]
        missing = [t for t in names if t not in linear]
        if missing:
            raise ValueError(
                f"--lora-targets: {', '.join(missing)} names no linear layer of "
                f"{type(model).__name__}; its linear layers: {', '.join(linear)}"
            )
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha or r,
        target_modules=names,
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
