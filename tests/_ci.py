"""Test helper: whether the tests run under CI (CI=true), where a missing tool fails a test instead of
skipping it (CI must run every test it can)."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(msg: str) -> None:
    """A tool a test needs is missing: fail under CI, skip elsewhere."""
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)
