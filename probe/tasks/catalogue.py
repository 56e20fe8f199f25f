"""The task catalogue: a registry of named template tasks.

``list_tasks()`` names them, ``get_task(name, **params)`` builds one as a
:class:`~probe.tasks.templates.TemplateTask`, ``register_task(name)`` adds a factory,
and ``format_task_table()`` is the markdown table that ``probe tasks`` prints
and the README embeds. Every factory's docstring states its templates and
labels; its first line is the table's description.

Wildcards are the single lowercase letters, so regular tokens here are never
single letters: ``=``, ``;``, ``print``, ``1``, ``-1``, ``|``, ``:``.
"""

from __future__ import annotations

import inspect
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from probe.checks import did_you_mean
from probe.tasks.templates import TemplateTask

TaskFactory = Callable[..., TemplateTask]

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its factory and the factory's keyword parameters."""

    name: str
    factory: TaskFactory
    defaults: dict[str, Any]

    @property
    def description(self) -> str:
        """The first line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, TaskEntry] = {}


def register_task(name: str, factory: TaskFactory | None = None, *, overwrite: bool = False) -> Any:
    """Register ``factory`` under ``name``; used bare it is a decorator.

    The factory takes keyword parameters, each with a default (so
    ``get_task(name)`` always works), and returns a :class:`TemplateTask`.
    Its docstring's first line is the catalogue description.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"task name {name!r} is not an identifier; use letters, digits and '_', "
            f"starting with a letter"
        )

    def decorator(fn: TaskFactory) -> TaskFactory:
        if name in _REGISTRY and not overwrite:
            raise ValueError(
                f"task {name!r} is already registered; pick another name or pass overwrite=True"
            )
        defaults = {}
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
                raise ValueError(
                    f"task {name!r}: factory parameter {p.name!r} needs a default value "
                    f"(catalogue factories take keyword parameters with defaults only)"
                )
            defaults[p.name] = p.default
        _REGISTRY[name] = TaskEntry(name, fn, defaults)
        return fn

    return decorator if factory is None else decorator(factory)


def list_tasks() -> list[str]:
    """The names in the catalogue, in registration order."""
    return list(_REGISTRY)


def task_entry(name: str) -> TaskEntry:
    """The registry entry of ``name``: its factory, parameter defaults and description."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)} (`probe tasks` shows "
            f"their templates).{did_you_mean(name, _REGISTRY)}"
        )
    return _REGISTRY[name]


def get_task(name: str, **params: Any) -> TemplateTask:
    """Build the catalogue task ``name``; ``params`` override the factory's defaults.

    The task is named ``name``, followed by its non-default parameters
    (e.g. ``majority_k-k5``), so differently-parameterized tasks never share a name.
    """
    entry = task_entry(name)
    unknown = sorted(set(params) - set(entry.defaults))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items()) or "none"
        raise ValueError(
            f"task {name!r} has no parameter(s) {', '.join(unknown)}; its parameters "
            f"(with defaults): {valid}"
        )
    task = entry.factory(**params)
    return TemplateTask(task.templates, task.labels, probs=task.probs, name=_name(name, params))


def _name(name: str, params: dict[str, Any]) -> str:
    """``name`` plus its non-default parameters, e.g. ``majority_k-k5``."""
    defaults = _REGISTRY[name].defaults
    return name + "".join(f"-{k}{v}" for k, v in params.items() if v != defaults[k])


# -- the catalogue -------------------------------------------------------------


@register_task("same_different")
def same_different() -> TemplateTask:
    """Are the two symbols the same? `a a` -> +1, `a b` -> -1.

    Templates ``a a`` (label 1.0) and ``a b`` (label -1.0); regression.
    """
    return TemplateTask.from_strings(["a a", "a b"], [1.0, -1.0])


@register_task("aba_vs_abb")
def aba_vs_abb() -> TemplateTask:
    """Does the third symbol repeat the first? `a b a` -> +1, `a b b` -> -1.

    Templates ``a b a`` (label 1.0) and ``a b b`` (label -1.0); regression.
    """
    return TemplateTask.from_strings(["a b a", "a b b"], [1.0, -1.0])


@register_task("aabb_vs_abab")
def aabb_vs_abab() -> TemplateTask:
    """Pairs or alternation? `a a b b` -> +1, `a b a b` -> -1.

    Templates ``a a b b`` (label 1.0) and ``a b a b`` (label -1.0); regression.
    """
    return TemplateTask.from_strings(["a a b b", "a b a b"], [1.0, -1.0])


@register_task("majority_k")
def majority_k(k: int = 3) -> TemplateTask:
    """Does the first symbol fill a strict majority of the k positions? +1 if so, else -1.

    Templates: every string of length ``k`` (2 <= k <= 8) over the wildcards
    ``a``, ``b`` that starts with ``a`` (2**(k-1) templates; starting with ``a``
    names the wildcards canonically, so no two are equivalent). Label 1.0 if
    ``a`` occurs more than k/2 times, else -1.0. For odd k that is plain
    majority; for even k a tie counts as -1 (``a`` is not a strict majority),
    so k = 2 is same/different. Regression.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= 8:
        raise ValueError(f"majority_k: k={k!r} must be an integer in 2..8")
    k = int(k)
    templates, labels = [], []
    for rest in itertools.product("ab", repeat=k - 1):
        tokens = ("a", *rest)
        templates.append(" ".join(tokens))
        labels.append(1.0 if 2 * tokens.count("a") > k else -1.0)
    return TemplateTask.from_strings(templates, labels)


