"""probe.train.metrics on hand-made tensors: the numbers a reader can check by hand."""

import math

import pytest
import torch

from probe.train.metrics import MetricSums, loss_fn, per_sample_error, per_sample_loss


def test_regression_loss_is_squared_error_and_error_is_sign_mismatch():
    logits = torch.tensor([[0.5], [-2.0], [0.0], [1.0]])
    labels = torch.tensor([1.0, 1.0, -1.0, -1.0])
    assert per_sample_loss(logits, labels, "regression").tolist() == [0.25, 9.0, 1.0, 4.0]
    # right sign, wrong sign, zero (undecided: wrong), wrong sign
    assert per_sample_error(logits, labels, "regression").tolist() == [0.0, 1.0, 1.0, 1.0]
    assert loss_fn(logits, labels, "regression").item() == pytest.approx(14.25 / 4)


def test_regression_accepts_flat_logits():
    logits, labels = torch.tensor([0.5, -0.5]), torch.tensor([1.0, -1.0])
    assert per_sample_loss(logits, labels, "regression").tolist() == [0.25, 0.25]
    assert per_sample_error(logits, labels, "regression").tolist() == [0.0, 0.0]


def test_symbolic_loss_is_cross_entropy_over_the_whole_vocabulary():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    expected0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    loss = per_sample_loss(logits, labels, "symbolic")
    assert loss[0].item() == pytest.approx(expected0)
    assert loss[1].item() == pytest.approx(math.log(3))


def test_symbolic_error_is_argmax_differs_from_label():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0], [0.0, 0.0, 9.0]])
    labels = torch.tensor([1, 2, 2])
    assert per_sample_error(logits, labels, "symbolic").tolist() == [0.0, 1.0, 0.0]


def test_losses_are_float32_for_half_precision_logits():
    logits = torch.tensor([[1.0, 0.0]], dtype=torch.bfloat16)
    loss = per_sample_loss(logits, torch.tensor([0]), "symbolic")
    assert loss.dtype == torch.float32


@pytest.mark.parametrize(
    "logits, labels, kind",
    [
        (torch.zeros(3, 2), torch.zeros(3), "regression"),  # two outputs per sample
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), "symbolic"),  # no vocab dim
        (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), "symbolic"),  # batch differs
    ],
)
def test_shape_mismatches_are_refused(logits, labels, kind):
    with pytest.raises(ValueError, match="expected"):
        per_sample_loss(logits, labels, kind)


def test_unknown_label_kind_is_refused():
    with pytest.raises(ValueError, match="regression, symbolic"):
        per_sample_loss(torch.zeros(2, 1), torch.zeros(2), "classification")


def test_sums_weight_every_sample_once_across_uneven_batches():
    losses = torch.arange(10, dtype=torch.float32)
    errors = (losses % 3 == 0).float()
    sums = MetricSums()
    for lo, hi in [(0, 4), (4, 8), (8, 10)]:  # a partial last batch
        sums.add(losses[lo:hi], errors[lo:hi])
    result = sums.result("test")
    assert result == {"test_loss": 4.5, "test_error": 0.4, "test_samples": 10}


def test_empty_sums_give_nan_means():
    result = MetricSums().result("val")
    assert result["val_samples"] == 0
    assert math.isnan(result["val_loss"]) and math.isnan(result["val_error"])


def test_sums_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="must"):
        MetricSums().add(torch.zeros(3), torch.zeros(2))
