"""User hooks: Python called as instances are stored and series are finalized.

``OXIDIP_HOOKS=module.path`` names an importable module (installed, or on ``PYTHONPATH``)
defining any of:

- ``on_instance(event: InstanceStored) -> None``: once per stored instance;
- ``on_series_complete(series: SeriesRow) -> None``: a series reached ``complete``
  (received == expected);
- ``on_series_finalized(series: SeriesRow) -> None``: a series left ``receiving`` for any final
  state: ``complete``, ``incomplete``, ``overfull`` or ``finalized-unknown`` (so a complete
  series gets ``on_series_complete`` then ``on_series_finalized``, when both are defined);
- ``on_forwarded(job: JobRow) -> None``: a forwarding job ended ``done`` (every instance
  delivered or refused for good; ``job.failed`` counts the refused ones, ``job.last_error``
  says why; see ``oxidip.forwarding``);
- ``on_forward_failed(job: JobRow) -> None``: an attempt of a forwarding job failed: the job
  is ``failed`` (``job.next_attempt_at`` says when it is tried again), ``held`` (its
  destination's circuit is open) or ``dead`` (it gave up: ``oxidip queue retry``);
- ``route(series: RoutedSeries) -> list[str] | None``: the destinations of a series, adding
  to or replacing those the routes file's rules chose (``oxidip.routing.HookedRouter``);
- ``register(instances: list[InstanceStored]) -> None`` with an optional module constant
  ``REGISTER_MODE``: ``"add"`` (default) calls it after each batch is registered in the
  database; ``"replace"`` calls it *instead of* the database (registration in another backend).

``register`` runs synchronously on the registration path, and its exceptions propagate to the
caller, which decides (``route`` too runs synchronously, inside the registry's transaction:
``HookedRouter`` logs its exceptions and keeps the rules' destinations); an ``OSError``
(``ConnectionError``, ``TimeoutError``...) means the backend is unreachable, and the batch is
retried with backoff like a database outage; any other exception fails the batch (logged,
kept in the journal for the next start). A registration is never silently lost. With
``"replace"`` no series state is tracked (they live in oxidip's database), so
``on_series_complete``, ``on_series_finalized``, the forwarding hooks and NATS series messages
never come: ``oxidip serve`` warns at start, naming those that are configured. The
notification hooks (``on_*``) run in order on one worker thread, fed by one bounded queue
(``queue_size`` items, an item being one instance, one series or one forwarding job): they
never run on the network path nor on the forwarding thread, and when a slow hook lets the
queue fill up, the producers wait (back-pressure: registration, then the receiver's event
queue, then TCP to the senders; forwarding records its next outcomes later), so memory stays
bounded. A backlog over half the queue is logged as a WARNING (at most every 10 s). An
exception in a notification hook is logged at ERROR with its traceback, the hook and the UIDs
it concerns, and the next item is processed.
"""

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

from oxidip._boundary import InstanceStored
from oxidip.workers import Run, WorkQueue

__all__ = ["BACKLOG_WARNING_INTERVAL", "HOOK_NAMES", "HookError", "Hooks", "IdentifiedSeries"]

log = logging.getLogger("oxidip.hooks")

#: The functions a hooks module may define.
HOOK_NAMES = (
    "on_instance",
    "on_series_complete",
    "on_series_finalized",
    "on_forwarded",
    "on_forward_failed",
    "route",
    "register",
)

#: Seconds between two "hooks backlog" warnings.
BACKLOG_WARNING_INTERVAL = 10.0

RegisterMode: TypeAlias = Literal["add", "replace"]


class IdentifiedSeries(Protocol):
    """A series (or a forwarding job) as the hooks machinery knows it: its key, for the log
    of a failed hook (``oxidip.registry.SeriesRow`` and ``JobRow`` have it all; the hook
    functions receive the whole row)."""

    @property
    def series_instance_uid(self) -> str: ...

    @property
    def calling_aet(self) -> str: ...


class HookError(Exception):
    """The hooks module cannot be used: it does not import, defines no hook, or defines one
    wrongly. The message says which and why."""


InstanceHook: TypeAlias = Callable[[InstanceStored], object]
SeriesHook: TypeAlias = Callable[[Any], object]
JobHook: TypeAlias = Callable[[Any], object]
RegisterHook: TypeAlias = Callable[[list[InstanceStored]], object]
#: Takes an ``oxidip.routing.RoutedSeries``; answers None or destination names.
RouteHook: TypeAlias = Callable[[Any], object]


class _Call(NamedTuple):
    """One queued hook call."""

    hook: Callable[[Any], object]
    name: str
    arg: InstanceStored | IdentifiedSeries


