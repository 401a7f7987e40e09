"""Waiting on a condition with a deadline: how tests synchronise with threads, processes and servers
(never a fixed sleep that hopes the other side is done)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.02) -> T:
    """Call `condition` until it returns something truthy, and return that; AssertionError naming `what`
    (and the last value) once `timeout_s` has passed. Exceptions from `condition` propagate at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not {what} after {timeout_s:g} s (last: {value!r})")
        time.sleep(interval_s)


def stays(condition: Callable[[], object], duration_s: float, what: str, interval_s: float = 0.02) -> None:
    """Assert that `condition` holds at every check for `duration_s` (a negative check: something must
    NOT happen for a while, e.g. a live worker's job must not be taken over)."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        assert condition(), f"no longer {what}"
        time.sleep(interval_s)
