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

``save_dataset`` / ``load_dataset`` use the layout of ``push_to_hub``:
``PATH/<config>/<split>-00000-of-00001.parquet`` plus a ``README.md`` card whose
YAML lists every config of the folder, so ``datasets.load_dataset(PATH, config)``
loads it and uploading the folder publishes it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from transformers import PreTrainedTokenizerBase

from probe.templates import TemplateTask
from probe.tokenizer import (
    SPECIAL_TOKENS,
    SymbolTokenizer,
    encode_each,
    encoding_prefix,
    load_tokenizer_by_name,
    pad_token_id,
    readout_token_id,
    single_token_symbols,
    symbol_range,
    token_ids,
    tokenizer_name,
)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
CARD = "README.md"
TOKENIZER_DIR = "tokenizer"
DEFAULT_EXPORT_DIR = Path("data/template-tasks")
# symbol lists longer than this are described by a rule, not listed, in the card
_MAX_LISTED_SYMBOLS = 4096
# rows re-encoded with a real tokenizer to confirm the assembled ids
_VERIFIED_ROWS = 64
_CONFIG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

SymbolSpec = int | Sequence[str] | None


# -- tasks -----------------------------------------------------------------------


def resolve_task(task: TemplateTask | str) -> tuple[TemplateTask, str | None]:
    """A task, and its catalogue spec (``"majority_k:k=5"``) when it comes from the
    catalogue, else ``None``.

    ``task`` is a :class:`TemplateTask` or a catalogue name, optionally with
    parameters: ``name:key=value,key=value`` (values parsed as JSON, else strings).
    """
    from probe.tasks import get_task, list_tasks

    if isinstance(task, TemplateTask):
        spec = task.name if task.name in list_tasks() and get_task(task.name) == task else None
        return task, spec
    if not isinstance(task, str):
        raise ValueError(
            f"task must be a TemplateTask or a catalogue name, got {type(task).__name__}"
        )
    name, _, params_text = task.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in params_text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(
                f"task {task!r}: parameter {item!r} is not key=value; write e.g. 'majority_k:k=5'"
            )
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value.strip()
    return get_task(name.strip(), **params), task


# -- alphabets -------------------------------------------------------------------


@dataclass(frozen=True)
class Alphabet:
    """The symbols of one split: ``ids[k]`` and ``strings[k]`` are symbol k's token id
    and text (``[size]`` each)."""

    ids: np.ndarray
    strings: pa.Array

    def __len__(self) -> int:
        return len(self.ids)

    def record(self, listed: bool = True) -> dict[str, Any]:
        """How the card describes it: the symbols themselves when ``listed`` and few,
        else the first and last (default names ``s<k>`` need no list)."""
        size = len(self)
        out: dict[str, Any] = {"size": size}
        if size and np.all(np.diff(self.ids) == 1):
            out["ids"] = {"start": int(self.ids[0]), "stop": int(self.ids[-1]) + 1}
        elif size <= _MAX_LISTED_SYMBOLS:
            out["ids"] = self.ids.tolist()
        if listed and size <= _MAX_LISTED_SYMBOLS:
            out["symbols"] = self.strings.to_pylist()
        else:
            out["symbols"] = None
            if size:
                out["first"], out["last"] = self.strings[0].as_py(), self.strings[-1].as_py()
        return out


def _count(value: Any, what: str, low: int = 0) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if v < low:
        raise ValueError(f"{what} must be >= {low}, got {v}")
    return v


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
    if isinstance(spec, Sequence) or isinstance(spec, np.ndarray):
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
        size = _count(spec, arg)
    if size < need:
        raise ValueError(
            f"{arg} gives {size} symbols but a template of the task has {need} distinct "
            f"wildcards, which need {need} distinct symbols; use at least {need}"
        )
    return symbols if symbols is not None else size


