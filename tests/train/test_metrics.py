"""probe.train.metrics on hand-made tensors: the numbers a reader can check by hand."""

import math

import pytest
import torch

from probe.train.metrics import load_metric, loss_fn, per_sample_error, per_sample_loss


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


def test_the_evaluate_module_averages_every_sample_once_across_uneven_batches():
    metric = load_metric("regression")
    preds = torch.tensor([[0.5], [-1.0], [2.0], [0.0], [1.0]])
    labels = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0])
    for lo, hi in [(0, 2), (2, 4), (4, 5)]:  # a partial last batch
        metric.add_batch(predictions=preds[lo:hi].numpy(), references=labels[lo:hi].numpy())
    result = metric.compute()
    # squared errors 0.25, 0, 9, 1, 0; wrong signs at 2.0 vs -1 and 0.0 vs +1
    assert result == {"loss": pytest.approx(10.25 / 5), "error": 0.4, "samples": 5}


def test_the_symbolic_metric_is_cross_entropy_and_argmax_error():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    labels = torch.tensor([0, 1])
    result = load_metric("symbolic").compute(predictions=logits.numpy(), references=labels)
    expected = float(torch.nn.functional.cross_entropy(logits, labels))
    assert result == {"loss": pytest.approx(expected), "error": 0.5, "samples": 2}


def test_the_metric_refuses_an_unknown_label_kind():
    with pytest.raises(ValueError, match="regression, symbolic"):
        load_metric("classification")


def test_the_metric_serves_as_a_trainers_compute_metrics(tmp_path):
    from datasets import Dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=12, num_labels=1)
    config.pad_token_id, config.problem_type = 0, "regression"
    model = GPT2ForSequenceClassification(config)
    data = Dataset.from_dict(
        {"input_ids": [[1, 2, 3]] * 6, "attention_mask": [[1, 1, 1]] * 6, "labels": [1.0, -1.0] * 3}
    )
    metric = load_metric("regression")

    def compute_metrics(pred):
        return metric.compute(predictions=pred.predictions, references=pred.label_ids)

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_eval_batch_size=4)
    result = Trainer(
        model=model, args=args, eval_dataset=data, compute_metrics=compute_metrics
    ).evaluate()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(data["input_ids"])).logits
    labels = torch.tensor(data["labels"])
    assert result["eval_samples"] == 6
    assert result["eval_loss"] == pytest.approx(
        float(((out.squeeze(-1) - labels) ** 2).mean()), rel=1e-5
    )
    assert result["eval_error"] == pytest.approx(
        float((out.squeeze(-1).sign() != labels).float().mean())
    )
