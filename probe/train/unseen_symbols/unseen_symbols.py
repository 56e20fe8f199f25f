"""Loss and error on unseen symbols: probe's metric as a local ``evaluate`` module.

``probe.load_metric(label_kind)`` loads it (``evaluate.load`` on this file, offline);
probe's evaluation loop computes every results row's ``test_loss`` / ``test_error``
with it, and it serves as a ``transformers.Trainer``'s ``compute_metrics``.
"""

import datasets
import evaluate
import numpy as np
import torch

from probe.train.metrics import per_sample_error, per_sample_loss

_DESCRIPTION = """The mean per-sample loss and error of a model's answers at the readout
position. Config ``regression``: predictions are ``[batch, 1]`` (one number per
sample, as the readout and a Trainer's regression head give them), loss = squared error, error = the sign differs from the label's.
Config ``symbolic``: predictions are logits over the vocabulary (``[batch, vocab]``),
references token ids, loss = cross-entropy, error = the argmax is not the label.
Sums run in float64; per-sample values are computed in float32."""

_INPUTS = """
Args:
    predictions: the readout's output per sample.
    references: the labels (float for regression, token id for symbolic).
Returns:
    loss: mean per-sample loss; error: mean per-sample error; samples: how many.
"""

_FEATURES = {
    # the readout's [batch, 1] (a Trainer's regression logits are the same shape)
    "regression": datasets.Features(
        {
            "predictions": datasets.Sequence(datasets.Value("float32"), length=1),
            "references": datasets.Value("float32"),
        }
    ),
    "symbolic": datasets.Features(
        {
            "predictions": datasets.Sequence(datasets.Value("float32")),
            "references": datasets.Value("int64"),
        }
    ),
}


class UnseenSymbols(evaluate.Metric):
    def _info(self):
        if self.config_name not in _FEATURES:
            raise ValueError(
                f"config {self.config_name!r} is not a label kind; pass one of {sorted(_FEATURES)}"
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=_FEATURES[self.config_name],
        )

    def _compute(self, predictions, references):
        logits = torch.as_tensor(np.asarray(predictions, dtype=np.float32))
        labels = torch.as_tensor(np.asarray(references))
        if self.config_name == "regression":
            logits = logits.reshape(-1)
        loss = per_sample_loss(logits, labels, self.config_name)
        error = per_sample_error(logits, labels, self.config_name)
        n = int(loss.numel())
        return {
            "loss": float(loss.double().sum()) / n if n else float("nan"),
            "error": float(error.double().sum()) / n if n else float("nan"),
            "samples": n,
        }