def _check_disjoint(named: dict[str, list[str]]) -> None:
    owner: dict[str, str] = {}
    for split, symbols in named.items():
        for s in symbols:
            if s in owner:
                raise ValueError(
                    f"symbol {s!r} is in both the {owner[s]} and the {split} alphabet; the "
                    f"alphabets must be disjoint so the test uses unseen symbols"
                )
            owner[s] = split


def _arange_strings(prefix: str, start: int, stop: int) -> pa.Array:
    """``prefix + str(k)`` for k in [start, stop), built by Arrow (a million in ~20 ms)."""
    numbers = pc.cast(pa.array(np.arange(start, stop, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, numbers, "")


@dataclass
class _Vocab:
    """What rendering needs from a tokenizer: symbol alphabets and token ids."""

    tokenizer: PreTrainedTokenizerBase
    alphabets: dict[str, Alphabet]
    regular_ids: dict[str, list[int]]
    readout_id: int
    pad_id: int
    prefix: str  # what `tokenizer(prefix + text)` needs to reproduce a row's ids


def _symbol_vocab(
    task: TemplateTask,
    specs: dict[str, int | list[str]],
    tokenizer: PreTrainedTokenizerBase | str | None,
    rng: np.random.Generator,
) -> _Vocab:
    regular = list(task.regular_tokens)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer_by_name(tokenizer)
    if tokenizer is None:
        return _new_symbol_tokenizer(regular, specs)
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise ValueError(
            f"tokenizer must be None (build a SymbolTokenizer), a Hugging Face tokenizer, or "
            f"its name or folder; got {type(tokenizer).__name__}"
        )
    explicit = {s: v for s, v in specs.items() if isinstance(v, list)}
    _check_disjoint(explicit)
    span = symbol_range(tokenizer)
    if span is not None:
        # a SymbolTokenizer, possibly loaded back as a plain fast tokenizer
        prefix = ""
        regular_ids = {t: [_vocab_id(tokenizer, t, "regular token")] for t in regular}
        pool = np.arange(*span, dtype=np.int64)
        pool_words = None  # looked up for the ids in use only: there may be millions
        explicit_ids = {
            s: np.array([_vocab_id(tokenizer, t, "symbol", span) for t in v], dtype=np.int64)
            for s, v in explicit.items()
        }
    else:
        prefix = encoding_prefix(tokenizer, regular)
        regular_ids = dict(zip(regular, token_ids(tokenizer, regular, prefix), strict=True))
        words, pool = single_token_symbols(tokenizer, exclude=regular, prefix=prefix)
        # a seeded order, so train and test symbols are alike (not frequent vs rare tokens)
        order = rng.permutation(len(pool))
        pool, pool_words = pool[order], np.asarray(words, dtype=object)[order]
        explicit_ids = {}
        for s, v in explicit.items():
            ids = token_ids(tokenizer, v, prefix)
            for t, tid in zip(v, ids, strict=True):
                if len(tid) != 1 or tid[0] in {i for r in regular_ids.values() for i in r}:
                    raise ValueError(
                        f"symbol {t!r} encodes to {tid} with tokenizer "
                        f"{tokenizer_name(tokenizer)!r}; a symbol must be one token that no "
                        f"regular token uses: pick it from probe.tokenizer.single_token_symbols"
                    )
            explicit_ids[s] = np.array([t[0] for t in ids], dtype=np.int64)
    used = np.concatenate([np.zeros(0, np.int64), *explicit_ids.values()])
    if len(np.unique(used)) != len(used):
        raise ValueError("two symbols of the given alphabets encode to the same token id")
    free = ~np.isin(pool, used)
    pool = pool[free]
    pool_words = pool_words[free] if pool_words is not None else None
    wanted = {s: v for s, v in specs.items() if isinstance(v, int)}
    if sum(wanted.values()) > len(pool):
        sizes = ", ".join(f"{s} {v}" for s, v in wanted.items())
        raise ValueError(
            f"tokenizer {tokenizer_name(tokenizer)!r} offers {len(pool)} single-token symbols "
            f"but the alphabets ask for {sum(wanted.values())} ({sizes}); pass smaller "
            f"train_symbols=/val_symbols=/test_symbols= (alphabet sizes: samples may "
            f"outnumber symbols)"
        )
    alphabets, at = {}, 0
    for split in SPLITS:
        if split in explicit_ids:
            ids = explicit_ids[split]
            strings = pa.array(explicit[split], pa.string())
        else:
            ids = pool[at : at + wanted[split]]
            if pool_words is not None:
                strings = pa.array(pool_words[at : at + wanted[split]].tolist(), pa.string())
            else:
                strings = _symbol_names(tokenizer, ids, span)
            at += wanted[split]
        alphabets[split] = Alphabet(ids, strings)
    readout = readout_token_id(tokenizer)
    return _Vocab(tokenizer, alphabets, regular_ids, readout, pad_token_id(tokenizer), prefix)


def _new_symbol_tokenizer(regular: list[str], specs: dict[str, int | list[str]]) -> _Vocab:
    """A SymbolTokenizer over the regular tokens and all three alphabets, symbols
    named ``s<k>`` with one numbering across the splits unless given."""
    if all(isinstance(v, int) for v in specs.values()):
        total = sum(specs.values())  # type: ignore[arg-type]
        tokenizer = SymbolTokenizer.build(regular, total)
        names_of: dict[str, pa.Array] = {}
        at = 0
        for split in SPLITS:
            names_of[split] = _arange_strings("s", at, at + specs[split])  # type: ignore[operator]
            at += specs[split]  # type: ignore[operator]
    else:
        names, at = {}, 0
        for split in SPLITS:
            v = specs[split]
            names[split] = v if isinstance(v, list) else [f"s{k}" for k in range(at, at + v)]
            at += len(names[split])
        _check_disjoint(names)
        tokenizer = SymbolTokenizer.build(regular, [s for v in names.values() for s in v])
        names_of = {s: pa.array(v, pa.string()) for s, v in names.items()}
    start = tokenizer.symbol_start
    alphabets, at = {}, start
    for split in SPLITS:
        size = len(names_of[split])
        alphabets[split] = Alphabet(np.arange(at, at + size, dtype=np.int64), names_of[split])
        at += size
    regular_ids = {t: [len(SPECIAL_TOKENS) + i] for i, t in enumerate(regular)}
    readout = tokenizer.readout_token_id
    return _Vocab(tokenizer, alphabets, regular_ids, readout, pad_token_id(tokenizer), "")


def _vocab_id(
    tokenizer: PreTrainedTokenizerBase, token: str, what: str, span: tuple[int, int] | None = None
) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id or (span and not span[0] <= tid < span[1]):
        where = "among its symbols" if span else "in its vocabulary"
        raise ValueError(
            f"{what} {token!r} is not {where} (tokenizer {tokenizer_name(tokenizer)!r}); "
            f"build the SymbolTokenizer for this task, or pass tokenizer=None"
        )
    return int(tid)


def _symbol_names(
    tokenizer: PreTrainedTokenizerBase, ids: np.ndarray, span: tuple[int, int]
) -> pa.Array:
    """The names of a SymbolTokenizer's symbol ids; default names ``s<k>`` are made,
    not looked up (a million lookups take ~1 s)."""
    prefix = (tokenizer.init_kwargs or {}).get("symbol_prefix")
    if prefix is not None and len(ids) and np.all(np.diff(ids) == 1):
        return _arange_strings(prefix, int(ids[0]) - span[0], int(ids[-1]) + 1 - span[0])
    return pa.array(tokenizer.convert_ids_to_tokens(ids.tolist()), pa.string())


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
        "train": _count(n_train, "n_train", low=1),
        "validation": _count(n_val, "n_val"),
        "test": _count(n_test, "n_test"),
    }
    seed = _count(seed, "seed")
    need = _need(task)
    args = {"train": "train_symbols", "validation": "val_symbols", "test": "test_symbols"}
    given = {"train": train_symbols, "validation": val_symbols, "test": test_symbols}
    specs = {s: _symbol_spec(given[s], sizes[s], need, args[s]) for s in SPLITS}
    *split_seeds, alphabet_seed = np.random.SeedSequence(seed).spawn(len(SPLITS) + 1)
    vocab = _symbol_vocab(task, specs, tokenizer, np.random.default_rng(alphabet_seed))
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


def _check_symbolic_labels(task: TemplateTask, vocab: _Vocab) -> None:
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
    vocab: _Vocab,
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
        label_wild = np.array(
            [
                tpl.wildcards_in_order.index(y) if y in tpl.wildcards_in_order else -1
                for tpl, y in zip(task.templates, task.labels, strict=True)
            ],
            dtype=np.int64,
        )
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


def _verify_rows(table: pa.Table, vocab: _Vocab) -> None:
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
    vocab: _Vocab,
) -> dict[str, Any]:
    from probe import __version__

    name = tokenizer_name(vocab.tokenizer)
    default_size = {s: max(sizes[s], _need(task)) for s in SPLITS}
    arg = {"train": "train_symbols", "validation": "val_symbols", "test": "test_symbols"}
    call = [
        repr(spec) if spec else "TemplateTask.from_dict(info['task'])",
        f"n_train={sizes['train']}, n_val={sizes['validation']}, n_test={sizes['test']}",
    ]
    for s, v in specs.items():
        if isinstance(v, list):
            call.append(f"{arg[s]}=info['alphabets']['{s}']['symbols']")
        elif v != default_size[s]:
            call.append(f"{arg[s]}={v}")
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


