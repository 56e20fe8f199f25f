"""Tokenizers for template tasks: every symbol is exactly one token.

Two kinds:

- :class:`SymbolTokenizer`, built offline: a word-level vocabulary of the
  specials ``<pad> <unk> <out>``, then the task's regular tokens, then the
  symbols, so symbol ids are contiguous (symbol ``k`` is id ``symbol_start + k``).
  ``<out>`` is the readout token appended to every rendered row.
- any Hugging Face tokenizer (byte-level BPE, SentencePiece, WordPiece):
  :func:`single_token_symbols` lists the strings that encode to exactly one id
  where they stand in a rendered row, so each symbol is one token; regular
  tokens may span several ids.

A rendered row's text is its tokens joined by single spaces. Tokenizers that
encode a word at the very start of a text differently from the same word after
a space (byte-level BPE without ``add_prefix_space``: ``foo`` vs ``Ġfoo``) would
give one symbol two ids; for them every token is encoded in its after-a-space
form, so the ids of a row are ``tokenizer(encoding_prefix(tokenizer) + text)``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, READOUT = "<pad>", "<unk>", "<out>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, READOUT)
SYMBOL_PREFIX = "s"

# a word placed before the probed one, to see how it encodes after a space
_ANCHOR = "x"
# words whose encodings decide whether a tokenizer needs the leading space
_PROBE_WORDS = ("a", "x", "the", "1", "=", "print")


def symbol_names(start: int, stop: int, prefix: str = SYMBOL_PREFIX) -> list[str]:
    """Default symbol names ``s<start> ... s<stop-1>``: global numbering, so the
    train, validation and test alphabets get distinct names."""
    return [f"{prefix}{i}" for i in range(start, stop)]


def _check_tokens(tokens: Iterable[str], what: str) -> list[str]:
    out = list(tokens)
    for t in out:
        if not isinstance(t, str) or not t or len(t.split()) != 1 or t != t.strip():
            raise ValueError(
                f"{what} {t!r} is not a token: tokens are non-empty strings without whitespace"
            )
    seen: set[str] = set()
    for t in out:
        if t in seen:
            raise ValueError(f"{what} {t!r} appears twice; each token needs one id")
        seen.add(t)
    return out


class SymbolTokenizer(PreTrainedTokenizerFast):
    """A word-level ``PreTrainedTokenizerFast`` over specials + regular tokens + symbols.

    Build it with :meth:`build`; it saves and loads with ``save_pretrained`` /
    ``from_pretrained`` (also through ``AutoTokenizer`` and
    ``PreTrainedTokenizerFast``, which load it as a plain fast tokenizer: the
    symbol range survives in ``init_kwargs``, read it with :func:`symbol_range`).

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<out>`` 2 (the readout token, also the eos
    token), regular tokens from 3, then symbols from ``symbol_start``.
    """

    @classmethod
    def build(cls, regular_tokens: Sequence[str], symbols: Sequence[str] | int) -> SymbolTokenizer:
        """A tokenizer over ``regular_tokens`` then ``symbols`` (a list of names, or a
        count ``n`` for the default names ``s0 ... s<n-1>``).

        Raises ``ValueError`` when a token is empty, holds whitespace, repeats,
        or is claimed by both the regular tokens and the symbols.
        """
        regular = _check_tokens(regular_tokens, "regular token")
        naming = {}
        if isinstance(symbols, (int, np.integer)) and not isinstance(symbols, bool):
            if symbols < 0:
                raise ValueError(f"symbols={symbols} must be >= 0 (a count) or a list of names")
            names = symbol_names(0, int(symbols))
            # names follow a rule, so a million of them can be rebuilt without a vocab lookup
            naming["symbol_prefix"] = SYMBOL_PREFIX
        elif isinstance(symbols, str):
            raise ValueError(f"symbols={symbols!r} is one string; pass a list of symbol names")
        else:
            names = _check_tokens(symbols, "symbol")
        reserved = set(SPECIAL_TOKENS)
        for t in regular:
            if t in reserved:
                raise ValueError(
                    f"regular token {t!r} is a special token of SymbolTokenizer "
                    f"({', '.join(SPECIAL_TOKENS)}); rename it in the task"
                )
        clash = set(regular).intersection(names) | reserved.intersection(names)
        if clash:
            t = sorted(clash)[0]
            raise ValueError(
                f"token {t!r} is both a symbol and a regular or special token; symbols "
                f"must differ from the task's tokens: rename the regular token, or pick "
                f"other symbol names"
            )
        tokens = [*SPECIAL_TOKENS, *regular, *names]
        backend = Tokenizer(
            models.WordLevel(dict(zip(tokens, range(len(tokens)), strict=True)), unk_token=UNK)
        )
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # Passing tokenizer_object= would deep-copy the backend (~2 s for a million
        # symbols); a backend already in place is adopted as is by __init__.
        tokenizer = cls.__new__(cls)
        tokenizer._tokenizer = backend
        tokenizer.__init__(
            pad_token=PAD,
            unk_token=UNK,
            eos_token=READOUT,
            symbol_start=len(SPECIAL_TOKENS) + len(regular),
            n_symbols=len(names),
            **naming,
        )
        return tokenizer

    @property
    def symbol_start(self) -> int:
        """Id of the first symbol."""
        return int(self.init_kwargs["symbol_start"])

    @property
    def n_symbols(self) -> int:
        """How many symbols the vocabulary holds."""
        return int(self.init_kwargs["n_symbols"])

    @property
    def readout_token_id(self) -> int:
        """Id of ``<out>``, the readout token."""
        return int(self.convert_tokens_to_ids(READOUT))


def symbol_range(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int] | None:
    """``(start, stop)`` ids of the symbols of a :class:`SymbolTokenizer`, also one
    loaded back as a plain fast tokenizer; ``None`` for any other tokenizer."""
    kw = getattr(tokenizer, "init_kwargs", {}) or {}
    if "symbol_start" not in kw or "n_symbols" not in kw:
        return None
    start = int(kw["symbol_start"])
    return start, start + int(kw["n_symbols"])


def readout_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id appended to every row: ``<out>`` in a SymbolTokenizer, else the eos
    token, else the sep token (BERT)."""
    for tok_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tok_id is not None:
            return int(tok_id)
    raise ValueError(
        f"tokenizer {tokenizer.name_or_path!r} has neither an eos nor a sep token, so no "
        f"readout token can be appended; set one, e.g. tokenizer.eos_token = '</s>'"
    )


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id; tokenizers without one (GPT-2) pad with the readout id, which the
    attention mask hides."""
    return (
        int(tokenizer.pad_token_id)
        if tokenizer.pad_token_id is not None
        else readout_token_id(tokenizer)
    )


# tokenizer -> (its backend, a copy without padding or truncation)
_UNPADDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _backend(tokenizer: PreTrainedTokenizerBase) -> Tokenizer | None:
    """The Rust tokenizer behind a fast tokenizer, without padding or truncation
    (a cached copy when the saved tokenizer turns them on, so the caller's stays as is)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or (backend.padding is None and backend.truncation is None):
        return backend
    cached = _UNPADDED.get(tokenizer)
    if cached is None or cached[0] is not backend:
        copy = Tokenizer.from_str(backend.to_str())
        copy.no_padding()
        copy.no_truncation()
        cached = _UNPADDED[tokenizer] = (backend, copy)
    return cached[1]


def encode_each(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Ids of each text, no specials added; straight through the Rust backend when
    there is one (the Python wrapper costs ~25 us per text)."""
    if not texts:
        return []
    backend = _backend(tokenizer)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _decode_each(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """The text of each single id."""
    backend = _backend(tokenizer)
    if backend is not None:
        return backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return tokenizer.batch_decode(
        [[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


def _in_context(
    tokenizer: PreTrainedTokenizerBase, words: list[str], prefix: str
) -> list[list[int] | None]:
    """Ids of each word after another word and a space; ``None`` where the word
    changes how the word before it encodes."""
    head = encode_each(tokenizer, [prefix + _ANCHOR])[0]
    out: list[list[int] | None] = []
    for ids in encode_each(tokenizer, [f"{prefix}{_ANCHOR} {w}" for w in words]):
        out.append(ids[len(head) :] if ids[: len(head)] == head else None)
    return out


def encoding_prefix(tokenizer: PreTrainedTokenizerBase, words: Sequence[str] = ()) -> str:
    """``""`` when every word (``words`` and a few probes) encodes alike at the start of
    a text and after a space (WordPiece, SentencePiece); ``" "`` when only a leading
    space makes them alike (byte-level BPE without ``add_prefix_space``).

    Encoding ``prefix + text`` then gives every token its in-context ids.
    """
    words = list(dict.fromkeys([*_PROBE_WORDS, *words]))
    for prefix in ("", " "):
        alone = encode_each(tokenizer, [prefix + w for w in words])
        if alone == _in_context(tokenizer, words, prefix):
            return prefix
    raise ValueError(
        f"tokenizer {tokenizer.name_or_path!r} encodes the words {words} differently at "
        f"the start of a text and after a space, with or without a leading space; probe "
        f"cannot give each token one encoding with it"
    )


def token_ids(
    tokenizer: PreTrainedTokenizerBase, words: Sequence[str], prefix: str | None = None
) -> list[list[int]]:
    """The ids of each word where it stands in a rendered row (one or more each).

    Raises ``ValueError`` naming a word that encodes to nothing or that merges
    with its neighbour.
    """
    words = list(words)
    prefix = encoding_prefix(tokenizer, words) if prefix is None else prefix
    alone = encode_each(tokenizer, [prefix + w for w in words])
    ctx = _in_context(tokenizer, words, prefix)
    for w, a, c in zip(words, alone, ctx, strict=True):
        if not a or a != c:
            raise ValueError(
                f"token {w!r} encodes to {a} on its own but {c} after another word with "
                f"tokenizer {tokenizer.name_or_path!r}; rename it in the task"
            )
    return alone


def single_token_symbols(
    tokenizer: PreTrainedTokenizerBase, exclude: Iterable[str] = (), prefix: str | None = None
) -> tuple[list[str], np.ndarray]:
    """Strings usable as symbols with a real tokenizer, and their ids.

    A candidate is the text of one vocabulary entry that encodes back to exactly
    that one id both on its own (after ``prefix``) and after another word and a
    space, i.e. where it stands in a rendered row. Excluded: special and added
    tokens, pieces that only exist glued to a neighbour (``##ing``, partial UTF-8
    bytes, ``Ġ`` alone), strings holding whitespace, and every id that occurs in
    the encoding of a string in ``exclude`` (the task's regular tokens).

    Returns ``(strings, ids)``: ``ids`` is ``[n_candidates]`` int64, ascending.
    """
    exclude = list(exclude)
    prefix = encoding_prefix(tokenizer, exclude) if prefix is None else prefix
    words, ids = _vocab_candidates(tokenizer, prefix)
    banned = {i for enc in encode_each(tokenizer, [prefix + w for w in exclude]) for i in enc}
    excluded = set(exclude)
    keep = [
        k
        for k, (w, i) in enumerate(zip(words, ids, strict=True))
        if i not in banned and w not in excluded
    ]
    return [words[k] for k in keep], np.asarray([ids[k] for k in keep], dtype=np.int64)


# tokenizer -> {(prefix, vocabulary size): candidates}; scanning a vocabulary takes ~1 s
_CANDIDATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _vocab_candidates(
    tokenizer: PreTrainedTokenizerBase, prefix: str
) -> tuple[list[str], list[int]]:
    """Every single-token symbol of the vocabulary, ignoring any task (cached)."""
    key = (prefix, len(tokenizer))
    cached = _CANDIDATES.setdefault(tokenizer, {})
    if key in cached:
        return cached[key]
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    vocab_ids = [i for i in range(len(tokenizer)) if i not in special]
    ids, words = [], []
    for i, text in zip(vocab_ids, _decode_each(tokenizer, vocab_ids), strict=True):
        w = text.strip()
        if w and len(w.split()) == 1 and text in (w, " " + w):
            ids.append(i)
            words.append(w)
    alone = encode_each(tokenizer, [prefix + w for w in words])
    ctx = _in_context(tokenizer, words, prefix)
    seen: set[str] = set()
    keep_words, keep_ids = [], []
    for i, w, a, c in zip(ids, words, alone, ctx, strict=True):
        if a == [i] and c == [i] and w not in seen:
            seen.add(w)
            keep_words.append(w)
            keep_ids.append(i)
    cached[key] = (keep_words, keep_ids)
    return cached[key]


def tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    """A name that says where the tokenizer came from (recorded in dataset cards):
    ``SymbolTokenizer``, a Hub id or folder, or the ``.gguf`` file it was read from
    (:func:`load_tokenizer_by_name` loads each back)."""
    if symbol_range(tokenizer) is not None:
        return "SymbolTokenizer"
    name = str(tokenizer.name_or_path or type(tokenizer).__name__)
    folder = Path(name)
    if folder.is_dir() and not any(
        (folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
    ):
        # loaded with gguf_file=, which the tokenizer does not keep: name the file
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(ggufs[0])
    return name


def load_tokenizer_by_name(name: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name)``, a ``.gguf`` file (or ``gguf_file=`` in a
    folder or Hub repo) included, with a clear error when ``name`` is neither a local
    folder or file nor reachable on the Hub.

    A Hub id is asked about once (``probe.locate.hub_unreachable``) before loading;
    unreachable, a copy in the local cache still loads.
    """
    from transformers import AutoTokenizer

    from probe.locate import hub_download_hint, hub_unreachable, looks_like_path

    path = Path(name).expanduser()
    if looks_like_path(name) and not path.exists():
        raise ValueError(
            f"cannot load tokenizer {name!r}: no such file or folder; pass a local folder, a "
            f".gguf file, a Hub id or a tokenizer object"
        )
    how = f"; pass a local folder, a .gguf file or a tokenizer object; offline, {hub_download_hint(name)}"
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        if path.is_file() and name.endswith(".gguf"):
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if path.exists():
            return AutoTokenizer.from_pretrained(str(path), **kwargs)
        unreachable = hub_unreachable(name)
        if unreachable is None:
            return AutoTokenizer.from_pretrained(name, **kwargs)
        try:
            return AutoTokenizer.from_pretrained(name, local_files_only=True, **kwargs)
        except OSError:
            raise ValueError(
                f"cannot load tokenizer {name!r}: it is not in the local cache and the Hugging "
                f"Face Hub cannot be reached ({unreachable})" + how
            ) from None
    except OSError as e:
        raise ValueError(f"cannot load tokenizer {name!r} ({e})" + how) from e
