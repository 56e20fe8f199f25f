"""Input checks shared by every stage: whole numbers in a range, and the near miss
of a known name (``did_you_mean``) that error messages suggest."""

from __future__ import annotations

import difflib
import operator
from collections.abc import Iterable
from typing import Any


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python ``int`` (a bool is not, though Python says it is): what
    a setting stored as JSON must be."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_whole(value: Any) -> bool:
    """Whether ``value`` is an integer of any kind (``operator.index`` takes it: numpy's
    too), a bool excepted."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_count(value: Any, what: str, low: int = 0, high: int | None = None) -> int:
    """``value`` as an integer >= ``low`` (and <= ``high``), or a ValueError naming
    ``what``."""
    if not is_whole(value):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    v = operator.index(value)
    if v < low:
        raise ValueError(f"{what} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{what} must be <= {high}, got {v}; pass a smaller value")
    return v


def did_you_mean(name: Any, known: Iterable[str]) -> str:
    """`` Did you mean 'gpt2'?`` when ``name`` is a near miss of a known name, else ``""``."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.75)
    return f" Did you mean {close[0]!r}?" if close and close[0] != name else ""