def task_info(dsd: datasets.DatasetDict | datasets.Dataset) -> dict[str, Any]:
    """The JSON that :func:`render` stores in ``info.description``: ``task`` (the
    spec for ``TemplateTask.from_dict``), ``seed``, ``label_kind``, ``sizes``,
    ``alphabets``, ``tokenizer``, ``readout_token_id``, ``regenerate``, ...
    Also works on a dataset loaded back from disk or the Hub."""
    ds = dsd[next(iter(dsd))] if isinstance(dsd, datasets.DatasetDict) else dsd
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
    ds = dsd[next(iter(dsd))] if isinstance(dsd, datasets.DatasetDict) else dsd
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
            "saved next to the data with probe.data.load_tokenizer(path, config)"
        )
    _remember_tokenizer(ds.info.description, tokenizer)
    return tokenizer


# -- Hub layout on disk ------------------------------------------------------------


def _check_config(config: str) -> str:
    if not isinstance(config, str) or not _CONFIG_RE.match(config):
        raise ValueError(
            f"config name {config!r} is not usable as a folder name; use letters, digits, "
            f"'_', '-' and '.', starting with a letter or digit"
        )
    return config


def _default_config(task_name: str) -> str:
    """The task's name (``majority_k-k5``) as a config name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_name)


def _read_card(path: Path) -> tuple[dict[str, Any], str]:
    """The YAML front matter and body of ``path/README.md`` (empty when absent)."""
    card = path / CARD
    if not card.exists():
        return {}, ""
    text = card.read_text(encoding="utf-8")
    if text.startswith("---"):
        _, front, body = text.split("---", 2)
        meta = yaml.safe_load(front) or {}
        if not isinstance(meta, dict):
            raise ValueError(f"{card}: the YAML front matter is not a mapping")
        return meta, body.lstrip("\n")
    return {}, text


def _existing_configs(path: Path) -> list[str]:
    meta, _ = _read_card(path)
    return [c.get("config_name", "default") for c in meta.get("configs", []) or []]


def _check_destination(path: Path, config: str, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder; pick another output path")
    if not overwrite and ((path / config).exists() or config in _existing_configs(path)):
        raise FileExistsError(
            f"config {config!r} already exists in {path}; pass overwrite=True "
            f"(--overwrite on the command line) to replace it, or pick another config name"
        )


def save_dataset(
    dsd: datasets.DatasetDict,
    path: str | os.PathLike,
    config: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``dsd`` as config ``config`` (default: the task name) of the Hub-layout
    folder ``path`` and return ``path/<config>``.

    Writes ``path/<config>/<split>-00000-of-00001.parquet``, the SymbolTokenizer
    in ``path/<config>/tokenizer/`` (so the ids can be decoded), and a
    ``path/README.md`` card whose YAML lists every config of the folder. The
    config is written into a temporary folder next to its destination and then
    renamed into place, so a failure leaves nothing half-written. An existing
    config is refused unless ``overwrite``.
    """
    if not isinstance(dsd, datasets.DatasetDict):
        raise ValueError(f"expected a DatasetDict from probe.render, got {type(dsd).__name__}")
    path = Path(path)
    info = task_info(dsd)
    config = _check_config(config if config is not None else _default_config(info["task"]["name"]))
    _check_destination(path, config, overwrite)

    fresh = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent)) if fresh else path
    staging = Path(tempfile.mkdtemp(prefix=f".{config}.tmp-", dir=root))
    card_tmp = root / f".{CARD}.tmp"
    try:
        for split, ds in dsd.items():
            _write_parquet(ds, staging / f"{split}-00000-of-00001.parquet")
        if info["tokenizer"] == "SymbolTokenizer":
            dataset_tokenizer(dsd).save_pretrained(staging / TOKENIZER_DIR)
        card_tmp.write_text(_card(path, config, dsd, info), encoding="utf-8")
        target = root / config
        trash = None
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{config}.old-", dir=root))
            os.rename(target, trash / config)
        _open_up(staging)  # mkdtemp made it private; give it the usual permissions
        os.rename(staging, target)
        os.replace(card_tmp, root / CARD)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        if fresh:
            _open_up(root)
            os.rename(root, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        card_tmp.unlink(missing_ok=True)
        if fresh:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return path / config


def _open_up(folder: Path) -> None:
    """Folder permissions as ``mkdir`` would give them under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def _write_parquet(ds: datasets.Dataset, file: Path) -> None:
    """One parquet shard with the dataset's features in the schema metadata."""
    import pyarrow.parquet as pq

    if ds._indices is not None:  # a selected or shuffled view: materialize the rows
        ds = ds.flatten_indices()
    pq.write_table(ds.data.table, file)


def _card(path: Path, config: str, dsd: datasets.DatasetDict, info: dict[str, Any]) -> str:
    """The folder's README.md with ``config`` added or replaced: YAML ``configs`` and
    ``dataset_info`` for every config, and a section per config."""
    meta, _ = _read_card(path)
    configs = [c for c in meta.get("configs", []) or [] if c.get("config_name") != config]
    configs.append(
        {
            "config_name": config,
            "data_files": [{"split": s, "path": f"{config}/{s}-*.parquet"} for s in dsd],
        }
    )
    configs.sort(key=lambda c: c.get("config_name", ""))
    infos = meta.get("dataset_info", []) or []
    infos = [infos] if isinstance(infos, dict) else infos
    infos = [d for d in infos if d.get("config_name") != config]
    first = dsd[next(iter(dsd))]
    infos.append(
        {
            "config_name": config,
            "description": first.info.description,
            "features": first.features._to_yaml_list(),
            "splits": [
                {"name": s, "num_bytes": ds.data.nbytes, "num_examples": ds.num_rows}
                for s, ds in dsd.items()
            ],
        }
    )
    infos.sort(key=lambda d: d.get("config_name", ""))
    meta = {**meta, "configs": configs, "dataset_info": infos}
    meta.setdefault("tags", ["probe", "template-tasks", "synthetic"])
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1_000_000)
    sections = []
    for d in infos:
        try:
            sections.append(_section(d["config_name"], json.loads(d.get("description") or "")))
        except (json.JSONDecodeError, KeyError, TypeError):
            sections.append(f"## `{d.get('config_name')}`\n\nNot rendered by probe.\n")
    body = "\n".join(sections)
    return f"---\n{front}---\n\n{_CARD_INTRO.format(config=configs[0]['config_name'])}\n{body}"


