"""Linear probes of hidden states: at which layer is the relation linearly readable,
on symbols the model never saw?

A probe in the sense of Alain & Bengio (2016), with the controls of Hewitt & Liang
(2019): for each layer, a linear classifier is fit on the hidden states of the
training split's rows and scored on the test split, whose symbols are disjoint from
the training ones (``probe.render``), so a probe that memorized symbols scores chance::

    dsd = probe.render("same_different", n_train=256, n_val=0, n_test=256, tokenizer=tok)
    df = probe.linear_probe(model, dsd)             # one row per layer
    df[["layer", "test", "random_test", "control_test", "selectivity"]]

What is predicted, per label kind:

- regression labels with two values (``same_different``, ``aba_vs_abb``, ``var_assign``:
  ±1): the class, by scikit-learn's ``LogisticRegressionCV``; the score is accuracy;
- regression labels with more values: the value, by ``RidgeCV``; the score is R²;
- symbolic labels (the answer is one of the row's symbols): *which* of the row's
  wildcards holds the answer (its index in the template), by ``LogisticRegressionCV``;
  the score is accuracy over the row's candidate symbols (classes that are no wildcard
  of the row's template are never predicted). A task whose rows have one candidate
  (``copy``) has nothing to choose and is refused.

Both classifiers standardize the features and choose their regularization by their own
cross-validation on the training rows (``CS`` strengths, ``CV_FOLDS`` folds).

The controls (``control=``):

- ``"random"``: the same probe on the same architecture with fresh weights
  (``probe.models.build.fresh_weights``: ``build_model(..., pretrained=False)``'s draw,
  under ``seed``); columns ``random_train``, ``random_test``;
- ``"shuffle"``: control labels: the labels permuted across rows within each split
  (seeded), so no input carries its label. (Hewitt & Liang's control labels are a
  random function of the word type; on unseen symbols such a function cannot be learnt,
  and with the catalogue's labels a function of the template, shuffling within a
  template changes nothing; a permutation across rows is what is left.) Its train score
  is what the probe fits without any signal (high when rows are fewer than
  dimensions), its test score chance up to noise; ``selectivity`` = ``test`` −
  ``control_test`` (and ``random_selectivity`` for the random twin).

Features are the model's own ``output_hidden_states`` (layer 0: the embeddings; layer
``k``: after block ``k``; an encoder-decoder's encoder), read at ``position``:
``"readout"`` (each row's last real token: the readout token) or ``"mean"`` (the mean
over its real tokens). They are computed once per (model, split, position) and kept in
memory for as long as the model lives.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from probe.analysis import CONTROLS, POSITIONS
from probe.data.render import dataset_task, task_info
from probe.models.build import FIT_ADVICE, check_ids_fit

CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strengths LogisticRegressionCV tries
RIDGE_ALPHAS = tuple(10.0**k for k in range(-3, 5))
CV_FOLDS = 3
SPLITS = ("train", "test")

# model -> {(split fingerprint, rows, position, twin seed or None): [rows, layers, width]}
_FEATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# -- checks ---------------------------------------------------------------------------


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def n_hidden_layers(model: nn.Module) -> int:
    """Blocks of ``model`` (``hidden_states`` has one more entry: the embeddings); a clear
    error for a model without hidden states (the MLP baselines)."""
    config = getattr(_base(model), "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if config is None or getattr(config, "model_type", None) == "mlp" or not isinstance(n, int):
        raise ValueError(
            f"{type(model).__name__} has no per-layer hidden states; probe.linear_probe needs "
            "a transformers model (gpt2, llama, bert, t5, paper, offline:smollm2, ...), not an "
            "MLP baseline"
        )
    return n


def check_layers(layers: Iterable[int] | None, n_layers: int) -> list[int]:
    """``layers`` as a sorted list within ``0..n_layers`` (0: the embeddings); None: all."""
    if layers is None:
        return list(range(n_layers + 1))
    if isinstance(layers, (int, str)):
        layers = [layers]
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ValueError(
                f"layers: {layer!r} is not an integer; pass layer numbers 0..{n_layers} "
                "(0: the embeddings, k: after block k), or None for all"
            )
        if not 0 <= layer <= n_layers:
            raise ValueError(
                f"layers: {layer} is out of range; this model has layers 0..{n_layers} "
                f"(0: the embeddings, {n_layers}: the last block's output)"
            )
        out.append(int(layer))
    if not out:
        raise ValueError(f"layers is empty; pass layer numbers 0..{n_layers}, or None for all")
    return sorted(set(out))


def check_controls(control: str | Iterable[str] | None) -> tuple[str, ...]:
    if control is None:
        return ()
    chosen = (control,) if isinstance(control, str) else tuple(control)
    for c in chosen:
        if c not in CONTROLS:
            raise ValueError(
                f"control={c!r}; pass some of {CONTROLS} ('random': the same architecture "
                "with fresh weights; 'shuffle': labels permuted across rows), or None"
            )
    return tuple(c for c in CONTROLS if c in chosen)


def _check_dataset(dataset: Any) -> None:
    if not hasattr(dataset, "keys") or any(s not in dataset for s in SPLITS):
        have = list(dataset) if hasattr(dataset, "keys") else type(dataset).__name__
        raise ValueError(
            f"dataset: {have}; probe.linear_probe needs a rendered DatasetDict with 'train' "
            "and 'test' splits (probe.render or probe.load_dataset)"
        )


def _check_vocabulary(model: nn.Module, dataset: Any) -> None:
    """The train and test splits' ids fit the model's embedding: ``check_ids_fit``, the
    check every analysis runs, with the dataset's tokenizer and both ways to match."""
    tokenizer = task_info(dataset)["tokenizer"]
    advice = (
        f"the dataset's tokenizer is {tokenizer!r}; {FIT_ADVICE}; or render it "
        "with the model's own tokenizer (probe.render(..., tokenizer=...)), or build the "
        "model with the dataset's (probe.build_model(..., "
        "tokenizer=probe.dataset_tokenizer(dsd)))"
    )
    check_ids_fit(model, {split: dataset[split] for split in SPLITS}, advice)