@register_task("var_assign")
def var_assign() -> TemplateTask:
    """A two-variable program prints one value: `a = 1 ; b = -1 ; print a` -> 1.

    Templates ``a = x ; b = y ; print v`` for both value orders
    (x, y) = (1, -1), (-1, 1) and both prints v = a, b (4 templates); the label
    is the printed value as a number. Regular tokens ``=``, ``;``, ``print``,
    ``1``, ``-1``. Regression.
    """
    templates, labels = [], []
    for x, y in (("1", "-1"), ("-1", "1")):
        for var, value in (("a", x), ("b", y)):
            templates.append(f"a = {x} ; b = {y} ; print {var}")
            labels.append(float(value))
    return TemplateTask.from_strings(templates, labels)


@register_task("var_copy")
def var_copy() -> TemplateTask:
    """A program assigns symbols to variables and prints one: `a = c ; b = d ; print a` -> c.

    Templates ``a = c ; b = d ; print a`` (label ``c``) and
    ``a = c ; b = d ; print b`` (label ``d``); the label is a wildcard of the
    template, so the answer is a symbol never seen in training. Symbolic.
    """
    return TemplateTask.from_strings(
        ["a = c ; b = d ; print a", "a = c ; b = d ; print b"], ["c", "d"]
    )


@register_task("copy")
def copy() -> TemplateTask:
    """Repeat the input symbol: `a` -> a.

    One template, ``a``, whose label is its own wildcard: the model must
    output the symbol it was shown. Symbolic.
    """
    return TemplateTask.from_strings(["a"], ["a"])


@register_task("rmts")
def rmts() -> TemplateTask:
    """Relational match-to-sample: which target pair shares the source pair's relation?

    A source pair, then two target pairs after ``:`` and ``|``; one target is
    "same" (``x x``), the other "different" (``x y``), and every object is a
    fresh symbol, so only the relation can match. Label 1.0 if the first
    target matches the source, -1.0 if the second does. Templates (regression):
    ``a a : b b | c d`` -> 1, ``a a : b c | d d`` -> -1,
    ``a b : c c | d e`` -> -1, ``a b : c d | e e`` -> 1.
    """
    return TemplateTask.from_strings(
        ["a a : b b | c d", "a a : b c | d d", "a b : c c | d e", "a b : c d | e e"],
        [1.0, -1.0, -1.0, 1.0],
    )