_CARD_INTRO = """# Template tasks

Template tasks rendered by probe (the `symbol-probe` package; Boix-Adserà et al.,
*When can transformers reason with abstract symbols?*, ICLR 2024). Each config is
one task; its `train`, `validation` and `test` splits draw symbols from disjoint
alphabets, so the test measures generalization to symbols never seen in training.

```python
from datasets import load_dataset
dsd = load_dataset("path/to/this/folder", "{config}")  # or its Hub id; or probe.load_dataset
```

Columns: `input_ids` (the template's tokens with symbols substituted, then the
readout token, right-padded), `attention_mask`, `labels` (a float for
regression, the answer's token id for symbolic labels), `template` (index into
the table below), `text` (the substituted template, tokens separated by spaces).
The full spec of each config (task, seed, alphabets, tokenizer) is the JSON
`description` in the YAML header above; `probe.data.task_info(dsd)` returns it.
"""


def _cell(text: str) -> str:
    """Text for a markdown table cell: a bare ``|`` would end the cell."""
    return text.replace("|", "\\|")


def _section(config: str, info: dict[str, Any]) -> str:
    task = info["task"]
    rows = "\n".join(
        f"| {i} | `{_cell(t)}` | {y if isinstance(y, str) else f'{y:+g}'} | {p:.4g} |"
        for i, (t, y, p) in enumerate(
            zip(task["templates"], task["labels"], task["probs"], strict=True)
        )
    )
    alphabets = "\n".join(
        f"| {s} | {info['sizes'][s]} | {a['size']} | "
        + (
            " ".join(a["symbols"][:5]) + (" …" if a["size"] > 5 else "")
            if a.get("symbols") is not None
            else f"{a.get('first', '')} … {a.get('last', '')}"
        )
        + " |"
        for s in SPLITS
        if s in info["alphabets"]
        for a in [info["alphabets"][s]]
    )
    regen = info["regenerate"]
    if regen.get("cli"):
        how = f"```\n{regen['cli']} --config {config}\n```"
    else:
        how = f"```python\n{regen['python']}\n```"
    return f"""## `{config}`

Task `{task["name"]}` ({info["label_kind"]} labels), seed {info["seed"]}, tokenizer
`{info["tokenizer"]}`, readout token `{info["readout_token"]}` (id {info["readout_token_id"]}).

| # | template | label | probability |
|---|---|---|---|
{rows}

| split | samples | alphabet size | symbols |
|---|---|---|---|
{alphabets}

Regenerate:

{how}
"""