class Hooks:
    """The hooks of one module (or none). Build it with ``Hooks.load``; ``close`` it at the
    end. Safe to call from several threads."""

    def __init__(
        self,
        module_name: str | None = None,
        *,
        on_instance: InstanceHook | None = None,
        on_series_complete: SeriesHook | None = None,
        on_series_finalized: SeriesHook | None = None,
        on_forwarded: JobHook | None = None,
        on_forward_failed: JobHook | None = None,
        route: RouteHook | None = None,
        register: RegisterHook | None = None,
        register_mode: RegisterMode = "add",
        queue_size: int = 10000,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if register_mode == "replace" and register is None:
            raise ValueError('register_mode "replace" needs a register hook')
        self.module_name = module_name
        self._on_instance = on_instance
        self._on_series_complete = on_series_complete
        self._on_series_finalized = on_series_finalized
        self._on_forwarded = on_forwarded
        self._on_forward_failed = on_forward_failed
        self._route = route
        self._register = register
        #: True when ``register`` replaces the database registration (``REGISTER_MODE``).
        self.replaces_registry: bool = register_mode == "replace"
        self.queue_size = queue_size

        self._warned = threading.Lock()
        self._last_warning = -float("inf")
        #: The notification hooks' calls, run in order on one worker thread.
        self.calls: WorkQueue[_Call] | None = None
        notifications = (
            on_instance,
            on_series_complete,
            on_series_finalized,
            on_forwarded,
            on_forward_failed,
        )
        if any(hook is not None for hook in notifications):
            self.calls = WorkQueue("hooks", self._run, max_waiting=queue_size)

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, module_path: str | None, *, queue_size: int = 10000) -> "Hooks":
        """The hooks of module ``module_path``; no hooks (every call a no-op) when it is None
        or blank. Raises ``HookError`` when the module cannot be imported, defines none of
        ``HOOK_NAMES``, defines one that is not callable, or has an invalid
        ``REGISTER_MODE``."""
        if module_path is None or not module_path.strip():
            return cls(queue_size=queue_size)
        name = module_path.strip()
        module = _import(name)
        found: dict[str, Callable[..., object]] = {}
        for hook in HOOK_NAMES:
            value = getattr(module, hook, None)
            if value is None:
                continue
            if not callable(value):
                raise HookError(
                    f"hooks module {name!r}: {hook} must be a function, not {type(value).__name__}"
                )
            found[hook] = value
        if not found:
            raise HookError(
                f"hooks module {name!r} ({_origin(module)}) defines none of {', '.join(HOOK_NAMES)}"
            )
        mode: RegisterMode = getattr(module, "REGISTER_MODE", "add")
        if mode not in ("add", "replace"):
            raise HookError(
                f'hooks module {name!r}: REGISTER_MODE must be "add" or "replace", not {mode!r}'
            )
        if mode == "replace" and "register" not in found:
            raise HookError(
                f'hooks module {name!r}: REGISTER_MODE is "replace" but there is no register'
                " function to register instances instead of the database"
            )
        hooks = cls(
            name,
            on_instance=found.get("on_instance"),
            on_series_complete=found.get("on_series_complete"),
            on_series_finalized=found.get("on_series_finalized"),
            on_forwarded=found.get("on_forwarded"),
            on_forward_failed=found.get("on_forward_failed"),
            route=found.get("route"),
            register=found.get("register"),
            register_mode=mode,
            queue_size=queue_size,
        )
        log.info(
            "hooks loaded",
            extra={
                "hooks_module": name,
                "hooks": ",".join(found),
                "register_mode": mode if "register" in found else "",
                "queue_size": queue_size,
            },
        )
        return hooks

    @property
    def names(self) -> list[str]:
        """The hooks defined, among ``HOOK_NAMES``."""
        present = (
            self._on_instance,
            self._on_series_complete,
            self._on_series_finalized,
            self._on_forwarded,
            self._on_forward_failed,
            self._route,
            self._register,
        )
        return [name for name, hook in zip(HOOK_NAMES, present, strict=True) if hook is not None]

    def qualified(self, hook: str) -> str:
        """``module.hook``, for logs."""
        return f"{self.module_name}.{hook}" if self.module_name else hook

    # --- calls -----------------------------------------------------------------------------

    def register(self, instances: list[InstanceStored]) -> None:
        """Calls the ``register`` hook, if any, in the caller's thread; its exceptions
        propagate."""
        if self._register is not None and instances:
            self._register(instances)

    @property
    def routes_series(self) -> bool:
        """Whether there is a ``route`` hook."""
        return self._route is not None

    def route(self, series: object) -> object:
        """Calls the ``route`` hook in the caller's thread and returns its answer (None when
        there is no hook); its exceptions propagate."""
        return None if self._route is None else self._route(series)

    def instance_stored(self, events: list[InstanceStored]) -> None:
        """Queues one ``on_instance`` call per event (blocks while the queue is full)."""
        hook = self._on_instance
        if hook is not None and events:
            name = self.qualified("on_instance")
            self._put(_Call(hook, name, event) for event in events)

    def series_complete(self, series: IdentifiedSeries) -> None:
        """Queues an ``on_series_complete`` call (blocks while the queue is full)."""
        if self._on_series_complete is not None:
            call = _Call(self._on_series_complete, self.qualified("on_series_complete"), series)
            self._put((call,))

    def series_finalized(self, series: IdentifiedSeries) -> None:
        """Queues an ``on_series_finalized`` call (blocks while the queue is full)."""
        if self._on_series_finalized is not None:
            call = _Call(self._on_series_finalized, self.qualified("on_series_finalized"), series)
            self._put((call,))

    def forwarded(self, job: IdentifiedSeries) -> None:
        """Queues an ``on_forwarded`` call (blocks while the queue is full)."""
        if self._on_forwarded is not None:
            self._put((_Call(self._on_forwarded, self.qualified("on_forwarded"), job),))

    def forward_failed(self, job: IdentifiedSeries) -> None:
        """Queues an ``on_forward_failed`` call (blocks while the queue is full)."""
        if self._on_forward_failed is not None:
            call = _Call(self._on_forward_failed, self.qualified("on_forward_failed"), job)
            self._put((call,))

    @property
    def backlog(self) -> int:
        """Hook calls queued and not started yet (at most ``queue_size``)."""
        return 0 if self.calls is None else self.calls.waiting

    @property
    def peak_backlog(self) -> int:
        """The largest backlog seen so far."""
        return 0 if self.calls is None else self.calls.peak_waiting

    @property
    def producers_waited(self) -> int:
        """How many times a producer had to wait for room in the queue."""
        return 0 if self.calls is None else self.calls.waits

    @property
    def dropped(self) -> int:
        """Hook calls never made: still queued when ``close`` gave up, or queued after it."""
        return 0 if self.calls is None else self.calls.dropped

    def close(self, timeout: float) -> None:
        """Stops accepting calls, runs what is queued for at most ``timeout`` seconds, then
        stops the worker; calls still queued are dropped (logged as a WARNING). Producers
        blocked on a full queue are released (their remaining calls dropped). Idempotent."""
        if self.calls is None:
            return
        left, still_running = self.calls.shutdown(timeout)
        if left or still_running:
            log.warning(
                "hooks closed before the backlog was done",
                extra={
                    "hooks_module": self.module_name or "",
                    "dropped": left,
                    "hook_still_running": bool(still_running),
                    "timeout": timeout,
                },
            )

    # --- internals -------------------------------------------------------------------------

    def _put(self, calls: Iterable[_Call]) -> None:
        """Queues the calls in order, waiting for room whenever the queue is full."""
        queue = self.calls
        assert queue is not None
        queue.put_many(calls, on_full=self._maybe_warn)
        if queue.waiting * 2 > self.queue_size:
            self._maybe_warn()

    def _maybe_warn(self) -> None:
        """Logs the backlog, at most every ``BACKLOG_WARNING_INTERVAL`` s."""
        with self._warned:
            now = time.monotonic()
            if now - self._last_warning < BACKLOG_WARNING_INTERVAL:
                return
            self._last_warning = now
        log.warning(
            "hooks backlog",
            extra={
                "hooks_module": self.module_name or "",
                "backlog": self.backlog,
                "queue_size": self.queue_size,
            },
        )

    def _run(self, run: Run[_Call]) -> None:
        for call in run.items:
            try:
                call.hook(call.arg)
            except (Exception, SystemExit):  # a hook must never stop the worker
                log.exception("hook failed", extra={"hook": call.name, **_uids(call.arg)})


