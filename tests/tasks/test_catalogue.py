"""The task catalogue: registry, every task's labels checked on sampled rows."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from probe.tasks import catalogue as tasks
from probe.tasks.catalogue import (
    format_task_table,
    get_task,
    list_tasks,
    random_templates,
    register_task,
    task_entry,
)
from probe.tasks.templates import TemplateTask

CATALOGUE = [
    "same_different",
    "aba_vs_abb",
    "aabb_vs_abab",
    "majority_k",
    "var_assign",
    "var_copy",
    "copy",
    "rmts",
    "dist3",
    "random_templates",
]


def substitute(task: TemplateTask, n: int, seed: int = 0):
    """Sampled rows as concrete token lists (symbol s -> 'S<s>') with the task's label
    for each row (a symbolic wildcard label becomes the symbol it was given)."""
    s = task.sample(n, 40, np.random.default_rng(seed))
    rows = []
    for t, syms in zip(s.template, s.symbols, strict=True):
        tpl = task.templates[t]
        tokens = [
            tok if j < 0 else f"S{syms[j]}" for tok, j in zip(tpl.tokens, tpl.pattern, strict=True)
        ]
        label = task.labels[t]
        if task.label_wildcard[t] >= 0:
            label = f"S{syms[task.label_wildcard[t]]}"
        rows.append((tokens, label))
    return rows


# -- independent labelers: read the concrete row, never the template -------------


def label_same_different(x):
    return 1.0 if x[0] == x[1] else -1.0


def label_aba_vs_abb(x):
    assert x[0] != x[1] and (x[2] == x[0]) != (x[2] == x[1])
    return 1.0 if x[2] == x[0] else -1.0


def label_aabb_vs_abab(x):
    assert sorted(Counter(x).values()) == [2, 2]
    return 1.0 if x[0] == x[1] else -1.0


def label_majority(x):
    assert len(set(x)) <= 2
    return 1.0 if 2 * x.count(x[0]) > len(x) else -1.0


def run_program(x):
    """Execute `v = w ; v = w ; print v`; return the printed value (a token)."""
    assert x[1] == "=" and x[3] == ";" and x[5] == "=" and x[7] == ";" and x[8] == "print"
    env = {x[0]: x[2], x[4]: x[6]}
    return env[x[9]]


def label_var_assign(x):
    return float(run_program(x))


def label_var_copy(x):
    return run_program(x)


def label_copy(x):
    return x[0]


def label_rmts(x):
    assert x[2] == ":" and x[5] == "|"
    pairs = [set(x[0:2]), set(x[3:5]), set(x[6:8])]
    assert all(not p & q for p, q in itertools.combinations(pairs, 2))  # fresh objects
    source, first, second = x[0] == x[1], x[3] == x[4], x[6] == x[7]
    assert first != second  # one target is "same", the other "different"
    return 1.0 if first == source else -1.0


def label_dist3(x):
    row1, row2, row3 = x[0:3], x[4:7], x[8:10]
    assert x[3] == x[7] == "|" and len(set(row1)) == 3 and sorted(row2) == sorted(row1)
    assert row2 != row1 and row3 != row2[:2] and row3 != row1[:2]
    (missing,) = set(row1) - set(row3)
    return missing


LABELERS = {
    "same_different": label_same_different,
    "aba_vs_abb": label_aba_vs_abb,
    "aabb_vs_abab": label_aabb_vs_abab,
    "majority_k": label_majority,
    "var_assign": label_var_assign,
    "var_copy": label_var_copy,
    "copy": label_copy,
    "rmts": label_rmts,
    "dist3": label_dist3,
}


def no_equivalent_pairs(task: TemplateTask) -> bool:
    return not any(a.equivalent(b) for a, b in itertools.combinations(task.templates, 2))


# -- catalogue ------------------------------------------------------------------


def test_catalogue_is_registered():
    assert list_tasks()[: len(CATALOGUE)] == CATALOGUE


@pytest.mark.parametrize("name", CATALOGUE)
def test_catalogue_task_builds(name):
    task = get_task(name)
    assert isinstance(task, TemplateTask)
    assert task.name == name
    assert no_equivalent_pairs(task)
    entry = task_entry(name)
    assert entry.description and entry.description in format_task_table()  # documented
    # default wildcards are single letters: no regular token may look like one
    assert not any(len(t) == 1 and t.islower() for t in task.regular_tokens)


@pytest.mark.parametrize("name", sorted(LABELERS))
def test_catalogue_labels_on_sampled_rows(name):
    task = get_task(name)
    for tokens, label in substitute(task, 400):
        assert LABELERS[name](tokens) == label, (tokens, label)
    # the same seed draws every template, so every label above was exercised
    drawn = task.sample(400, 40, np.random.default_rng(0)).template
    assert set(drawn.tolist()) == set(range(len(task)))


def test_catalogue_label_kinds():
    kinds = {name: get_task(name).label_kind for name in CATALOGUE}
    assert {n for n, k in kinds.items() if k == "symbolic"} == {"var_copy", "copy", "dist3"}


@pytest.mark.parametrize("k", range(2, 9))
def test_majority_k(k):
    task = get_task("majority_k", k=k)
    assert len(task) == 2 ** (k - 1) and task.max_length == k
    assert no_equivalent_pairs(task)
    for tokens, label in substitute(task, 300, seed=k):
        assert label_majority(tokens) == label
    # a template with i b's among its last k-1 positions is +1 iff 2 (k - i) > k
    plus = sum(y > 0 for y in task.labels)
    assert plus == sum(math.comb(k - 1, i) for i in range(k) if 2 * (k - i) > k)


def test_majority_2_is_same_different():
    task = get_task("majority_k", k=2)
    assert [(t.text, y) for t, y in zip(task.templates, task.labels, strict=True)] == [
        ("a a", 1.0),
        ("a b", -1.0),
    ]


@pytest.mark.parametrize("k", [1, 9, 2.5, True, "3"])
def test_majority_k_rejects_bad_k(k):
    with pytest.raises(ValueError, match=f"k={k!r} must be an integer in 2..8"):
        get_task("majority_k", k=k)


def test_dist3_covers_all_row_orders():
    task = get_task("dist3")
    assert len(task) == 20
    assert len({t.tokens[4:7] for t in task.templates}) == 5  # every row 2 but a b c
    # row 3 ends in a (bca, cba), b (acb, cab) or c (bac), each with 4 rows 2
    assert Counter(task.labels) == {"a": 8, "b": 8, "c": 4}


# -- registry -------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so registering in a test leaves the catalogue alone."""
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="unknown task 'abba'; known tasks: same_different, "):
        get_task("abba")
    with pytest.raises(ValueError, match="unknown task 'abba'"):
        task_entry("abba")
    assert task_entry("majority_k").defaults == {"k": 3}
    with pytest.raises(ValueError, match=r"`probe tasks`.*Did you mean 'aba_vs_abb'\?"):
        get_task("aba_vs_ab")