def load_dataset(
    path_or_hub_id: str | os.PathLike, config: str | None = None
) -> datasets.DatasetDict:
    """A dataset written by :func:`save_dataset`: a local folder, or a Hub id.

    Offline (``HF_HUB_OFFLINE=1``) a Hub id loads only from the local cache;
    otherwise, and when the Hub cannot be reached, this fails at once with an
    error that names the id and how to provide the data.
    """
    local = Path(path_or_hub_id)
    if local.is_dir():
        configs = _existing_configs(local)
        if config is not None and configs and config not in configs:
            raise ValueError(f"{local} has no config {config!r}; its configs: {', '.join(configs)}")
        if config is None and len(configs) > 1:
            raise ValueError(f"{local} holds several configs; pick one of {', '.join(configs)}")
        return datasets.load_dataset(str(local), config)
    name = str(path_or_hub_id)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", ""):
        raise FileNotFoundError(f"no folder {name}; pass a folder written by probe.save_dataset")
    return _load_from_hub(name, config)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def _unreachable(hub_id: str, why: str) -> ConnectionError:
    return ConnectionError(
        f"dataset {hub_id!r} is not in the local cache and {why}. To provide it: on a "
        f"machine with access, run `huggingface-cli download --repo-type dataset {hub_id} "
        f"--local-dir DIR` (or render it with `probe data render --task NAME --n-train N "
        f"--out DIR`), copy DIR here and pass the folder instead of the Hub id"
    )


