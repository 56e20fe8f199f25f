"""Template tasks rendered as tokenized Hugging Face datasets, saved in Hub layout.

``render(task, n_train, ...)`` samples each split from its own alphabet (train,
validation and test symbols are disjoint, so the test measures generalization
to unseen symbols) and returns a ``DatasetDict`` with the columns

==================  ======================================================
``input_ids``       the template's tokens, symbols substituted, then the
                    readout token; right-padded to the split's longest row
``attention_mask``  1 on real tokens
``labels``          float32 (regression) or int64 (symbolic: the answer's id)
``template``        the template's index in the task
``text``            the substituted template, tokens joined by spaces
==================  ======================================================

The readout token closes every row (``<out>`` in a :class:`SymbolTokenizer`,
the eos token, else the sep token, of other tokenizers): a causal model reads
its answer at the last real position, which is always the readout token.

Rendering never calls a tokenizer per sample: every symbol and regular token is
looked up once, and rows are assembled with numpy per template and handed to
Arrow without a Python-level copy (see ``bench/render.py``).

The symbols and token ids come from :mod:`probe.data.alphabets`; ``save_dataset`` /
``load_dataset`` (the Hub layout on disk) live in :mod:`probe.data.hub`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from probe.checks import check_count
from probe.data.alphabets import Alphabet, Vocab, symbol_vocab
from probe.data.tokenizer import (
    SymbolTokenizer,
    encode_each,
    load_tokenizer_by_name,
    symbol_range,
    tokenizer_name,
)
from probe.tasks.catalogue import resolve_task
from probe.tasks.templates import MAX_SAMPLES, TemplateTask

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# render's argument naming each split's alphabet
SYMBOL_ARGS = {"train": "train_symbols", "validation": "val_symbols", "test": "test_symbols"}
# rows re-encoded with a real tokenizer to confirm the assembled ids
_VERIFIED_ROWS = 64

SymbolSpec = int | Sequence[str] | None


# -- tasks -----------------------------------------------------------------------


def _need(task: TemplateTask) -> int:
    """Symbols one row needs: the most wildcards of a template that can be drawn."""
    return max(
        (t.n_wildcards for t, p in zip(task.templates, task.probs, strict=True) if p > 0),
        default=0,
    )


def _symbol_spec(spec: SymbolSpec, n_samples: int, need: int, arg: str) -> int | list[str]:
    """An alphabet size, or an explicit list of symbol strings, validated."""
    if spec is None:
        return max(n_samples, need)
    if isinstance(spec, str):
        raise ValueError(f"{arg}={spec!r} is one string; pass a size or a list of symbols")
    if isinstance(spec, (Sequence, np.ndarray)):
        symbols = [str(s) for s in spec]
        for s in symbols:
            if not s or len(s.split()) != 1 or s != s.strip():
                raise ValueError(f"{arg}: symbol {s!r} is not a token (no whitespace, not empty)")
        if len(set(symbols)) != len(symbols):
            dup = next(s for s in symbols if symbols.count(s) > 1)
            raise ValueError(f"{arg}: symbol {dup!r} appears twice; symbols must be distinct")
        size = len(symbols)
    else:
        symbols = None
        size = check_count(spec, arg)
    if size < need:
        raise ValueError(
            f"{arg} gives {size} symbols but a template of the task has {need} distinct "
            f"wildcards, which need {need} distinct symbols; use at least {need}"
        )
    return symbols if symbols is not None else size


# -- rendering -------------------------------------------------------------------


def render(
    task: TemplateTask | str,
    n_train: int,
    n_val: int = 1000,
    n_test: int = 1000,
    train_symbols: SymbolSpec = None,
    val_symbols: SymbolSpec = None,
    test_symbols: SymbolSpec = None,
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Render a template task into ``train`` / ``validation`` / ``test`` splits.

    ``task``: a :class:`TemplateTask` or a catalogue name (``"aba_vs_abb"``,
    ``"majority_k:k=5"``). ``*_symbols``: the split's alphabet, as a size or a
    list of symbol strings; by default as many symbols as samples (the paper's
    convention, n samples over n train symbols), at least the task's number of
    wildcards. The three alphabets are disjoint. ``tokenizer``: ``None`` builds
    a :class:`SymbolTokenizer` over the task (get it back with
    :func:`dataset_tokenizer`); a ``SymbolTokenizer`` lends its symbols in order;
    any other Hugging Face tokenizer (or its name or folder) lends its
    single-token strings in a seeded order. ``seed`` fixes everything: the same
    arguments give byte-identical datasets.

    Columns (``n`` rows, ``L`` the split's longest row): ``input_ids`` ``[n, L]``,
    ``attention_mask`` ``[n, L]``, ``labels`` ``[n]``, ``template`` ``[n]``,
    ``text`` ``[n]``. The task spec, seed, alphabets and tokenizer are JSON in
    ``info.description`` (read with :func:`task_info`).
    """
    task, spec = resolve_task(task)
    sizes = {
        "train": check_count(n_train, "n_train", low=1, high=MAX_SAMPLES),
        "validation": check_count(n_val, "n_val", high=MAX_SAMPLES),
        "test": check_count(n_test, "n_test", high=MAX_SAMPLES),
    }
    seed = check_count(seed, "seed")
    need = _need(task)
    given = {"train": train_symbols, "validation": val_symbols, "test": test_symbols}
    specs = {s: _symbol_spec(given[s], sizes[s], need, SYMBOL_ARGS[s]) for s in SPLITS}
    *split_seeds, alphabet_seed = np.random.SeedSequence(seed).spawn(len(SPLITS) + 1)
    vocab = symbol_vocab(task, specs, tokenizer, np.random.default_rng(alphabet_seed))
    _check_symbolic_labels(task, vocab)

    info = _info(task, spec, sizes, specs, seed, vocab)
    description = json.dumps(info, sort_keys=True)
    splits = {}
    for split, split_seed in zip(SPLITS, split_seeds, strict=True):
        sample = task.sample(
            sizes[split], len(vocab.alphabets[split]), np.random.default_rng(split_seed)
        )
        table = _table(task, sample.template, sample.symbols, vocab, vocab.alphabets[split])
        if symbol_range(vocab.tokenizer) is None:
            _verify_rows(table, vocab)
        fingerprint = hashlib.sha256(f"{description}\n{split}".encode()).hexdigest()[:16]
        splits[split] = datasets.Dataset(
            datasets.table.InMemoryTable(table),
            info=datasets.DatasetInfo(description=description),
            split=datasets.NamedSplit(split),
            fingerprint=fingerprint,
        )
    dsd = datasets.DatasetDict(splits)
    _remember_tokenizer(description, vocab.tokenizer)
    return dsd


