"""probe.train.malloc: glibc's thresholds set once per process, or left alone."""

from __future__ import annotations

import platform
import sys

import pytest

from probe.train import malloc


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(malloc, "_done", [])


def test_glibc_takes_the_thresholds_once(fresh, monkeypatch):
    monkeypatch.delenv("PROBE_MALLOC", raising=False)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert malloc.tune_malloc() is glibc
    assert malloc._done == [glibc]
    assert malloc.tune_malloc() is glibc  # the second call changes nothing


def test_probe_malloc_default_leaves_glibc_alone(fresh, monkeypatch):
    monkeypatch.setenv("PROBE_MALLOC", "default")
    assert malloc.tune_malloc() is False
