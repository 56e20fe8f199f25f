"""Local metrics on unseen symbols: per-sample loss and error, and ``load_metric``, the
``evaluate`` module that averages them (``probe/train/unseen_symbols``).

Plain torch, nothing fetched at run time. Both label kinds read one answer per
sample:

- regression: ``logits`` ``[batch, 1]`` (or ``[batch]``), float ``labels``
  ``[batch]``; loss = squared error, error = the prediction's sign differs
  from the label's (``sign(0)`` is 0, so a zero prediction is an error
  against a ±1 label);
- symbolic: ``logits`` ``[batch, vocab]`` over the whole vocabulary, integer
  ``labels`` ``[batch]`` (token ids); loss = cross-entropy, error = the
  argmax differs from the label.

Losses are computed in float32 whatever the model's precision.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from probe.tasks.templates import LABEL_KINDS


def _check_kind(kind: str) -> None:
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind {kind!r} is not one of {', '.join(LABEL_KINDS)}")


def _regression_prediction(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[batch, 1]`` or ``[batch]`` -> ``[batch]`` float32."""
    if logits.dim() == 2 and logits.shape[-1] == 1:
        logits = logits.squeeze(-1)
    if logits.shape != labels.shape:
        raise ValueError(
            f"regression logits of shape {tuple(logits.shape)} do not match labels of shape "
            f"{tuple(labels.shape)}; expected [batch, 1] or [batch] with labels [batch]"
        )
    return logits.float()


def _check_symbolic(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"symbolic logits of shape {tuple(logits.shape)} and labels of shape "
            f"{tuple(labels.shape)}; expected [batch, vocab] and [batch]"
        )


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss of each sample, ``[batch]`` float32: squared error or cross-entropy."""
    _check_kind(kind)
    if kind == "regression":
        return (_regression_prediction(logits, labels) - labels.float()).square()
    _check_symbolic(logits, labels)
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def per_sample_error(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """1.0 where a sample is answered wrong, else 0.0, ``[batch]`` float32: a sign
    mismatch (regression) or an argmax over the vocabulary that is not the label."""
    _check_kind(kind)
    if kind == "regression":
        pred = _regression_prediction(logits, labels)
        return (torch.sign(pred) != torch.sign(labels.float())).float()
    _check_symbolic(logits, labels)
    return (logits.argmax(dim=-1) != labels.long()).float()


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The training loss: the mean of :func:`per_sample_loss` (a scalar)."""
    return per_sample_loss(logits, labels, kind).mean()


def load_metric(label_kind: str):
    """probe's unseen-symbol loss and error as an ``evaluate`` metric (config: the label
    kind), loaded from the module shipped in the package; works offline. In memory, so
    several processes never share its cache files."""
    import evaluate

    _check_kind(label_kind)
    path = Path(__file__).resolve().parent / "unseen_symbols" / "unseen_symbols.py"
    return evaluate.load(str(path), config_name=label_kind, keep_in_memory=True)