# -- labels ---------------------------------------------------------------------------


def probe_targets(dataset: Any, split: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """What the probe predicts on ``split``: ``(y, candidates, metric)``.

    Two-valued regression labels: the labels as classes, ``candidates`` None, metric
    ``"accuracy"``; other regression labels: the values, ``"r2"``. Symbolic labels: the
    index of the wildcard holding the answer (constant answers after the wildcards),
    ``candidates`` ``[rows, classes]`` marking the classes each row may take.
    """
    task = dataset_task(dataset)
    rows = dataset[split].with_format("numpy", columns=["labels", "template"])[:]
    labels, template = np.asarray(rows["labels"]), np.asarray(rows["template"])
    if task.label_kind == "regression":
        values = np.unique(np.asarray(task.labels, dtype=np.float64))
        if len(values) == 2:
            return labels.astype(np.float64), None, "accuracy"
        return labels.astype(np.float64), None, "r2"
    n_wild = max(t.n_wildcards for t in task.templates)
    constants = sorted({y for y, j in zip(task.labels, task.label_wildcard, strict=True) if j < 0})
    per_template = np.array(
        [
            j if j >= 0 else n_wild + constants.index(y)
            for y, j in zip(task.labels, task.label_wildcard, strict=True)
        ]
    )
    allowed = np.zeros((len(task.templates), n_wild + len(constants)), dtype=bool)
    for t, tpl in enumerate(task.templates):
        allowed[t, : tpl.n_wildcards] = True
        allowed[t, n_wild:] = True
    if allowed.sum(1).max() < 2:
        raise ValueError(
            f"task {task.name!r}: every row has one candidate answer, so a probe of which "
            "symbol is the answer has nothing to choose; probe a task whose rows hold two or "
            "more symbols (var_copy, same_different, aba_vs_abb, ...)"
        )
    return per_template[template], allowed[template], "accuracy"


def control_targets(y: np.ndarray, seed: int, split: str) -> np.ndarray:
    """The control labels: ``y`` permuted across rows (seeded, one permutation per split)."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    return y[rng.permutation(len(y))]


def chance(y_train: np.ndarray, y_test: np.ndarray, candidates, metric: str) -> float:
    """Accuracy of always answering the training split's most frequent class (over the
    row's candidates: a uniform guess among them, whichever is larger); 0 for R²."""
    if metric == "r2":
        return 0.0
    values, counts = np.unique(y_train, return_counts=True)
    majority = float(np.mean(y_test == values[counts.argmax()]))
    if candidates is None:
        return majority
    return max(majority, float(np.mean(1.0 / candidates.sum(1))))


# -- features -------------------------------------------------------------------------


@torch.no_grad()
def hidden_features(
    model: nn.Module,
    rows: Any,
    position: str = "readout",
    batch_size: int = 64,
    layers: Sequence[int] | None = None,
) -> np.ndarray:
    """``[rows, layers, width]`` float32: the hidden states of rendered ``rows`` (a split)
    at ``position``, for every layer (``layers``: those only)."""
    from probe.analysis.attention import run_on_rows

    cols = rows.with_format("numpy", columns=["input_ids", "attention_mask"])[:]
    ids, mask = np.asarray(cols["input_ids"]), np.asarray(cols["attention_mask"])
    device = next(model.parameters()).device
    last = mask.sum(1) - 1
    out = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(ids), batch_size):
            sl = slice(start, start + batch_size)
            b_mask = torch.as_tensor(mask[sl], device=device)
            states = run_on_rows(
                model, torch.as_tensor(ids[sl], device=device), b_mask, "hidden_states"
            )
            if not states:
                raise ValueError(f"{type(model).__name__} returned no hidden states")
            picked = states if layers is None else [states[k] for k in layers]
            h = torch.stack([s.float() for s in picked], dim=1)  # [batch, layers, seq, width]
            if position == "readout":
                h = h[torch.arange(h.shape[0]), :, torch.as_tensor(last[sl], device=device)]
            else:
                w = b_mask.float()[:, None, :, None]
                h = (h * w).sum(2) / w.sum(2)
            out.append(h.cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def _cached_features(model, twin_seed, rows, position, batch_size) -> np.ndarray:
    """Features of ``model`` (``twin_seed`` not None: of its fresh-weight twin, built
    here and dropped after) on ``rows``, once per (model, rows, position)."""
    from probe.models.build import fresh_weights

    store = _FEATURES.setdefault(_base(model), {})
    key = (rows._fingerprint, len(rows), position, twin_seed)
    if key not in store:
        source = model if twin_seed is None else fresh_weights(model, seed=twin_seed)
        store[key] = hidden_features(source, rows, position, batch_size)
    return store[key]


# -- the probe ------------------------------------------------------------------------


def _classifier(metric: str, y: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if metric == "r2":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    folds = min(CV_FOLDS, int(np.unique(y, return_counts=True)[1].min()))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=CS,
            cv=cv,
            l1_ratios=(0.0,),  # L2
            scoring="neg_log_loss",
            max_iter=1000,
            tol=1e-3,
            use_legacy_attributes=False,
        ),
    )


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    metric: str,
    seed: int = 0,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, float]:
    """``(train, test)`` score of a linear probe fit on ``x_train``; ``candidates``
    (train, test): the classes each row may take (others are never predicted)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import r2_score

    if metric == "r2":
        clf = _classifier(metric, y_train, seed).fit(x_train, y_train)
        return r2_score(y_train, clf.predict(x_train)), r2_score(y_test, clf.predict(x_test))
    classes = np.unique(y_train)
    if len(classes) == 1:  # one class in training: it is the only answer
        return 1.0, float(np.mean(y_test == classes[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = _classifier(metric, y_train, seed).fit(x_train, y_train)
    scores = []
    for i, (x, y) in enumerate(((x_train, y_train), (x_test, y_test))):
        if candidates is None:
            pred = clf.predict(x)
        else:
            proba = clf.predict_proba(x)
            allowed = candidates[i][:, clf.classes_.astype(int)]
            pred = clf.classes_[np.where(allowed, proba, -1.0).argmax(1)]
        scores.append(float(np.mean(pred == y)))
    return scores[0], scores[1]


def linear_probe(
    model: nn.Module,
    dataset: Any,
    *,
    layers: Iterable[int] | None = None,
    position: str = "readout",
    n_train: int | None = None,
    control: str | Iterable[str] | None = CONTROLS,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> pd.DataFrame:
    """Per-layer linear probes of ``model``'s hidden states (see the module docstring).

    ``dataset``: a rendered ``DatasetDict`` with ``train`` and ``test`` splits, in the
    model's vocabulary. ``layers``: layer numbers (0: the embeddings), None: all.
    ``n_train``: the probe's training rows (the first ones of ``train``; None: all),
    for the probe's own sample complexity. ``control``: some of ``CONTROLS``, or None.
    ``seed``: the random twin's weights, the control permutation and the CV folds.

    Returns one row per layer: ``layer``, ``metric``, ``chance``, ``n_train``,
    ``n_test``, ``train``, ``test`` and, with the controls, ``control_train``,
    ``control_test``, ``selectivity``, ``random_train``, ``random_test``,
    ``random_control_test``, ``random_selectivity``.
    """
    from tqdm.auto import tqdm

    from probe.checks import check_count

    if position not in POSITIONS:
        raise ValueError(
            f"position={position!r}; pass one of {POSITIONS} ('readout': each row's last "
            "real token, 'mean': the mean over its real tokens)"
        )
    controls = check_controls(control)
    seed = check_count(seed, "seed")
    _check_dataset(dataset)
    chosen = check_layers(layers, n_hidden_layers(model))
    train_rows, test_rows = dataset["train"], dataset["test"]
    if n_train is not None:
        n_train = check_count(n_train, "n_train", low=2)
        if n_train > len(train_rows):
            raise ValueError(
                f"n_train={n_train} but the train split has {len(train_rows)} rows; pass at "
                f"most {len(train_rows)}, or render more"
            )
        train_rows = train_rows.select(range(n_train))
    if len(test_rows) == 0:
        raise ValueError("the test split has no rows; render it with n_test > 0")
    _check_vocabulary(model, dataset)
    y_tr, cand_tr, metric = probe_targets(dataset, "train")
    y_te, cand_te, _ = probe_targets(dataset, "test")
    y_tr, cand_tr = y_tr[: len(train_rows)], None if cand_tr is None else cand_tr[: len(train_rows)]
    candidates = None if cand_tr is None else (cand_tr, cand_te)
    if metric == "accuracy" and len(np.unique(y_tr)) < 2:
        raise ValueError(
            f"the {len(train_rows)} training rows hold one class only; pass a larger "
            "n_train (or render more rows) so the probe sees every class"
        )

    sources = {"": None, **({"random_": seed} if "random" in controls else {})}
    n = len(train_rows)  # features of the whole train split, cached, then its first n rows
    feats = {
        prefix: (
            _cached_features(model, twin, dataset["train"], position, batch_size)[:n],
            _cached_features(model, twin, test_rows, position, batch_size),
        )
        for prefix, twin in sources.items()
    }
    shuffled = (control_targets(y_tr, seed, "train"), control_targets(y_te, seed, "test"))
    rows = []
    for layer in tqdm(chosen, desc="linear probe", unit="layer", disable=not progress):
        row: dict[str, Any] = {
            "layer": layer,
            "metric": metric,
            "chance": chance(y_tr, y_te, cand_te, metric),
            "n_train": len(train_rows),
            "n_test": len(test_rows),
        }
        for prefix, (f_tr, f_te) in feats.items():
            x_tr, x_te = f_tr[:, layer], f_te[:, layer]
            train, test = fit_probe(x_tr, y_tr, x_te, y_te, metric, seed, candidates)
            row[f"{prefix}train"], row[f"{prefix}test"] = train, test
            if "shuffle" in controls:
                c_train, c_test = fit_probe(
                    x_tr, shuffled[0], x_te, shuffled[1], metric, seed, candidates
                )
                if not prefix:
                    row["control_train"] = c_train
                row[f"{prefix}control_test"] = c_test
                row[f"{prefix}selectivity"] = test - c_test
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(
        task=dataset_task(dataset).name,
        position=position,
        seed=seed,
        controls=controls,
        model=type(_base(model)).__name__,
    )
    return df
