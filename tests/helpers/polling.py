"""Waiting for a condition without fixed sleeps: polling with a deadline."""

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(
    condition: Callable[[], bool],
    timeout: float = 5.0,
    what: str = "reached",
    *,
    interval: float = 0.005,
) -> None:
    """Returns once ``condition()`` is true, asking every ``interval`` seconds (more for a
    costly condition); AssertionError when it is not within ``timeout`` seconds (``what``
    says what was awaited)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(interval)
