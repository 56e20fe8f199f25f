"""Templates and template tasks: parsing, validation, equivalence, sampling."""

import json
import math

import numpy as np
import pytest

from probe.tasks.templates import Template, TemplateSample, TemplateTask, sample_injective

# -- Template ------------------------------------------------------------------


def test_template_structure():
    t = Template.parse("a = c ; b = d ; print a")
    assert t.tokens == ("a", "=", "c", ";", "b", "=", "d", ";", "print", "a")
    assert t.text == "a = c ; b = d ; print a"
    assert t.wildcards_in_order == ("a", "c", "b", "d")
    assert t.n_wildcards == 4
    assert t.pattern == (0, -1, 1, -1, 2, -1, 3, -1, -1, 0)
    assert t.regular == (1, 3, 5, 7, 8)


def test_template_custom_wildcards():
    t = Template.parse("X = 1 ; print X a", wildcards=["X"])
    assert t.pattern == (0, -1, -1, -1, -1, 0, -1)
    assert t.wildcards_in_order == ("X",)


@pytest.mark.parametrize(
    "left, right, equivalent",
    [
        ("a b a", "c d c", True),
        ("a b a", "b a b", True),
        ("a b a", "a b b", False),
        ("a = b", "c = d", True),
        ("a = b", "a ; b", False),
        ("a = a", "a = b", False),
        ("a b", "a b a", False),
        ("a b", "a b c", False),
        ("a print", "b print", True),
        ("a print", "print a", False),
        ("a 1", "a -1", False),
    ],
)
def test_equivalence(left, right, equivalent):
    a, b = Template.parse(left), Template.parse(right)
    assert a.equivalent(b) is equivalent
    assert b.equivalent(a) is equivalent


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_template_parse_rejects_empty(bad):
    with pytest.raises(ValueError, match="template"):
        Template.parse(bad)


def test_template_rejects_tokens_with_whitespace():
    with pytest.raises(ValueError, match="'a b'"):
        Template(("a b", "c"))


# -- TemplateTask: construction --------------------------------------------------


def test_task_attributes():
    task = TemplateTask.from_strings(
        ["a = c ; b = d ; print a", "a = c ; b = d ; print b", "a b", "a ?"],
        ["c", "d", "yes", "a"],
        name="mixed",
    )
    assert task.name == "mixed"
    assert task.label_kind == "symbolic"
    assert task.labels == ("c", "d", "yes", "a")
    assert task.regular_tokens == (";", "=", "?", "print", "yes")  # sorted, with the label
    assert task.max_wildcards == 4
    assert task.max_length == 10
    assert task.label_wildcard.tolist() == [1, 3, -1, 0]
    np.testing.assert_allclose(task.probs, [0.25] * 4)
    assert len(task) == 4


def test_integer_labels_are_regression():
    task = TemplateTask.from_strings(["a b a", "a b b"], [1, -1])
    assert task.label_kind == "regression"
    assert task.labels == (1.0, -1.0)
    assert all(isinstance(y, float) for y in task.labels)
    assert task.label_wildcard.tolist() == [-1, -1]


def test_numeric_token_labels_are_symbolic():
    task = TemplateTask.from_strings(["a b a", "a b b"], ["1", "-1"])
    assert task.label_kind == "symbolic"
    assert task.regular_tokens == ("-1", "1")


def test_round_trip_through_json():
    task = TemplateTask.from_strings(
        ["X = 1 ; print X", "X Y ; print Y"],
        ["1", "Y"],
        wildcards=["X", "Y"],
        probs=[0.3, 0.7],
        name="custom_ws",
    )
    again = TemplateTask.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task
    assert again.to_dict() == task.to_dict()
    assert again.wildcards == frozenset({"X", "Y"})
    assert again.probs.tolist() == [0.3, 0.7]
    assert again.label_wildcard.tolist() == [-1, 1]
    assert hash(again) == hash(task)


def test_round_trip_default_task():
    task = TemplateTask.from_strings(["a b a", "a b b"], [1.0, -1.0], probs=[0.1, 0.9])
    d = task.to_dict()
    assert d["wildcards"] is None
    assert TemplateTask.from_dict(d) == task


def test_from_dict_rejects_other_dicts():
    with pytest.raises(ValueError, match="unknown keys \\['template'\\]"):
        TemplateTask.from_dict({"template": ["a b"], "labels": [1.0]})
    with pytest.raises(ValueError, match="label_kind"):
        TemplateTask.from_dict({"templates": ["a b"], "labels": [1.0], "label_kind": "symbolic"})


