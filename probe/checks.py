"""Input checks shared by every stage: whole numbers in a range (as values and as
argparse types), and the near miss of a known name (``did_you_mean``) that error messages suggest."""

from __future__ import annotations

import argparse
import difflib
import operator
from collections.abc import Callable, Iterable
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


def count_arg(low: int = 0) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number >= ``low``: ``--show -1`` fails with
    ``--show: -1 is negative; give 0 or more``."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            what = "negative; give 0 or more" if low == 0 else f"below {low}"
            raise argparse.ArgumentTypeError(f"{value} is {what}")
        return value

    return count


def did_you_mean(name: Any, known: Iterable[str]) -> str:
    """`` Did you mean 'gpt2'?`` when ``name`` is a near miss of a known name, else ``""``."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.75)
    return f" Did you mean {close[0]!r}?" if close and close[0] != name else ""