def _load_from_hub(hub_id: str, config: str | None) -> datasets.DatasetDict:
    if _hub_offline():
        try:
            return datasets.load_dataset(hub_id, config)
        except (ConnectionError, FileNotFoundError) as e:
            raise _unreachable(hub_id, "the Hub is offline (HF_HUB_OFFLINE=1)") from e
    # one quick request first: the loader retries an unreachable Hub for ~20 s
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(hub_id, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError):
        raise
    except Exception as e:  # noqa: BLE001 - any transport failure means unreachable
        raise _unreachable(hub_id, f"the Hub cannot be reached ({type(e).__name__}: {e})") from e
    return datasets.load_dataset(hub_id, config)


def load_tokenizer(path: str | os.PathLike, config: str) -> PreTrainedTokenizerBase:
    """The tokenizer of config ``config`` in a folder written by :func:`save_dataset`:
    the saved SymbolTokenizer, else the Hugging Face tokenizer the card names."""
    folder = Path(path) / _check_config(config) / TOKENIZER_DIR
    if folder.is_dir():
        return SymbolTokenizer.from_pretrained(str(folder))
    meta, _ = _read_card(Path(path))
    for d in meta.get("dataset_info", []) or []:
        if d.get("config_name") == config:
            return load_tokenizer_by_name(json.loads(d["description"])["tokenizer"])
    raise FileNotFoundError(f"{Path(path)} has no config {config!r} written by probe.save_dataset")