def _check_symbolic_labels(task: TemplateTask, vocab: Vocab) -> None:
    if task.label_kind != "symbolic":
        return
    for tpl, y in zip(task.templates, task.labels, strict=True):
        if y not in tpl.wildcards_in_order and len(vocab.regular_ids[y]) != 1:
            raise ValueError(
                f"label {y!r} of template {tpl.text!r} encodes to {vocab.regular_ids[y]} with "
                f"tokenizer {tokenizer_name(vocab.tokenizer)!r}; a symbolic label must be one "
                f"token: rename it in the task"
            )


def _table(
    task: TemplateTask,
    template: np.ndarray,
    symbols: np.ndarray,
    vocab: Vocab,
    alphabet: Alphabet,
) -> pa.Table:
    """The split's Arrow table, built from per-template lookup tables.

    ``template`` ``[n]``, ``symbols`` ``[n, W]`` (alphabet indices, -1 unused).
    Each template becomes a row of tables ``[T, L]`` saying, per output column,
    which wildcard fills it or which constant id; a row of the split is then
    one gather from those tables (no Python loop per sample).
    """
    n = len(template)
    n_t = len(task.templates)
    # every template's id layout, per column: (True, wildcard j) or (False, token id)
    layouts: list[list[tuple[bool, int]]] = []
    for tpl in task.templates:
        cols: list[tuple[bool, int]] = []
        for tok, j in zip(tpl.tokens, tpl.pattern, strict=True):
            cols.extend([(True, j)] if j >= 0 else [(False, i) for i in vocab.regular_ids[tok]])
        layouts.append([*cols, (False, vocab.readout_id)])
    present = np.bincount(template, minlength=n_t) > 0
    width = max((len(layouts[t]) for t in range(n_t) if present[t]), default=1)
    is_sym = np.zeros((n_t, width), dtype=bool)
    wild = np.zeros((n_t, width), dtype=np.int64)
    const = np.full((n_t, width), vocab.pad_id, dtype=np.int64)
    real = np.zeros((n_t, width), dtype=np.int64)
    for t, cols in enumerate(layouts):
        for c, (sym, value) in enumerate(cols[:width]):
            is_sym[t, c], real[t, c] = sym, 1
            if sym:
                wild[t, c] = value
            else:
                const[t, c] = value

    # symbol ids of each row's wildcards: [n, W] (a dummy column when no wildcards)
    cols = symbols if symbols.shape[1] else np.zeros((n, 1), dtype=np.int64)
    sym_ids = alphabet.ids[cols] if len(alphabet) else np.zeros_like(cols)
    input_ids = np.where(
        is_sym[template], np.take_along_axis(sym_ids, wild[template], axis=1), const[template]
    )
    attention_mask = real[template]

    if task.label_kind == "regression":
        labels = pa.array(np.asarray(task.labels, dtype=np.float32)[template])
    else:
        label_wild = task.label_wildcard
        label_const = np.array(
            [
                vocab.regular_ids[y][0] if j < 0 else 0
                for y, j in zip(task.labels, label_wild, strict=True)
            ],
            dtype=np.int64,
        )
        lw = label_wild[template]
        picked = np.take_along_axis(sym_ids, np.maximum(lw, 0)[:, None], axis=1)[:, 0]
        labels = pa.array(np.where(lw >= 0, picked, label_const[template]))

    return pa.Table.from_arrays(
        [
            _list_array(input_ids),
            _list_array(attention_mask),
            labels,
            pa.array(template.astype(np.int64, copy=False)),
            _text(task, template, cols, alphabet),
        ],
        names=["input_ids", "attention_mask", "labels", "template", "text"],
    )