def _uids(arg: InstanceStored | IdentifiedSeries) -> dict[str, str]:
    """The UIDs (and AE) a hook call concerns, for its log record."""
    if isinstance(arg, InstanceStored):
        attributes = arg.attributes
        return {
            "series_instance_uid": attributes.SeriesInstanceUID or "",
            "sop_instance_uid": attributes.SOPInstanceUID or "",
            "calling_aet": arg.calling_aet,
            "path": arg.path,
        }
    uids = {
        "series_instance_uid": str(getattr(arg, "series_instance_uid", "")),
        "calling_aet": str(getattr(arg, "calling_aet", "")),
    }
    job_id = getattr(arg, "id", None)  # a forwarding job (JobRow)
    if job_id is not None:
        uids["job_id"] = str(job_id)
        uids["destination"] = str(getattr(arg, "destination", ""))
    return uids


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise HookError(
                f"hooks module {name!r} not found (it must be importable: installed, or in a"
                " directory on PYTHONPATH)"
            ) from error
        raise HookError(
            f"importing hooks module {name!r} failed: {type(error).__name__}: {error}"
        ) from error
    except (Exception, SystemExit) as error:  # SyntaxError, anything raised by module code
        raise HookError(
            f"importing hooks module {name!r} failed: {type(error).__name__}: {error}"
        ) from error


def _origin(module: ModuleType) -> str:
    return getattr(module, "__file__", None) or "no file"