@register_task("dist3")
def dist3() -> TemplateTask:
    """Distribution of three: complete the third row with the missing symbol.

    A 3x3 grid as three rows separated by ``|``: row 1 is ``a b c``, rows 2
    and 3 are other orders of the same three symbols (all three rows
    distinct); row 3 shows only its first two symbols and the label is the
    third, a wildcard of the template. E.g. ``a b c | b c a | c a`` -> ``b``.
    5 * 4 = 20 templates. Symbolic.
    """
    row1 = ("a", "b", "c")
    templates, labels = [], []
    orders = [p for p in itertools.permutations(row1) if p != row1]
    for row2 in orders:
        for row3 in orders:
            if row3 != row2:
                templates.append(f"{' '.join(row1)} | {' '.join(row2)} | {' '.join(row3[:2])}")
                labels.append(row3[2])
    return TemplateTask.from_strings(templates, labels)


# -- random templates ------------------------------------------------------------

_WILDCARD_NAMES = "abcdefghijklmnopqrstuvwxyz"


def _count_canonical(length: int, n_wildcards: int, n_regular: int) -> int:
    """How many pairwise non-equivalent templates of ``length`` tokens use at least
    one and at most ``n_wildcards`` distinct wildcards and ``n_regular`` regular tokens.

    Counts canonical forms by dynamic programming over (position, wildcards so far):
    each position is a regular token, a wildcard already seen, or a new wildcard.
    """
    ways = [1] + [0] * n_wildcards  # ways[m]: prefixes using m distinct wildcards
    for _ in range(length):
        new = [0] * (n_wildcards + 1)
        for m, w in enumerate(ways):
            if w:
                new[m] += w * (n_regular + m)
                if m < n_wildcards:
                    new[m + 1] += w
        ways = new
    return sum(ways[1:])


def _random_canonical(
    rng: np.random.Generator, length: int, n_wildcards: int, n_regular: int
) -> tuple[int | str, ...] | None:
    """One random template in canonical form (wildcard j as int j), or None if it has
    no wildcard. Each position picks uniformly among the moves open to it."""
    out: list[int | str] = []
    m = 0
    for _ in range(length):
        n_moves = n_regular + m + (m < n_wildcards)
        move = int(rng.integers(n_moves))
        if move < n_regular:
            out.append(f"t{move}")
        elif move < n_regular + m:
            out.append(move - n_regular)
        else:
            out.append(m)
            m += 1
    return tuple(out) if m else None


