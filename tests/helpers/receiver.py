"""A running in-process ``oxidip.Receiver`` with a thread that keeps taking its events (the
event queue is bounded and pushes back on the network, so a test that stopped reading events
would stall its own senders), and waits on those events with timeouts."""

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from oxidip import AssociationClosed, Config, InstanceFailed, InstanceStored, Receiver

HOST = "127.0.0.1"

T = TypeVar("T")

#: What every test receiver gets unless a test overrides it.
BASE_ENV = {
    "OXIDIP_LISTENER_HOST": HOST,
    "OXIDIP_LISTENER_PORT": "0",
    "OXIDIP_SHUTDOWN_TIMEOUT": "5",
    "OXIDIP_ARTIM_TIMEOUT": "10",
    "OXIDIP_IDLE_TIMEOUT": "60",
    "OXIDIP_LOG_LEVEL": "WARNING",
}


def build_env(root: Path, overrides: dict[str, object]) -> dict[str, str]:
    env = dict(BASE_ENV)
    env["OXIDIP_FILES_ROOT"] = str(root)
    for key, value in overrides.items():
        name = key if key.startswith("OXIDIP_") else f"OXIDIP_{key}"
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class RunningReceiver:
    """A started receiver and the events it produced so far (``events``, in order)."""

    def __init__(self, config: Config, root: Path) -> None:
        self.root = root
        self.config = config
        self.rx = Receiver(config)
        self.rx.start()
        self.host = HOST
        #: The plain listener's port; 0 without one (OXIDIP_PLAIN_LISTENER=false).
        self.port = self.rx.port if config.plain_listener else 0
        self.events: list[object] = []
        self._cond = threading.Condition()
        self._quit = threading.Event()
        self._error: BaseException | None = None
        self._ended = False
        self._stopped = False
        self._thread = threading.Thread(target=self._drain, name="oxidip-test-drain", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while not self._quit.is_set():
                batch = self.rx.next_batch(1000, 0.1)
                if batch is None:
                    self._ended = True
                    break
                if batch:
                    with self._cond:
                        self.events.extend(batch)
                        self._cond.notify_all()
        except Exception as error:  # noqa: BLE001 - reported by wait_for
            self._error = error
        finally:
            with self._cond:
                self._cond.notify_all()

    # --- waiting -----------------------------------------------------------------------

    def wait_for(
        self,
        predicate: Callable[[list[object]], bool],
        *,
        timeout: float = 30.0,
        what: str = "condition",
    ) -> list[object]:
        """Waits until ``predicate(events)`` holds; returns a copy of the events then."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = list(self.events)
                if predicate(snapshot):
                    return snapshot
                if self._error is not None:
                    raise AssertionError(f"taking events failed: {self._error!r}")
                if self._ended:
                    raise AssertionError(f"receiver stopped before {what}; events: {snapshot}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {what}; "
                        f"{len(snapshot)} events: {summarise(snapshot)}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_closed(
        self, count: int = 1, *, since: int = 0, timeout: float = 30.0
    ) -> list[AssociationClosed]:
        """Waits for ``count`` AssociationClosed events after index ``since``."""
        events = self.wait_for(
            lambda evs: len(of_type(evs[since:], AssociationClosed)) >= count,
            timeout=timeout,
            what=f"{count} AssociationClosed event(s)",
        )
        return of_type(events[since:], AssociationClosed)

    def wait_stored(
        self, count: int, *, since: int = 0, timeout: float = 60.0
    ) -> list[InstanceStored]:
        events = self.wait_for(
            lambda evs: len(of_type(evs[since:], InstanceStored)) >= count,
            timeout=timeout,
            what=f"{count} InstanceStored event(s)",
        )
        return of_type(events[since:], InstanceStored)

    def mark(self) -> int:
        """Index of the next event, for ``since=``."""
        with self._cond:
            return len(self.events)

    # --- snapshots ---------------------------------------------------------------------

    def snapshot(self) -> list[object]:
        with self._cond:
            return list(self.events)

    def stored(self, since: int = 0) -> list[InstanceStored]:
        return of_type(self.snapshot()[since:], InstanceStored)

    def failed(self, since: int = 0) -> list[InstanceFailed]:
        return of_type(self.snapshot()[since:], InstanceFailed)

    def closed(self, since: int = 0) -> list[AssociationClosed]:
        return of_type(self.snapshot()[since:], AssociationClosed)

    # --- shutdown ------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Stops taking events in the background (so only one thread ever calls into the
        receiver), stops the receiver, then takes what is left until it reports the end."""
        if self._stopped:
            return
        self._stopped = True
        self._quit.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "event thread did not finish"
        self.rx.stop(timeout)
        deadline = time.monotonic() + timeout
        while not self._ended and time.monotonic() < deadline:
            batch = self.rx.next_batch(1000, 0.1)
            if batch is None:
                self._ended = True
                break
            with self._cond:
                self.events.extend(batch)
        assert self._ended, "receiver did not report the end of its events after stop()"


def of_type(events: list[object], cls: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, cls)]


def summarise(events: list[object], limit: int = 12) -> str:
    lines = []
    for event in events[-limit:]:
        if isinstance(event, InstanceStored):
            lines.append(f"stored {event.path}")
        elif isinstance(event, InstanceFailed):
            lines.append(f"failed {event.status:04X} {event.comment!r} {event.sop_instance_uid}")
        elif isinstance(event, AssociationClosed):
            lines.append(
                f"closed #{event.association_id} {event.calling_aet} {event.outcome}"
                f" stored={event.instances_stored} failed={event.instances_failed}"
                f" detail={event.detail!r}"
            )
        else:
            lines.append(repr(event))
    more = f"(last {limit} of {len(events)}) " if len(events) > limit else ""
    return more + "; ".join(lines)
