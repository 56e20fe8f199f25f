"""Templates and template tasks: parsing, validation, equivalence, seeded sampling.

A *template* is a string of wildcards (``a``, ``b``, ...) and regular tokens, e.g.
``a = 1 ; b = -1 ; print a``. A *template task* gives each template a label: a
real number (regression) or a token (symbolic), possibly one of the template's
own wildcards. A sample picks a template and substitutes its wildcards with
distinct symbols drawn from an alphabet of ``n_symbols`` (an injective map).

Two templates are *equivalent* when they have wildcards and regular tokens in
the same positions, the same regular tokens, and the same pattern of equal
positions (``a b a`` and ``c d c``). No learner can tell them apart from
samples, so a task never holds two equivalent templates.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from probe.checks import check_count

DEFAULT_WILDCARDS: frozenset[str] = frozenset("abcdefghijklmnopqrstuvwxyz")

LabelKind = Literal["regression", "symbolic"]
# every label kind, decided by TemplateTask from its labels; models, MLPs and metrics check against it
LABEL_KINDS: tuple[LabelKind, ...] = get_args(LabelKind)


def _check_wildcards(wildcards: Iterable[str] | None) -> frozenset[str]:
    """The wildcard set, validated; ``None`` means the single letters a-z."""
    if wildcards is None:
        return DEFAULT_WILDCARDS
    if isinstance(wildcards, str):
        raise ValueError(
            f"wildcards={wildcards!r} is one string; pass a list of wildcard tokens, "
            f"e.g. wildcards={list(wildcards.split() or [wildcards])!r}"
        )
    try:
        items = list(wildcards)
    except TypeError:
        raise ValueError(
            f"wildcards={wildcards!r} is not a collection of tokens; pass e.g. ['x', 'y']"
        ) from None
    if not items:
        raise ValueError("wildcards is empty; pass at least one wildcard token, or None for a-z")
    for w in items:
        if not isinstance(w, str) or not w or w != w.strip() or len(w.split()) != 1:
            raise ValueError(
                f"wildcard {w!r} is not a token; each wildcard must be a non-empty "
                f"string without whitespace"
            )
    return frozenset(items)


@dataclass(frozen=True)
class Template:
    """One template: a tuple of tokens, each a wildcard or a regular token.

    ``Template.parse("a b a")`` splits on whitespace; a token is a wildcard iff
    it is in ``wildcards`` (default: the single lowercase letters a-z).
    """

    tokens: tuple[str, ...]
    wildcards: frozenset[str] = field(default=DEFAULT_WILDCARDS, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.tokens, str):
            raise ValueError(
                f"Template tokens {self.tokens!r} is a string; use Template.parse({self.tokens!r})"
            )
        tokens = tuple(self.tokens)
        if not tokens:
            raise ValueError("a template needs at least one token; got none")
        for t in tokens:
            if not isinstance(t, str) or not t or len(t.split()) != 1 or t != t.strip():
                raise ValueError(
                    f"template token {t!r} in {tokens!r} is not a token: tokens are "
                    f"non-empty strings without whitespace"
                )
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "wildcards", _check_wildcards(self.wildcards))

    @classmethod
    def parse(cls, text: str, wildcards: Iterable[str] | None = None) -> Template:
        """Parse whitespace-separated tokens, e.g. ``"a = 1 ; print a"``."""
        if not isinstance(text, str):
            raise ValueError(f"template {text!r} is not a string; write it as e.g. 'a b a'")
        if not text.split():
            raise ValueError(
                f"template {text!r} is empty; write whitespace-separated tokens, e.g. 'a b a'"
            )
        return cls(tuple(text.split()), _check_wildcards(wildcards))

    @property
    def text(self) -> str:
        """The tokens joined by single spaces."""
        return " ".join(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __str__(self) -> str:
        return self.text

    @property
    def wildcards_in_order(self) -> tuple[str, ...]:
        """The distinct wildcards of this template, in order of first appearance."""
        return tuple(dict.fromkeys(t for t in self.tokens if t in self.wildcards))

    @property
    def n_wildcards(self) -> int:
        """How many distinct wildcards the template has."""
        return len(self.wildcards_in_order)

    @property
    def pattern(self) -> tuple[int, ...]:
        """Per position: wildcard index j (first-appearance order), or -1 if regular."""
        index = {w: j for j, w in enumerate(self.wildcards_in_order)}
        return tuple(index.get(t, -1) for t in self.tokens)

    @property
    def regular(self) -> tuple[int, ...]:
        """Positions of the regular tokens."""
        return tuple(i for i, j in enumerate(self.pattern) if j < 0)

    @property
    def canonical(self) -> tuple[int | str, ...]:
        """Wildcards renamed to their index j, regular tokens kept: equal iff equivalent."""
        return tuple(t if j < 0 else j for t, j in zip(self.tokens, self.pattern, strict=True))

    def equivalent(self, other: Template) -> bool:
        """Same positions of wildcards and regular tokens, same regular tokens,
        same pattern of equal positions: no learner can tell the two apart."""
        return self.canonical == other.canonical


@dataclass(frozen=True)
class TemplateSample:
    """``n`` sampled rows of a task.

    template: ``[n]`` int64, the template index of each row.
    symbols:  ``[n, max_wildcards]`` int64, the symbol (in ``[0, n_symbols)``)
              assigned to wildcard j of the row's template, in first-appearance
              order; -1 past the template's wildcards. Injective within a row.
    """

    template: np.ndarray
    symbols: np.ndarray

    def __len__(self) -> int:
        return len(self.template)


def sample_injective(n: int, k: int, n_symbols: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, k]`` int64: each row a uniformly random injective map of k slots into
    ``[0, n_symbols)``, with no rejection and no Python loop per row.

    Draw ranks r_i in ``[0, n_symbols - i)`` and decode them like a Lehmer code
    (from the last slot back, shift every later rank at or above r_i up by one).
    The decoding is a bijection between rank tuples and injective tuples, so the
    rows are exactly uniform for any alphabet size, small or large.
    """
    if k > n_symbols:
        raise ValueError(f"cannot map {k} wildcards injectively into {n_symbols} symbols")
    ranks = rng.integers(0, n_symbols - np.arange(k, dtype=np.int64)[:, None], size=(k, n))
    for i in range(k - 2, -1, -1):
        ranks[i + 1 :] += ranks[i + 1 :] >= ranks[i]
    return np.ascontiguousarray(ranks.T)


