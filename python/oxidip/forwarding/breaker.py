"""The circuit breaker of forwarding: a destination that keeps failing is held, and probed.

Counted per destination, on the forwarding thread: the jobs that ended ``transient`` in a
row (refused, timed out, aborted, A7xx...). At ``threshold`` the circuit opens: the caller
holds the destination in the registry (its jobs show ``held`` and are not claimed, so one
dead node stops eating attempts: the retries of its jobs would all fail the same way) and
probes it with a C-ECHO at the retry policy's backoff intervals (first after ``delay(1)``,
then ``delay(2)``...). A probe that passes closes the circuit: the destination is released
and its jobs resume. A job that ends ``ok`` or ``permanent`` (the destination answered, even
if to refuse) resets the count; a cancelled job says nothing about the destination.

A destination may also be found held in the registry (held by another process, or before a
restart): ``opened`` adopts it, and this process probes it too (the first probe that passes,
in any process, releases it).
"""

import random

import msgspec

from oxidip._boundary import JobEndKind
from oxidip.registry import RetryPolicy

__all__ = ["CircuitBreaker"]


class _Open(msgspec.Struct):
    reason: str
    #: Probes made so far (the next one waits ``delay(probes + 1)``).
    probes: int
    #: When the next probe is due (``None`` while one runs).
    next_probe_at: float | None


class CircuitBreaker:
    """Per destination circuit state (see the module docstring). Not thread-safe: the
    forwarding thread owns it."""

    def __init__(self, threshold: int, retry: RetryPolicy, rng: random.Random) -> None:
        if threshold < 1:
            raise ValueError(f"the breaker threshold must be at least 1, not {threshold}")
        self.threshold = threshold
        self.retry = retry
        self.rng = rng
        self._failures: dict[str, int] = {}
        self._open: dict[str, _Open] = {}

    def job_ended(self, destination: str, end: JobEndKind, error: str, now: float) -> str | None:
        """Counts a job's end; returns the reason to hold ``destination`` when this end opens
        its circuit, else None."""
        if end == JobEndKind.CANCELLED:
            return None
        if end != JobEndKind.TRANSIENT:
            self._failures.pop(destination, None)
            return None
        failures = self._failures.get(destination, 0) + 1
        self._failures[destination] = failures
        if failures < self.threshold or destination in self._open:
            return None
        reason = f"{failures} attempts in a row failed; the last: {error}"
        self.opened(destination, reason, now)
        return reason

    def opened(self, destination: str, reason: str, now: float) -> None:
        """The destination is held (by this breaker, or found held in the registry): its
        first probe is due after the policy's first delay."""
        if destination not in self._open:
            delay = self.retry.delay(1, self.rng)
            self._open[destination] = _Open(reason, 0, now + delay)

    def is_open(self, destination: str) -> bool:
        return destination in self._open

    @property
    def held(self) -> dict[str, str]:
        """Destinations whose circuit is open, with the reason."""
        return {name: state.reason for name, state in self._open.items()}

    def due_probes(self, now: float) -> list[str]:
        """The destinations to probe now; each is marked as being probed until
        ``probe_failed`` or ``closed``."""
        due = []
        for name, state in self._open.items():
            if state.next_probe_at is not None and state.next_probe_at <= now:
                state.next_probe_at = None
                state.probes += 1
                due.append(name)
        return due

    def next_probe_at(self) -> float | None:
        """When the next probe is due, if any."""
        times = [s.next_probe_at for s in self._open.values() if s.next_probe_at is not None]
        return min(times, default=None)

    def probe_failed(self, destination: str, now: float) -> float:
        """Schedules the next probe; returns the delay (seconds)."""
        state = self._open.get(destination)
        if state is None:
            return 0.0
        delay = self.retry.delay(state.probes + 1, self.rng)
        state.next_probe_at = now + delay
        return delay

    def closed(self, destination: str) -> None:
        """The destination answered (or was released elsewhere): its jobs resume."""
        self._open.pop(destination, None)
        self._failures.pop(destination, None)
