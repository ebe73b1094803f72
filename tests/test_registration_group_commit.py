"""The event thread's group commit (``Registrar.wait_caught_up``, called by
``Pipeline.wait_for_room`` before it takes more events): it waits for the registrar's queue to
be done, so that the events that arrived meanwhile are registered as one batch; never while
the database is unreachable, when the event thread must keep taking events (the journal holds
them)."""

import threading
import time
from collections.abc import Callable

from oxidip._boundary import InstanceStored
from oxidip.registration import Registrar
from tests.test_registry import batch, uid


class _Acknowledged:
    def acknowledge(self, seqs: list[int], *, registered: bool) -> None:
        pass


def _registrar(register: Callable[[list[InstanceStored]], None]) -> Registrar[None]:
    return Registrar(
        _Acknowledged(),
        register,
        lambda events, result: None,
        lambda events, error: None,
        backlog=100,
        answer_within=None,
    )


def _in_thread(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_the_event_thread_waits_for_the_registration_under_way() -> None:
    release = threading.Event()
    registered: list[int] = []

    def register(events: list[InstanceStored]) -> None:
        release.wait(10)
        registered.append(len(events))

    registrar = _registrar(register)
    try:
        registrar.register(batch(uid(), 3))
        waiter = _in_thread(lambda: registrar.wait_caught_up(10))
        waiter.join(0.2)
        assert waiter.is_alive(), "it returned while the registration was under way"
        release.set()
        waiter.join(10)
        assert not waiter.is_alive()
        assert registered == [3]
    finally:
        registrar.close(5)


def test_during_an_outage_the_event_thread_does_not_wait() -> None:
    def register(events: list[InstanceStored]) -> None:
        raise ConnectionRefusedError("the database is away")

    registrar = _registrar(register)
    try:
        registrar.register(batch(uid(), 3))
        deadline = time.monotonic() + 10
        while not registrar.outage:  # the first attempt failed: the outage is known
            assert time.monotonic() < deadline, "no outage seen"
            time.sleep(0.01)
        # The registration is retried with backoff for as long as the outage lasts: waiting
        # for it would hold the event thread for the whole 60 s.
        waiter = _in_thread(lambda: registrar.wait_caught_up(60))
        waiter.join(10)
        assert not waiter.is_alive(), "the event thread waited on an unreachable database"
        assert registrar.backlog == 3  # still queued, for when the database is back
    finally:
        registrar.close(0.5)
