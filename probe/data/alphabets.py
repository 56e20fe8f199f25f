"""The symbol alphabets of a rendering: which symbols each split draws from, as
token ids and strings, and the token ids of the task's regular tokens.

:func:`symbol_vocab` takes one alphabet spec per split (a size, or a list of
symbol strings) and a tokenizer:

* ``None`` builds a :class:`SymbolTokenizer` over the regular tokens and every
  split's symbols, named ``s<k>`` with one numbering across the splits unless given;
* a ``SymbolTokenizer`` (possibly loaded back as a plain fast tokenizer) lends its
  symbols in id order;
* any other Hugging Face tokenizer lends its single-token strings in a seeded
  order, so the splits' symbols are alike (not frequent vs rare tokens).

The alphabets are disjoint: the test split measures generalization to symbols
never seen in training. Default names are made by Arrow, not looked up, so an
alphabet of a million symbols costs milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from probe.data.tokenizer import (
    SPECIAL_TOKENS,
    SYMBOL_PREFIX,
    SymbolTokenizer,
    encoding_prefix,
    load_tokenizer_by_name,
    pad_token_id,
    readout_token_id,
    single_token_symbols,
    symbol_names,
    symbol_range,
    token_ids,
    tokenizer_name,
)
from probe.tasks.templates import TemplateTask

# symbol lists longer than this are described by a rule, not listed, in the card
_MAX_LISTED_SYMBOLS = 4096


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
class Vocab:
    """What rendering needs from a tokenizer: symbol alphabets and token ids."""

    tokenizer: PreTrainedTokenizerBase
    alphabets: dict[str, Alphabet]
    regular_ids: dict[str, list[int]]
    readout_id: int
    pad_id: int
    prefix: str  # what `tokenizer(prefix + text)` needs to reproduce a row's ids


def symbol_vocab(
    task: TemplateTask,
    specs: dict[str, int | list[str]],
    tokenizer: PreTrainedTokenizerBase | str | None,
    rng: np.random.Generator,
) -> Vocab:
    """One :class:`Alphabet` per split of ``specs`` (``{split: size or symbol strings}``,
    in split order), drawn from ``tokenizer`` (``None``: build a SymbolTokenizer;
    a string: its name or folder) with ``rng`` ordering a real tokenizer's symbols."""
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
        taken = {i for r in regular_ids.values() for i in r}
        explicit_ids = {}
        for s, v in explicit.items():
            ids = token_ids(tokenizer, v, prefix)
            for t, tid in zip(v, ids, strict=True):
                if len(tid) != 1 or tid[0] in taken:
                    raise ValueError(
                        f"symbol {t!r} encodes to {tid} with tokenizer "
                        f"{tokenizer_name(tokenizer)!r}; a symbol must be one token that no "
                        f"regular token uses: pick it from probe.data.tokenizer.single_token_symbols"
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
    # The first split (train) takes the pool's front, the others its back, last split
    # last: the test alphabet (and the validation one) is then the same whatever n_train
    # is, so a curve over n compares one test set.
    sized = [split for split in specs if split in wanted]
    starts, back = dict.fromkeys(sized[:1], 0), len(pool)
    for split in reversed(sized[1:]):
        back -= wanted[split]
        starts[split] = back
    alphabets = {}
    for split in specs:
        if split in explicit_ids:
            ids = explicit_ids[split]
            strings = pa.array(explicit[split], pa.string())
        else:
            at = starts[split]
            ids = pool[at : at + wanted[split]]
            if pool_words is not None:
                strings = pa.array(pool_words[at : at + wanted[split]].tolist(), pa.string())
            else:
                strings = _symbol_names(tokenizer, ids, span)
        alphabets[split] = Alphabet(ids, strings)
    readout = readout_token_id(tokenizer)
    return Vocab(tokenizer, alphabets, regular_ids, readout, pad_token_id(tokenizer), prefix)


def _new_symbol_tokenizer(regular: list[str], specs: dict[str, int | list[str]]) -> Vocab:
    """A SymbolTokenizer over the regular tokens and every split's alphabet, symbols
    named ``s<k>`` with one numbering across the splits unless given."""
    names_of: dict[str, pa.Array] = {}
    at = 0
    if all(isinstance(v, int) for v in specs.values()):
        # default names: made by Arrow, as there may be millions
        for split, size in specs.items():
            names_of[split] = _arange_strings(SYMBOL_PREFIX, at, at + size)  # type: ignore[operator]
            at += size  # type: ignore[operator]
        tokenizer = SymbolTokenizer.build(regular, at)
    else:
        names: dict[str, list[str]] = {}
        for split, v in specs.items():
            names[split] = v if isinstance(v, list) else symbol_names(at, at + v)
            at += len(names[split])
        _check_disjoint(names)
        tokenizer = SymbolTokenizer.build(regular, [s for v in names.values() for s in v])
        names_of = {s: pa.array(v, pa.string()) for s, v in names.items()}
    alphabets, at = {}, tokenizer.symbol_start
    for split, strings in names_of.items():
        alphabets[split] = Alphabet(np.arange(at, at + len(strings), dtype=np.int64), strings)
        at += len(strings)
    regular_ids = {t: [len(SPECIAL_TOKENS) + i] for i, t in enumerate(regular)}
    readout = tokenizer.readout_token_id
    return Vocab(tokenizer, alphabets, regular_ids, readout, pad_token_id(tokenizer), "")


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
