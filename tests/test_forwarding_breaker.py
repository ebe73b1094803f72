"""The circuit breaker's counting (``oxidip.forwarding.breaker``): transient job ends in a row
open a destination's circuit at the threshold; an answer (ok or permanent) resets the count,
a cancellation says nothing; probes follow the retry policy's backoff; a passing probe
closes it. The end-to-end side (held in the registry, C-ECHO probes, release) is in
``test_forwarding.py``."""

import random

from oxidip._boundary import JobEndKind
from oxidip.forwarding import CircuitBreaker
from oxidip.registry import RetryPolicy

POLICY = RetryPolicy(base=10.0, maximum=40.0, attempts=5)


def breaker(threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(threshold, POLICY, random.Random(7))


def test_transient_failures_in_a_row_open_the_circuit_at_the_threshold() -> None:
    b = breaker()
    assert b.job_ended("a", JobEndKind.TRANSIENT, "refused", 0.0) is None
    assert b.job_ended("a", JobEndKind.TRANSIENT, "refused", 1.0) is None
    assert b.job_ended("b", JobEndKind.TRANSIENT, "refused", 1.0) is None  # its own count
    reason = b.job_ended("a", JobEndKind.TRANSIENT, "connection refused by x", 2.0)
    assert reason == "3 attempts in a row failed; the last: connection refused by x"
    assert b.is_open("a") and not b.is_open("b")
    assert b.held == {"a": reason}
    # Already open: further failures do not open it again.
    assert b.job_ended("a", JobEndKind.TRANSIENT, "refused", 3.0) is None


def test_an_answer_resets_the_count_a_cancellation_does_not() -> None:
    b = breaker(threshold=2)
    for answered in (JobEndKind.OK, JobEndKind.PERMANENT):
        assert b.job_ended("a", JobEndKind.TRANSIENT, "refused", 0.0) is None
        assert b.job_ended("a", answered, "", 0.0) is None
        assert b.job_ended("a", JobEndKind.TRANSIENT, "refused", 0.0) is None
        assert b.job_ended("a", answered, "", 0.0) is None
    assert not b.is_open("a")
    assert b.job_ended("a", JobEndKind.TRANSIENT, "refused", 0.0) is None
    assert b.job_ended("a", JobEndKind.CANCELLED, "oxidip stopped", 0.0) is None
    assert b.job_ended("a", JobEndKind.TRANSIENT, "refused", 0.0) is not None


def test_probes_back_off_then_a_passing_one_closes_the_circuit() -> None:
    b = breaker(threshold=1)
    b.job_ended("a", JobEndKind.TRANSIENT, "refused", 100.0)
    first = b.next_probe_at()
    assert first is not None and 100.0 + 5.0 <= first <= 100.0 + 10.0  # delay(1), jittered
    assert b.due_probes(first - 0.001) == []
    assert b.due_probes(first) == ["a"]
    assert b.due_probes(first) == [] and b.next_probe_at() is None  # one probe at a time
    second = b.probe_failed("a", first)
    assert 10.0 <= second <= 20.0  # delay(2)
    assert b.due_probes(first + second) == ["a"]
    b.closed("a")
    assert not b.is_open("a") and b.held == {} and b.next_probe_at() is None
    # Closed: the count starts again from zero.
    assert b.job_ended("a", JobEndKind.TRANSIENT, "refused", 200.0) is not None


def test_a_hold_found_in_the_registry_is_probed_too() -> None:
    b = breaker()
    b.opened("a", "held by another process", 50.0)
    assert b.held == {"a": "held by another process"}
    probe = b.next_probe_at()
    assert probe is not None and probe > 50.0
    assert b.due_probes(probe) == ["a"]