def _list_array(matrix: np.ndarray) -> pa.Array:
    """``[n, L]`` -> an Arrow list column over the same buffer (no copy of the values)."""
    n, width = matrix.shape
    values = pa.array(np.ascontiguousarray(matrix).reshape(-1))
    if n * width < 2**31:
        offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, values)
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int64))
    return pa.LargeListArray.from_arrays(offsets, values)


def _text(
    task: TemplateTask, template: np.ndarray, symbols: np.ndarray, alphabet: Alphabet
) -> pa.Array:
    """Each row's tokens joined by spaces: one Arrow ``take`` per position from the
    strings [regular tokens..., alphabet...], absent positions null and skipped."""
    regular = {t: i for i, t in enumerate(task.regular_tokens)}
    n_reg = len(regular)
    n_t, width = len(task.templates), task.max_length
    source = np.full((n_t, width), -1, dtype=np.int64)  # string index, or -1: absent
    wild = np.full((n_t, width), -1, dtype=np.int64)  # wildcard j, or -1: a regular token
    for t, tpl in enumerate(task.templates):
        for p, (tok, j) in enumerate(zip(tpl.tokens, tpl.pattern, strict=True)):
            if j >= 0:
                wild[t, p] = j
            else:
                source[t, p] = regular[tok]
    strings = pa.concat_arrays(
        [pa.array(list(regular), pa.string()), alphabet.strings.cast(pa.string())]
    )
    columns = []
    for p in range(width):
        w = wild[template, p]
        picked = symbols[np.arange(len(template)), np.maximum(w, 0)] + n_reg
        index = np.where(w >= 0, picked, source[template, p])
        columns.append(strings.take(pa.array(index, mask=index < 0)))
    if width == 1:
        return columns[0]
    return pc.binary_join_element_wise(*columns, " ", null_handling="skip")


def _verify_rows(table: pa.Table, vocab: Vocab) -> None:
    """Re-encode the first rows' text with the tokenizer: the assembled ids must be
    exactly what the tokenizer gives (so every symbol is one token in context)."""
    k = min(_VERIFIED_ROWS, table.num_rows)
    if not k:
        return
    texts = table.column("text").slice(0, k).to_pylist()
    ids = table.column("input_ids").slice(0, k).to_pylist()
    masks = table.column("attention_mask").slice(0, k).to_pylist()
    for text, row, mask, enc in zip(
        texts,
        ids,
        masks,
        encode_each(vocab.tokenizer, [vocab.prefix + t for t in texts]),
        strict=True,
    ):
        expected = row[: sum(mask) - 1]
        if enc != expected:
            raise RuntimeError(
                f"row {text!r} encodes to {enc} with tokenizer "
                f"{tokenizer_name(vocab.tokenizer)!r} but was assembled as {expected}; "
                f"please report this tokenizer to probe"
            )


