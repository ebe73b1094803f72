"""What ``/healthz`` answers: whether this receiver is ready to take instances.

Ready means all of:

- ``listening``: the DICOM listener accepts connections (not before start, not once a
  shutdown began: a load balancer stops sending new associations then);
- ``storage``: a file can be created and written where every instance starts
  (``Receiver.check_storage``);
- ``database``: the registry's database answers a query (not checked when a ``register``
  hook replaces the registry);
- ``journal_backlog``: at most ``OXIDIP_HEALTH_MAX_JOURNAL_BACKLOG`` journaled instances
  wait for their registration.

The storage and database checks can hang (a stale NFS mount, a database host that drops
packets): each runs on a worker thread of its own and the answer waits for it at most
``timeout`` seconds, so neither a health check nor anything else ever waits longer. One
check of each kind runs at a time: requests arriving while one runs share its result, and a
hung check holds one thread, not one per request. Nothing here touches the registry's own
connections, so a check never delays registration.
"""

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from oxidip.receiver import Receiver

__all__ = ["BoundedCheck", "Health", "HealthCheck", "database_check"]

#: Seconds a storage or database check may take before it counts as failed.
CHECK_TIMEOUT = 2.0


class Health(msgspec.Struct, frozen=True):
    """The body of a ``/healthz`` answer (JSON)."""

    #: "ready" or "not ready".
    status: str
    #: One line per failed check, "check: why"; empty when ready.
    reasons: list[str]
    listening: bool
    #: "ok" or why not.
    storage: str
    #: "ok", "not used" or why not.
    database: str
    journal_backlog: int

    @property
    def ready(self) -> bool:
        return not self.reasons


class _Run:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None


class BoundedCheck:
    """Runs ``check`` (which raises when the check fails) on a daemon thread, one run at a
    time; ``__call__`` waits for the run at most ``timeout`` seconds and returns None when it
    passed, or why it did not."""

    def __init__(self, name: str, check: Callable[[], None], timeout: float) -> None:
        self.name = name
        self.check = check
        self.timeout = timeout
        self._lock = threading.Lock()
        self._running: _Run | None = None

    def __call__(self) -> str | None:
        with self._lock:
            run = self._running
            if run is None:
                run = self._running = _Run()
                threading.Thread(
                    target=self._work, args=(run,), name=f"oxidip-check-{self.name}", daemon=True
                ).start()
        if not run.done.wait(self.timeout):
            return f"no answer within {self.timeout:g} s"
        return run.error

    def _work(self, run: _Run) -> None:
        try:
            self.check()
        except Exception as error:  # noqa: BLE001 - any failure is the check's answer
            run.error = _describe(error)
        finally:
            with self._lock:
                self._running = None
            run.done.set()


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def database_check(connection: str | None, sqlite_path: Path, timeout: float) -> Callable[[], None]:
    """A check that the registry's database answers: a new connection of its own (never
    one of the registry's pool) and ``SELECT 1``. ``connection``: the PostgreSQL URL, or None
    for the SQLite file at ``sqlite_path`` (opened read-only)."""
    if connection is not None:
        url = connection
        # libpq counts whole seconds, and takes values under 2 as 2.
        connect_timeout = max(2, round(timeout))
        # Here, for PostgreSQL only: importing psycopg takes ~80 ms of every start.
        import psycopg

        def postgres() -> None:
            with psycopg.connect(url, connect_timeout=connect_timeout) as conn:
                conn.execute("SELECT 1")

        return postgres

    def sqlite() -> None:
        uri = f"{sqlite_path.as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()

    return sqlite


class HealthCheck:
    """Answers ``/healthz``; safe to call from several threads at once."""

    def __init__(
        self,
        receiver: Receiver,
        database: Callable[[], None] | None,
        *,
        max_journal_backlog: int,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.receiver = receiver
        self.max_journal_backlog = max_journal_backlog
        self._storage = BoundedCheck("storage", receiver.check_storage, timeout)
        self._database = None if database is None else BoundedCheck("database", database, timeout)

    def check(self) -> Health:
        reasons: list[str] = []
        listening, backlog = self._receiver_state(reasons)
        storage = self._storage()
        if storage is not None:
            reasons.append(f"storage: {storage}")
        database = "not used"
        if self._database is not None:
            failure = self._database()
            database = failure or "ok"
            if failure is not None:
                reasons.append(f"database: {failure}")
        return Health(
            status="not ready" if reasons else "ready",
            reasons=reasons,
            listening=listening,
            storage=storage or "ok",
            database=database,
            journal_backlog=backlog,
        )

    def _receiver_state(self, reasons: list[str]) -> tuple[bool, int]:
        try:
            metrics = self.receiver.metrics()
        except RuntimeError as error:  # not started yet
            reasons.append(f"listening: {error}")
            return False, 0
        if not metrics.listening:
            reasons.append("listening: the DICOM listener is not accepting (stopping?)")
        backlog = metrics.journal_backlog
        if 0 < self.max_journal_backlog < backlog:
            reasons.append(
                f"journal_backlog: {backlog} instances wait for registration, more than"
                f" OXIDIP_HEALTH_MAX_JOURNAL_BACKLOG={self.max_journal_backlog}"
            )
        return metrics.listening, backlog