def test_repr_is_readable():
    task = TemplateTask.from_strings(["a b a", "a b b"], [1.0, -1.0], name="aba")
    text = repr(task)
    assert "'aba'" in text and "regression" in text and "'a b a' -> 1.0" in text
    big = TemplateTask.from_strings([" ".join("a" * i) for i in range(1, 11)], [1.0] * 10)
    assert "(4 more)" in repr(big)


# -- TemplateTask: validation ----------------------------------------------------


@pytest.mark.parametrize(
    "templates, labels, kwargs, message",
    [
        ([], [], {}, "empty"),
        (["a b a", "a b b"], [1.0], {}, "2 templates but 1 labels"),
        (["a b a"], [1.0, -1.0], {}, "1 templates but 2 labels"),
        (
            ["a b a", "a b b"],
            [1.0, "a"],
            {},
            r"mix numbers and tokens \(label 0 = 1.0, label 1 = 'a'\)",
        ),
        (["a b a", "a b b"], [True, False], {}, "label 0 is the bool True"),
        (["a b a"], [None], {}, r"label 0 \(None, a NoneType\)"),
        (["a b a"], [math.nan], {}, "label 0 of template 'a b a' is nan"),
        (
            ["a b", "a b a"],
            ["a", "c"],
            {},
            r"label 1 \('c'\) of template 1 \('a b a'\) is a wildcard",
        ),
        (["a b"], ["x y"], {}, r"label 0 \('x y'\) of template 'a b' is not a single token"),
        (["a b"], [""], {}, "not a single token"),
        (
            ["a b a", "a b b"],
            [1.0, -1.0],
            {"probs": [1.0]},
            "probs has shape \\(1,\\) but the task has 2",
        ),
        (
            ["a b a", "a b b"],
            [1.0, -1.0],
            {"probs": [1.5, -0.5]},
            r"probs\[1\] = -0.5 \(template 'a b b'\)",
        ),
        (["a b a", "a b b"], [1.0, -1.0], {"probs": [0.5, 0.6]}, "probs sum to 1.1"),
        (["a b a", "a b b"], [1.0, -1.0], {"probs": "uniform"}, "probs must be a list"),
        (
            ["a b a", "c d c"],
            [1.0, -1.0],
            {},
            r"templates 0 \('a b a'\) and 1 \('c d c'\) are equivalent",
        ),
        (
            ["a b", "a = b", "c = d"],
            [1.0, -1.0, -1.0],
            {},
            r"templates 1 \('a = b'\) and 2 \('c = d'\)",
        ),
        (["a b", "c d"], ["a", "c"], {}, "equivalent"),
        (["a b", ""], [1.0, -1.0], {}, r"template 1 \(''\) is empty"),
        (["a b", "  "], [1.0, -1.0], {}, r"template 1 \('  '\) is empty"),
        ("a b a", [1.0], {}, "list of strings"),
        (["a b a"], "a", {}, "one label per template"),
        (["a b a"], [1.0], {"wildcards": "ab"}, "one string; pass a list"),
        (["a b a"], [1.0], {"wildcards": []}, "wildcards is empty"),
        (["a b a"], [1.0], {"wildcards": ["a b"]}, "wildcard 'a b' is not a token"),
        (["a b a"], [1.0], {"wildcards": [1]}, "wildcard 1 is not a token"),
        (["a b a"], [1.0], {"wildcards": 3}, "wildcards=3 is not a collection"),
    ],
)
def test_validation_errors(templates, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TemplateTask.from_strings(templates, labels, **kwargs)


def test_mixed_wildcard_sets_rejected():
    with pytest.raises(ValueError, match="different wildcard sets"):
        TemplateTask([Template.parse("a b"), Template.parse("X", ["X"])], [1.0, -1.0])


def test_task_is_immutable():
    task = TemplateTask.from_strings(["a b a", "a b b"], [1.0, -1.0])
    with pytest.raises(ValueError, match="read-only"):
        task.probs[0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        task.label_wildcard[0] = 1
    with pytest.raises(AttributeError, match="immutable.*'labels'"):
        task.labels = (1.0, 1.0)


def test_task_needs_template_objects():
    with pytest.raises(ValueError, match=r"template 1 \('a b b'\) is not a Template"):
        TemplateTask([Template.parse("a b a"), "a b b"], [1.0, -1.0])


# -- sampling --------------------------------------------------------------------


def _injective(symbols: np.ndarray, n_wild: np.ndarray) -> bool:
    for k in np.unique(n_wild):
        rows = symbols[n_wild == k, :k]
        s = np.sort(rows, axis=1)
        if (s[:, 1:] == s[:, :-1]).any():
            return False
    return True


def test_sample_shapes_and_ranges():
    task = TemplateTask.from_strings(["a b c a", "a b", "= a"], [1.0, -1.0, 0.0])
    s = task.sample(5000, 7, np.random.default_rng(0))
    assert isinstance(s, TemplateSample) and len(s) == 5000
    assert s.template.dtype == np.int64 and s.template.shape == (5000,)
    assert s.symbols.dtype == np.int64 and s.symbols.shape == (5000, 3)
    n_wild = np.array([3, 2, 1])[s.template]
    used = np.arange(3) < n_wild[:, None]
    assert (s.symbols[~used] == -1).all()
    assert ((s.symbols[used] >= 0) & (s.symbols[used] < 7)).all()
    assert _injective(s.symbols, n_wild)
    assert set(np.unique(s.template)) == {0, 1, 2}


def test_sample_is_injective_with_a_minimal_alphabet():
    task = TemplateTask.from_strings(["a b c d e", "a a"], [1.0, -1.0])
    s = task.sample(20000, 5, np.random.default_rng(3))
    rows = s.symbols[s.template == 0]
    assert (np.sort(rows, axis=1) == np.arange(5)).all()  # each row a permutation of 0..4


def test_sample_is_deterministic():
    task = TemplateTask.from_strings(["a b a", "a b b", "a a"], [1.0, -1.0, 0.0])
    a = task.sample(1000, 50, np.random.default_rng(7))
    b = task.sample(1000, 50, np.random.default_rng(7))
    c = task.sample(1000, 50, np.random.default_rng(8))
    np.testing.assert_array_equal(a.template, b.template)
    np.testing.assert_array_equal(a.symbols, b.symbols)
    assert not np.array_equal(a.symbols, c.symbols)
    assert not np.array_equal(a.template, c.template)


def test_sample_follows_probs():
    probs = np.array([0.1, 0.2, 0.0, 0.7])
    task = TemplateTask.from_strings(
        ["a", "a b", "a b c", "a = b"], [1.0, 2.0, 3.0, 4.0], probs=probs
    )
    n = 100_000
    s = task.sample(n, 10, np.random.default_rng(0))
    counts = np.bincount(s.template, minlength=4)
    assert counts[2] == 0  # a zero-probability template is never drawn
    expected = n * probs[[0, 1, 3]]
    chi2 = float((((counts[[0, 1, 3]] - expected) ** 2) / expected).sum())
    assert chi2 < 20.0  # 2 degrees of freedom: p < 5e-5 under the null


def test_sample_is_uniform_over_injective_maps():
    k, n_symbols, n = 3, 4, 48_000
    rows = sample_injective(n, k, n_symbols, np.random.default_rng(1))
    codes = (rows * n_symbols ** np.arange(k)).sum(axis=1)
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == 24  # 4 * 3 * 2 injective maps, all reached
    expected = n / 24
    chi2 = float((((counts - expected) ** 2) / expected).sum())
    assert chi2 < 60.0  # 23 degrees of freedom: p < 5e-5 under the null


def test_sample_large_alphabet_is_fast_enough_to_be_vectorized():
    task = TemplateTask.from_strings(["a b a", "a b b"], [1.0, -1.0])
    s = task.sample(200_000, 1_000_000, np.random.default_rng(0))
    assert s.symbols.max() < 1_000_000 and _injective(s.symbols, np.full(200_000, 2))


def test_sample_alphabet_too_small():
    task = TemplateTask.from_strings(["a b c", "a b"], [1.0, -1.0])
    with pytest.raises(ValueError, match=r"n_symbols=2 is too small: template 0 \('a b c'\) has 3"):
        task.sample(10, 2, np.random.default_rng(0))
    # only templates that can be drawn need symbols
    rare = TemplateTask.from_strings(["a b c", "a b"], [1.0, -1.0], probs=[0.0, 1.0])
    s = rare.sample(100, 2, np.random.default_rng(0))
    assert (s.template == 1).all() and (s.symbols[:, 2] == -1).all()


@pytest.mark.parametrize(
    "n, n_symbols, rng, message",
    [
        (-1, 5, np.random.default_rng(0), "n must be >= 0"),
        (2.5, 5, np.random.default_rng(0), "n must be an integer"),
        (10, "5", np.random.default_rng(0), "n_symbols must be an integer"),
        (10, 5, 0, "rng must be a numpy Generator"),
    ],
)
def test_sample_argument_errors(n, n_symbols, rng, message):
    task = TemplateTask.from_strings(["a b a", "a b b"], [1.0, -1.0])
    with pytest.raises(ValueError, match=message):
        task.sample(n, n_symbols, rng)


def test_sample_zero_rows():
    task = TemplateTask.from_strings(["a b a", "a b b"], [1.0, -1.0])
    s = task.sample(0, 5, np.random.default_rng(0))
    assert s.template.shape == (0,) and s.symbols.shape == (0, 2)