def _info(
    task: TemplateTask,
    spec: str | None,
    sizes: dict[str, int],
    specs: dict[str, int | list[str]],
    seed: int,
    vocab: Vocab,
) -> dict[str, Any]:
    from probe._version import __version__

    name = tokenizer_name(vocab.tokenizer)
    default_size = {s: max(sizes[s], _need(task)) for s in SPLITS}
    call = [
        repr(spec) if spec else "TemplateTask.from_dict(info['task'])",
        f"n_train={sizes['train']}, n_val={sizes['validation']}, n_test={sizes['test']}",
    ]
    for s, v in specs.items():
        if isinstance(v, list):
            call.append(f"{SYMBOL_ARGS[s]}=info['alphabets']['{s}']['symbols']")
        elif v != default_size[s]:
            call.append(f"{SYMBOL_ARGS[s]}={v}")
    call.append(f"tokenizer={None if name == 'SymbolTokenizer' else name!r}, seed={seed}")
    python = f"probe.render({', '.join(call)})"
    cli = None
    if spec is not None and len(call) == 3:
        cli = (
            f"probe data render --task {spec} --n-train {sizes['train']} "
            f"--n-val {sizes['validation']} --n-test {sizes['test']} --seed {seed}"
            + ("" if name == "SymbolTokenizer" else f" --tokenizer {name}")
            + " --out PATH"
        )
    naming = "explicit" if any(isinstance(v, list) for v in specs.values()) else "default"
    return {
        "probe_version": __version__,
        "task": task.to_dict(),
        "task_spec": spec,
        "label_kind": task.label_kind,
        "seed": seed,
        "sizes": sizes,
        "tokenizer": name,
        "encoding_prefix": vocab.prefix,
        "readout_token": vocab.tokenizer.convert_ids_to_tokens(vocab.readout_id),
        "readout_token_id": vocab.readout_id,
        "pad_token_id": vocab.pad_id,
        "regular_token_ids": vocab.regular_ids,
        "alphabets": {
            s: a.record(listed=not (naming == "default" and name == "SymbolTokenizer"))
            for s, a in vocab.alphabets.items()
        },
        # "default": symbols are s0, s1, ... numbered across train, validation, test
        "symbol_naming": naming if name == "SymbolTokenizer" else "tokenizer",
        "regenerate": {"python": python, "cli": cli},
    }


# -- what travels with a dataset ---------------------------------------------------


def _first_split(dsd: datasets.DatasetDict | datasets.Dataset) -> datasets.Dataset:
    return dsd[next(iter(dsd))] if isinstance(dsd, datasets.DatasetDict) else dsd


def task_info(dsd: datasets.DatasetDict | datasets.Dataset) -> dict[str, Any]:
    """The JSON that :func:`render` stores in ``info.description``: ``task`` (the
    spec for ``TemplateTask.from_dict``), ``seed``, ``label_kind``, ``sizes``,
    ``alphabets``, ``tokenizer``, ``readout_token_id``, ``regenerate``, ...
    Also works on a dataset loaded back from disk or the Hub."""
    ds = _first_split(dsd)
    text = ds.info.description or ""
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or "task" not in info:
        raise ValueError(
            "this dataset carries no probe task info in info.description; render it with "
            "probe.render, or load a folder written by probe.save_dataset"
        )
    return info


def dataset_task(dsd: datasets.DatasetDict | datasets.Dataset) -> TemplateTask:
    """The :class:`TemplateTask` a dataset was rendered from."""
    return TemplateTask.from_dict(task_info(dsd)["task"])


_TOKENIZERS: dict[str, PreTrainedTokenizerBase] = {}


def _remember_tokenizer(description: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Keep the last few tokenizers :func:`render` used, so :func:`dataset_tokenizer`
    need not rebuild a big one."""
    _TOKENIZERS[description] = tokenizer
    while len(_TOKENIZERS) > 4:
        del _TOKENIZERS[next(iter(_TOKENIZERS))]


def dataset_tokenizer(dsd: datasets.DatasetDict | datasets.Dataset) -> PreTrainedTokenizerBase:
    """The tokenizer a dataset was rendered with: the one :func:`render` used when
    still at hand, else a SymbolTokenizer rebuilt from the card, else the named
    Hugging Face tokenizer."""
    ds = _first_split(dsd)
    info = task_info(ds)
    if ds.info.description in _TOKENIZERS:
        return _TOKENIZERS[ds.info.description]
    if info["tokenizer"] != "SymbolTokenizer":
        return load_tokenizer_by_name(info["tokenizer"])
    task = TemplateTask.from_dict(info["task"])
    alphabets = [info["alphabets"][s] for s in SPLITS]
    if info.get("symbol_naming") == "default":
        tokenizer = SymbolTokenizer.build(task.regular_tokens, sum(a["size"] for a in alphabets))
    elif all(a.get("symbols") is not None for a in alphabets):
        tokenizer = SymbolTokenizer.build(
            task.regular_tokens, [s for a in alphabets for s in a["symbols"]]
        )
    else:
        raise ValueError(
            "the card does not list this dataset's symbols (too many); load the tokenizer "
            "saved next to the data with probe.data.hub.load_tokenizer(path, config)"
        )
    _remember_tokenizer(ds.info.description, tokenizer)
    return tokenizer