def test_unknown_param_is_named():
    with pytest.raises(ValueError, match=r"no parameter\(s\) kk, z; its parameters .*k=3"):
        get_task("majority_k", kk=3, z=1)
    with pytest.raises(ValueError, match="no parameter.*parameters .*: none"):
        get_task("aba_vs_abb", k=3)


def test_non_default_params_are_in_the_name():
    assert get_task("majority_k").name == "majority_k"
    assert get_task("majority_k", k=3).name == "majority_k"
    assert get_task("majority_k", k=5).name == "majority_k-k5"
    assert random_templates(seed=4).name == get_task("random_templates", seed=4).name


def test_register_task(scratch_registry):
    @register_task("abc_vs_abd")
    def factory(flip: bool = False) -> TemplateTask:
        """ABC or ABD."""
        return TemplateTask.from_strings(["a b c", "a b a"], [-1.0, 1.0] if flip else [1.0, -1.0])

    assert "abc_vs_abd" in list_tasks()
    assert get_task("abc_vs_abd", flip=True).labels == (-1.0, 1.0)
    assert get_task("abc_vs_abd", flip=True).name == "abc_vs_abd-flipTrue"
    assert "ABC or ABD." in format_task_table()
    register_task("plain", lambda: TemplateTask.from_strings(["a"], [1.0]))
    assert get_task("plain").name == "plain"


def test_register_task_errors(scratch_registry):
    with pytest.raises(ValueError, match="task 'aba_vs_abb' is already registered"):
        register_task("aba_vs_abb", lambda: None)
    with pytest.raises(ValueError, match="parameter 'k' needs a default"):
        register_task("needs_k", lambda k: None)
    with pytest.raises(ValueError, match="task name 'a b' is not an identifier"):
        register_task("a b")
    assert "needs_k" not in list_tasks()


# -- random templates ---------------------------------------------------------------


@pytest.mark.parametrize(
    "n_templates, n_wildcards, n_regular, length",
    [(4, 3, 2, 5), (20, 2, 1, 4), (5, 3, 0, 3), (1, 1, 0, 1), (50, 4, 3, 8)],
)
def test_random_templates(n_templates, n_wildcards, n_regular, length):
    task = random_templates(n_templates, n_wildcards, n_regular, length, seed=0)
    assert len(task) == n_templates and no_equivalent_pairs(task)
    assert all(len(t) == length and 1 <= t.n_wildcards <= n_wildcards for t in task.templates)
    assert len(task.regular_tokens) <= n_regular
    assert sorted(task.labels) == sorted(
        [1.0] * ((n_templates + 1) // 2) + [-1.0] * (n_templates // 2)
    )


def test_random_templates_dense_request_takes_every_form():
    # length 3 over 2 wildcards and no regular tokens: aaa aab aba abb
    task = random_templates(4, 2, 0, 3, seed=1)
    assert sorted(t.text for t in task.templates) == ["a a a", "a a b", "a b a", "a b b"]


def test_random_templates_is_deterministic():
    a = random_templates(8, 3, 2, 6, seed=11)
    assert a == random_templates(8, 3, 2, 6, seed=11)
    assert a.to_dict()["templates"] != random_templates(8, 3, 2, 6, seed=12).to_dict()["templates"]


def test_random_templates_impossible():
    with pytest.raises(
        ValueError, match="only 4 non-equivalent templates of length 3 .* n_templates=5"
    ):
        random_templates(5, 2, 0, 3, seed=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_templates": 0}, "n_templates=0"),
        ({"length": 0}, "length=0"),
        ({"n_regular": -1}, "n_regular=-1"),
        ({"n_wildcards": 27}, "n_wildcards=27"),
    ],
)
def test_random_templates_bad_params(kwargs, name):
    with pytest.raises(ValueError, match=name):
        random_templates(**kwargs)


# -- table ----------------------------------------------------------------------


def test_task_table():
    table = format_task_table()
    lines = table.splitlines()
    assert lines[0].startswith("| task | templates | labels | kind | description |")
    assert len(lines) == 2 + len(list_tasks())
    assert all(line.count(" | ") == 4 for line in lines[2:])  # '|' inside cells is escaped
    by_name = {line.split(" | ")[0].split("`")[1]: line for line in lines[2:]}
    assert "`a b a`, `a b b` | +1, -1 | regression" in by_name["aba_vs_abb"]
    assert "(20 in all)" in by_name["dist3"] and "symbolic" in by_name["dist3"]
    assert "(k=3)" in by_name["majority_k"]