def _label_kind(labels: Sequence[Any]) -> LabelKind:
    """Classify labels as all numbers or all tokens; anything else is an error."""
    kinds = []
    for i, y in enumerate(labels):
        if isinstance(y, (bool, np.bool_)):
            raise ValueError(
                f"label {i} is the bool {y!r}; use a number (e.g. 1.0 / -1.0) or a token"
            )
        if isinstance(y, str):
            kinds.append("symbolic")
        elif isinstance(y, numbers.Real):
            kinds.append("regression")
        else:
            raise ValueError(
                f"label {i} ({y!r}, a {type(y).__name__}) is neither a number (regression) "
                f"nor a token string (symbolic)"
            )
    if len(set(kinds)) > 1:
        i_num = kinds.index("regression")
        i_sym = kinds.index("symbolic")
        raise ValueError(
            f"labels mix numbers and tokens (label {i_num} = {labels[i_num]!r}, label {i_sym} "
            f"= {labels[i_sym]!r}); a task is either regression (all numbers) or symbolic "
            f"(all tokens): write numeric tokens as strings, e.g. '1', for a symbolic task"
        )
    return kinds[0]  # type: ignore[return-value]


class TemplateTask:
    """A set of pairwise non-equivalent templates, each with a label and a probability.

    Attributes: ``name``, ``templates`` (tuple of :class:`Template`), ``labels``
    (floats or tokens), ``probs`` (``[n_templates]`` float64, sums to 1),
    ``label_kind``, ``regular_tokens``, ``max_wildcards``, ``max_length``,
    ``label_wildcard``, ``wildcards``.
    """

    def __init__(
        self,
        templates: Sequence[Template],
        labels: Sequence[float | str],
        probs: Sequence[float] | np.ndarray | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(templates, (str, Template)) or not isinstance(templates, Sequence):
            raise ValueError(
                f"templates must be a list of templates, got {templates!r}; e.g. ['a b a', 'a b b']"
            )
        templates = tuple(templates)
        if not templates:
            raise ValueError("the task is empty: pass at least one template and its label")
        for i, t in enumerate(templates):
            if not isinstance(t, Template):
                raise ValueError(
                    f"template {i} ({t!r}) is not a Template; build tasks from strings with "
                    f"TemplateTask.from_strings"
                )
        if isinstance(labels, (str, bytes)) or not isinstance(labels, (Sequence, np.ndarray)):
            raise ValueError(f"labels must be a list with one label per template, got {labels!r}")
        labels = list(labels)
        if len(labels) != len(templates):
            raise ValueError(
                f"{len(templates)} templates but {len(labels)} labels; give exactly one label "
                f"per template"
            )
        wildcard_sets = {t.wildcards for t in templates}
        if len(wildcard_sets) > 1:
            raise ValueError(
                "the templates use different wildcard sets; build them all with the same "
                "wildcards (TemplateTask.from_strings(..., wildcards=...))"
            )
        self.wildcards: frozenset[str] = templates[0].wildcards
        self.name: str = "custom" if name is None else str(name)
        self.templates: tuple[Template, ...] = templates
        self.label_kind: LabelKind = _label_kind(labels)
        self.labels: tuple[float | str, ...] = self._check_labels(labels)
        self.probs: np.ndarray = self._check_probs(probs)
        self._check_equivalence()

        label_wildcard = np.full(len(templates), -1, dtype=np.int64)
        regular = {t for tpl in templates for t in tpl.tokens if t not in self.wildcards}
        if self.label_kind == "symbolic":
            for i, (tpl, y) in enumerate(zip(templates, self.labels, strict=True)):
                if y in self.wildcards:
                    label_wildcard[i] = tpl.wildcards_in_order.index(y)
                else:
                    regular.add(y)
        label_wildcard.setflags(write=False)
        self.label_wildcard: np.ndarray = label_wildcard
        self.regular_tokens: tuple[str, ...] = tuple(sorted(regular))
        self.max_wildcards: int = max(t.n_wildcards for t in templates)
        self.max_length: int = max(len(t) for t in templates)
        self._frozen = True

    def __setattr__(self, key: str, value: Any) -> None:
        # a task is validated once, at construction; edits would bypass that
        if getattr(self, "_frozen", False):
            raise AttributeError(
                f"TemplateTask is immutable (tried to set {key!r}); build a new one, e.g. "
                f"TemplateTask.from_dict({{**task.to_dict(), {key!r}: ...}})"
            )
        super().__setattr__(key, value)

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_strings(
        cls,
        templates: Sequence[str],
        labels: Sequence[float | str],
        wildcards: Iterable[str] | None = None,
        probs: Sequence[float] | np.ndarray | None = None,
        name: str | None = None,
    ) -> TemplateTask:
        """Parse whitespace-separated templates, e.g. ``(["a b a", "a b b"], [1.0, -1.0])``.

        A token is a wildcard iff it is in ``wildcards`` (default: the single
        lowercase letters a-z). Labels are numbers (regression) or tokens
        (symbolic: a wildcard of that template, or a regular token).
        ``probs`` defaults to uniform over templates.
        """
        if isinstance(templates, str) or not isinstance(templates, Sequence):
            raise ValueError(
                f"templates must be a list of strings, got {templates!r}; e.g. ['a b a', 'a b b']"
            )
        ws = _check_wildcards(wildcards)
        parsed = []
        for i, text in enumerate(templates):
            if not isinstance(text, str) or not text.split():
                raise ValueError(
                    f"template {i} ({text!r}) is empty or not a string; write whitespace-"
                    f"separated tokens, e.g. 'a b a'"
                )
            parsed.append(Template.parse(text, ws))
        return cls(parsed, labels, probs=probs, name=name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able spec; ``TemplateTask.from_dict(task.to_dict())`` equals ``task``."""
        return {
            "name": self.name,
            "templates": [t.text for t in self.templates],
            "labels": list(self.labels),
            "label_kind": self.label_kind,
            "wildcards": None if self.wildcards == DEFAULT_WILDCARDS else sorted(self.wildcards),
            "probs": [float(p) for p in self.probs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TemplateTask:
        """Rebuild a task from :meth:`to_dict` output (e.g. read from a dataset card)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a dict from TemplateTask.to_dict(), got {type(d).__name__}")
        missing = {"templates", "labels"} - set(d)
        unknown = set(d) - {"name", "templates", "labels", "label_kind", "wildcards", "probs"}
        if missing or unknown:
            raise ValueError(
                f"not a TemplateTask spec: missing keys {sorted(missing)}, unknown keys "
                f"{sorted(unknown)}; expected the output of TemplateTask.to_dict()"
            )
        task = cls.from_strings(
            d["templates"],
            d["labels"],
            wildcards=d.get("wildcards"),
            probs=d.get("probs"),
            name=d.get("name"),
        )
        if "label_kind" in d and d["label_kind"] != task.label_kind:
            raise ValueError(
                f"spec says label_kind={d['label_kind']!r} but its labels are {task.label_kind}"
            )
        return task

    # -- validation --------------------------------------------------------------

    def _check_labels(self, labels: list[Any]) -> tuple[float | str, ...]:
        if self.label_kind == "regression":
            out = tuple(float(y) for y in labels)
            for i, y in enumerate(out):
                if not math.isfinite(y):
                    raise ValueError(
                        f"label {i} of template {self.templates[i].text!r} is {y}; "
                        f"regression labels must be finite numbers"
                    )
            return out
        for i, (tpl, y) in enumerate(zip(self.templates, labels, strict=True)):
            if not y or len(y.split()) != 1 or y != y.strip():
                raise ValueError(
                    f"label {i} ({y!r}) of template {tpl.text!r} is not a single token; a "
                    f"symbolic label is one wildcard of its template or one regular token"
                )
            if y in self.wildcards and y not in tpl.tokens:
                raise ValueError(
                    f"label {i} ({y!r}) of template {i} ({tpl.text!r}) is a wildcard that "
                    f"does not occur in that template; use one of its wildcards "
                    f"{list(tpl.wildcards_in_order)} or a regular token (not a wildcard)"
                )
        return tuple(str(y) for y in labels)

    def _check_probs(self, probs: Sequence[float] | np.ndarray | None) -> np.ndarray:
        n = len(self.templates)
        if probs is None:
            p = np.full(n, 1.0 / n)
        else:
            if isinstance(probs, (str, bytes)):
                raise ValueError(f"probs must be a list of {n} numbers, got {probs!r}")
            try:
                p = np.asarray(probs, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"probs must be a list of {n} numbers, got {probs!r}") from None
            if p.shape != (n,):
                raise ValueError(
                    f"probs has shape {p.shape} but the task has {n} templates; give one "
                    f"probability per template"
                )
            if not np.all(np.isfinite(p)) or np.any(p < 0):
                i = int(np.flatnonzero(~(np.isfinite(p) & (p >= 0)))[0])
                raise ValueError(
                    f"probs[{i}] = {p[i]} (template {self.templates[i].text!r}) is negative "
                    f"or not finite; probabilities are >= 0"
                )
            if abs(p.sum() - 1.0) > 1e-6:
                raise ValueError(
                    f"probs sum to {p.sum():.6g}, not 1; divide them by their sum "
                    f"(or pass probs=None for uniform)"
                )
            p = p.copy()
        p.setflags(write=False)
        return p

    def _check_equivalence(self) -> None:
        seen: dict[tuple[int | str, ...], int] = {}
        for i, tpl in enumerate(self.templates):
            j = seen.setdefault(tpl.canonical, i)
            if j != i:
                other = self.templates[j]
                raise ValueError(
                    f"templates {j} ({other.text!r}) and {i} ({tpl.text!r}) are equivalent: "
                    f"they differ only in wildcard names, so no learner can tell them apart; "
                    f"remove one (add its probability to the other)"
                )

    # -- sampling ----------------------------------------------------------------

    def sample(self, n: int, n_symbols: int, rng: np.random.Generator) -> TemplateSample:
        """Draw ``n`` rows: a template per row (following ``probs``) and an injective
        substitution of its wildcards by symbols in ``[0, n_symbols)``.

        Returns a :class:`TemplateSample` with ``template`` ``[n]`` and ``symbols``
        ``[n, max_wildcards]`` (int64; -1 past each template's wildcards). The same
        generator state gives identical arrays.
        """
        n = check_count(n, "n")
        n_symbols = check_count(n_symbols, "n_symbols")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"rng must be a numpy Generator, got {type(rng).__name__}; "
                f"pass np.random.default_rng(seed)"
            )
        n_wild = np.array([t.n_wildcards for t in self.templates], dtype=np.int64)
        # only templates that can be drawn constrain the alphabet size
        need = int(n_wild[self.probs > 0].max())
        if n_symbols < need:
            i = int(np.flatnonzero((n_wild == need) & (self.probs > 0))[0])
            raise ValueError(
                f"n_symbols={n_symbols} is too small: template {i} "
                f"({self.templates[i].text!r}) has {need} distinct wildcards, which need "
                f"{need} distinct symbols; use an alphabet of at least {need} symbols"
            )
        cdf = np.cumsum(self.probs)
        template = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        template = np.minimum(template, len(self.templates) - 1).astype(np.int64)
        symbols = np.full((n, self.max_wildcards), -1, dtype=np.int64)
        symbols[:, :need] = sample_injective(n, need, n_symbols, rng)
        if n_wild.min() < self.max_wildcards:
            # a template with fewer wildcards leaves its trailing columns unused
            symbols[np.arange(self.max_wildcards) >= n_wild[template][:, None]] = -1
        return TemplateSample(template=template, symbols=symbols)

    # -- dunder ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.templates)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TemplateTask):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        shown = 6
        rows = [
            f"{t.text!r} -> {y!r}"
            for t, y in zip(self.templates[:shown], self.labels[:shown], strict=False)
        ]
        if len(self.templates) > shown:
            rows.append(f"... ({len(self.templates) - shown} more)")
        uniform = np.allclose(self.probs, 1.0 / len(self.probs))
        probs = "" if uniform else f", probs={np.round(self.probs, 4).tolist()}"
        return (
            f"TemplateTask({self.name!r}, {self.label_kind}, {len(self.templates)} templates: "
            + ", ".join(rows)
            + probs
            + ")"
        )


# The most samples one split may hold: a rendered split lives in memory, with an
# alphabet of that many symbols, in one Arrow chunk (1e9 fails after minutes).
MAX_SAMPLES = 10_000_000