@register_task("random_templates")
def random_templates(
    n_templates: int = 4,
    n_wildcards: int = 3,
    n_regular: int = 2,
    length: int = 5,
    seed: int = 0,
) -> TemplateTask:
    """Random pairwise non-equivalent templates with balanced ±1 labels.

    ``n_templates`` templates of ``length`` tokens; each position is a regular
    token ``t0`` .. ``t{n_regular-1}`` or a wildcard among the first
    ``n_wildcards`` letters, and every template has at least one wildcard.
    Half the labels (rounded up) are 1.0, the rest -1.0, in random order.
    The same seed gives the same task. Regression.
    """
    for pname, value, low in (
        ("n_templates", n_templates, 1),
        ("n_wildcards", n_wildcards, 1),
        ("n_regular", n_regular, 0),
        ("length", length, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"random_templates: {pname}={value!r} must be an integer >= {low}")
    if n_wildcards > len(_WILDCARD_NAMES):
        raise ValueError(
            f"random_templates: n_wildcards={n_wildcards} exceeds the "
            f"{len(_WILDCARD_NAMES)} default wildcards a-z"
        )
    available = _count_canonical(length, n_wildcards, n_regular)
    if n_templates > available:
        raise ValueError(
            f"random_templates: only {available} non-equivalent templates of length {length} "
            f"exist with {n_wildcards} wildcards and {n_regular} regular tokens, but "
            f"n_templates={n_templates}; lower n_templates or raise length, n_wildcards "
            f"or n_regular"
        )
    rng = np.random.default_rng(seed)
    chosen: dict[tuple[int | str, ...], None] = {}
    if n_templates * 4 > available:
        # a dense request: enumerate every canonical form, then pick without replacement
        forms = _all_canonical(length, n_wildcards, n_regular)
        for i in sorted(rng.choice(len(forms), size=n_templates, replace=False)):
            chosen[forms[i]] = None
    else:
        # a sparse request: draw until enough distinct forms (at least 3/4 of draws are new)
        while len(chosen) < n_templates:
            form = _random_canonical(rng, length, n_wildcards, n_regular)
            if form is not None:
                chosen.setdefault(form, None)
    templates = [
        " ".join(_WILDCARD_NAMES[t] if isinstance(t, int) else t for t in form) for form in chosen
    ]
    labels = np.where(np.arange(n_templates) < (n_templates + 1) // 2, 1.0, -1.0)
    labels = rng.permutation(labels)
    params = dict(
        n_templates=n_templates,
        n_wildcards=n_wildcards,
        n_regular=n_regular,
        length=length,
        seed=seed,
    )
    name = _name("random_templates", params)
    return TemplateTask.from_strings(templates, labels.tolist(), name=name)


def _all_canonical(length: int, n_wildcards: int, n_regular: int) -> list[tuple[int | str, ...]]:
    """Every canonical form counted by :func:`_count_canonical`, in a fixed order."""
    forms: list[tuple[int | str, ...]] = [()]
    counts = [0]
    for _ in range(length):
        new_forms, new_counts = [], []
        for form, m in zip(forms, counts, strict=True):
            for r in range(n_regular):
                new_forms.append((*form, f"t{r}"))
                new_counts.append(m)
            for j in range(min(m + 1, n_wildcards)):
                new_forms.append((*form, j))
                new_counts.append(max(m, j + 1))
        forms, counts = new_forms, new_counts
    return [f for f, m in zip(forms, counts, strict=True) if m]


# -- the table -----------------------------------------------------------------


def _fmt_label(y: float | str) -> str:
    return f"{y:+g}" if isinstance(y, float) else f"`{y}`"


def format_task_table(max_shown: int = 4) -> str:
    """A markdown table of the catalogue at default parameters: name, templates,
    labels, label kind and description; long tasks show ``max_shown`` templates
    and a count."""
    rows = [
        "| task | templates | labels | kind | description |",
        "|---|---|---|---|---|",
    ]
    for name, entry in _REGISTRY.items():
        task = get_task(name)
        shown = range(min(max_shown, len(task)))
        more = f", … ({len(task)} in all)" if len(task) > max_shown else ""
        templates = ", ".join(f"`{task.templates[i].text}`" for i in shown) + more
        labels = ", ".join(_fmt_label(task.labels[i]) for i in shown) + (", …" if more else "")
        params = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items())
        title = f"`{name}`" + (f" ({params})" if params else "")
        # a literal '|' would end the cell; GitHub markdown reads '\\|' as the character
        templates, desc = (s.replace("|", "\\|") for s in (templates, entry.description))
        rows.append(f"| {title} | {templates} | {labels} | {task.label_kind} | {desc} |")
    return "\n".join(rows)


def resolve_task(task: TemplateTask | str) -> tuple[TemplateTask, str | None]:
    """A task, and its catalogue spec (``"majority_k:k=5"``) when it comes from the
    catalogue, else ``None``.

    ``task`` is a :class:`TemplateTask` or a catalogue name, optionally with
    parameters: ``name:key=value,key=value`` (values parsed as JSON, else strings).
    """
    if isinstance(task, TemplateTask):
        spec = task.name if task.name in list_tasks() and get_task(task.name) == task else None
        return task, spec
    if not isinstance(task, str):
        raise ValueError(
            f"task must be a TemplateTask or a catalogue name, got {type(task).__name__}"
        )
    name, params = parse_task_spec(task)
    return get_task(name, **params), task


def parse_task_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"majority_k:k=5"`` -> ``("majority_k", {"k": 5})``: a catalogue name and its
    parameters (values parsed as JSON, else strings); nothing is looked up."""
    name, _, params_text = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in params_text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(
                f"task {spec!r}: parameter {item!r} is not key=value; write e.g. 'majority_k:k=5'"
            )
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value.strip()
    return name.strip(), params