# -- the command line's jobs -------------------------------------------------------


def render_to_disk(
    task: str,
    out: str | os.PathLike,
    n_train: int,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
    config: str | None = None,
    overwrite: bool = False,
) -> Path:
    """``probe data render``: check every argument and the destination, then render
    and save. Returns the config folder."""
    resolved, spec = resolve_task(task)
    n_val = 1000 if n_val is None else n_val
    n_test = 1000 if n_test is None else n_test
    _count(n_train, "--n-train", low=1)
    _count(n_val, "--n-val")
    _count(n_test, "--n-test")
    _count(seed, "--seed")
    out = Path(out)
    config = _check_config(config or _default_config(resolved.name))
    _check_destination(out, config, overwrite)
    dsd = render(spec or resolved, n_train, n_val, n_test, tokenizer=tokenizer, seed=seed)
    folder = save_dataset(dsd, out, config, overwrite=overwrite)
    print(f"wrote {folder} ({', '.join(f'{s} {d.num_rows}' for s, d in dsd.items())})")
    return folder


# config name -> catalogue spec, at the default size of the export
EXPORT_CONFIGS: dict[str, str] = {
    "same_different": "same_different",
    "aba_vs_abb": "aba_vs_abb",
    "aabb_vs_abab": "aabb_vs_abab",
    "majority_3": "majority_k:k=3",
    "majority_5": "majority_k:k=5",
    "var_assign": "var_assign",
    "var_copy": "var_copy",
    "copy": "copy",
    "rmts": "rmts",
    "dist3": "dist3",
    "random_templates": "random_templates",
}
EXPORT_SIZES = {"n_train": 2048, "n_val": 512, "n_test": 512}


def export_catalogue(
    out: str | os.PathLike = DEFAULT_EXPORT_DIR, overwrite: bool = False
) -> list[Path]:
    """``probe data export``: render every catalogue task (``EXPORT_CONFIGS``, at
    ``EXPORT_SIZES``, seed 0) as one config each of the Hub-layout folder ``out``."""
    out = Path(out)
    for config, spec in EXPORT_CONFIGS.items():
        resolve_task(spec)
        _check_destination(out, config, overwrite)
    folders = []
    for config, spec in EXPORT_CONFIGS.items():
        dsd = render(spec, seed=0, **EXPORT_SIZES)
        folders.append(save_dataset(dsd, out, config, overwrite=overwrite))
        print(f"wrote {folders[-1]}")
    return folders
