"""One attempt at retrieving one series (C-MOVE, PS3.4 C.4.2, or C-GET, C.4.3), watched:
progress is the pending responses' sub-operation counts, the instances a C-GET stored and
the registry's registered count; none of them growing for ``stall`` seconds -> C-CANCEL
(PS3.7 9.3.2.3), and A-ABORT if the PACS still has not ended ``cancel_grace`` seconds later.

The outcome (``Attempt``) says in words what happened, and whether another attempt could
help (``Verdict``): A801 and a refused C-GET are the PACS's configuration (permanent); A7xx,
stalls, timeouts and lost associations may pass (transient).
"""

import enum
import threading
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from oxidip import _core
from oxidip.nodes import RemoteNode

__all__ = [
    "Attempt",
    "Counts",
    "Retrieval",
    "Verdict",
    "failed_uids",
    "start_failed",
    "status_words",
    "watch",
]

#: How often the registered count is read while a retrieval runs (a registry read each).
REGISTERED_POLL = 1.0


class Retrieval(Protocol):
    """What ``_core.move`` and ``Receiver.get`` return (``_core.Retrieval``)."""

    def next_progress(self, timeout: float) -> "_core.RetrieveProgress | None": ...

    def cancel(self) -> None: ...

    def abort(self) -> None: ...

    @property
    def result(self) -> "_core.RetrieveResult | None": ...

    @property
    def error(self) -> str | None: ...

    @property
    def instances_received(self) -> int: ...


class Verdict(enum.Enum):
    #: The PACS said it sent everything (status 0000, or a warning B000 without failures).
    DONE = "done"
    #: Worth another attempt (stall, timeout, A7xx, lost association, failed sub-operations).
    TRANSIENT = "transient"
    #: Another attempt would fail the same way (A801, a refused C-GET, AAxx/Cxxx...).
    PERMANENT = "permanent"
    #: Stopped because the pull is stopping (SIGINT/SIGTERM): not an attempt.
    STOPPED = "stopped"


class Counts(msgspec.Struct):
    """The latest sub-operation counts (None: the PACS did not say)."""

    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None

    def done(self) -> int | None:
        """Sub-operations over (completed, failed or warning), None when unknown."""
        if self.completed is None and self.failed is None and self.warning is None:
            return None
        return (self.completed or 0) + (self.failed or 0) + (self.warning or 0)

    def total(self) -> int | None:
        done = self.done()
        return None if done is None or self.remaining is None else done + self.remaining


class Attempt(msgspec.Struct):
    verdict: Verdict
    #: What happened, in words ("" when all went well).
    words: str
    counts: Counts = msgspec.field(default_factory=Counts)
    #: The final response came (``counts`` are then its own where it gave them).
    final: bool = False


def status_words(
    status: int, comment: str, *, method: str, destination: str, failed: list[str]
) -> tuple[Verdict, str]:
    """The final status of a C-MOVE/C-GET in words (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
    said = f" ({comment})" if comment else ""
    if status == 0x0000:
        return Verdict.DONE, ""
    if status == 0xB000:
        first = ", ".join(failed[:3]) + (", ..." if len(failed) > 3 else "")
        listed = f"; Failed SOP Instance UID List: {len(failed)}: {first}" if failed else ""
        return (
            Verdict.TRANSIENT,
            f"the PACS answered B000 (sub-operations failed or with warnings){said}{listed}",
        )
    if status == 0xA801:
        return (
            Verdict.PERMANENT,
            (
                f"move destination {destination} unknown to the PACS (A801){said}: add"
                f" {destination} -> host:port of oxidip's receiver to its DICOM modalities"
            ),
        )
    if 0xA700 <= status <= 0xA7FF:
        return (
            Verdict.TRANSIENT,
            f"the PACS is out of resources (0x{status:04X}){said}: retried later",
        )
    if status == 0xFE00:
        return Verdict.TRANSIENT, f"the retrieval was cancelled (FE00){said}"
    if 0xA900 <= status <= 0xA9FF:
        return (
            Verdict.PERMANENT,
            f"the identifier does not match the SOP class (0x{status:04X}){said}",
        )
    if 0xC000 <= status <= 0xCFFF:
        # Orthanc, for one, answers a C-MOVE whose destination it cannot reach so.
        reach = (
            f": can the PACS reach {destination} (oxidip's receiver)?" if method == "move" else ""
        )
        return (
            Verdict.PERMANENT,
            f"the PACS could not process the C-{method.upper()} (0x{status:04X}){said}{reach}",
        )
    return Verdict.PERMANENT, f"the {method.upper()} failed with status 0x{status:04X}{said}"


def failed_uids(identifier: bytes | None) -> list[str]:
    """The Failed SOP Instance UID List (0008,0058) of a final response's identifier."""
    if not identifier:
        return []
    from oxidip.pull.find import decode_identifier, text_of

    try:
        listed = text_of(decode_identifier(identifier), "FailedSOPInstanceUIDList")
    except (ValueError, EOFError, KeyError, TypeError):  # a broken identifier hides nothing
        return []
    return [uid for uid in listed.split("\\") if uid]


def watch(
    retrieval: Retrieval,
    *,
    method: str,
    pacs: RemoteNode,
    destination: str,
    stall: float,
    cancel_grace: float,
    registered: Callable[[], int],
    on_progress: Callable[[Counts, int], None],
    stop: threading.Event,
) -> Attempt:
    """Follows ``retrieval`` to its end (bounded: a stall cancels, then aborts) and says how
    it ended. ``registered()`` reads the registered count of the series; ``on_progress`` is
    told the counts and that count whenever either changes."""
    counts = Counts()
    seen_registered = registered()
    seen_received = 0
    last_progress = time.monotonic()
    next_poll = last_progress + REGISTERED_POLL
    cancelled_at: float | None = None
    why_cancelled = ""
    on_progress(counts, seen_registered)
    while True:
        progress = retrieval.next_progress(0.25)
        now = time.monotonic()
        changed = False
        if progress is not None:
            counts = Counts(
                progress.remaining, progress.completed, progress.failed, progress.warning
            )
            changed = True
        received = retrieval.instances_received
        if received != seen_received:
            seen_received, changed = received, True
        if now >= next_poll:
            next_poll = now + REGISTERED_POLL
            count = registered()
            if count != seen_registered:
                seen_registered, changed = count, True
        if changed:
            last_progress = now
            on_progress(counts, seen_registered)
        if progress is None and (retrieval.result is not None or retrieval.error is not None):
            break
        if cancelled_at is None:
            if stop.is_set():
                why_cancelled = "stopped"
            elif now - last_progress > stall:
                why_cancelled = (
                    f"stalled: no progress for {stall:g} s (no pending response, no instance"
                    " registered); cancelled"
                )
            if why_cancelled:
                retrieval.cancel()
                cancelled_at = now
        elif now - cancelled_at > cancel_grace:
            retrieval.abort()
            why_cancelled += (
                f", then aborted (the PACS ignored the C-CANCEL for {cancel_grace:g} s)"
            )
            cancelled_at = float("inf")  # abort once; the retrieval then ends with an error
    return _outcome(retrieval, counts, method, pacs, destination, why_cancelled)


def _outcome(
    retrieval: Retrieval,
    counts: Counts,
    method: str,
    pacs: RemoteNode,
    destination: str,
    why_cancelled: str,
) -> Attempt:
    if why_cancelled == "stopped" or why_cancelled.startswith("stopped,"):
        return Attempt(Verdict.STOPPED, "stopped before the end", counts)
    result = retrieval.result
    if result is None:
        error = retrieval.error or "ended without a final response"
        words = f"C-{method.upper()} from {pacs}: {error}"
        if why_cancelled:
            words = f"{why_cancelled} ({error})"
        return Attempt(Verdict.TRANSIENT, words, counts)
    final = Counts(
        counts.remaining if result.status in (0xFF00, 0xFF01) else 0,
        result.completed if result.completed is not None else counts.completed,
        result.failed if result.failed is not None else counts.failed,
        result.warning if result.warning is not None else counts.warning,
    )
    if why_cancelled:
        return Attempt(Verdict.TRANSIENT, why_cancelled, final, final=True)
    verdict, words = status_words(
        result.status,
        result.comment,
        method=method,
        destination=destination,
        failed=failed_uids(result.identifier),
    )
    if verdict is Verdict.TRANSIENT and result.status == 0xB000 and not (final.failed or 0):
        verdict, words = Verdict.DONE, ""  # warnings only: every instance was sent
    return Attempt(verdict, words, final, final=True)


def start_failed(error: OSError, method: str, pacs: RemoteNode) -> Attempt:
    """A retrieval that could not start (no association that can carry it): a C-GET the
    PACS will not do (its model refused, or none of the storage contexts accepted with us as
    SCP) is permanent; anything else (refused connection, rejection, timeout) may pass."""
    words = str(error)
    if method == "get" and any(
        refusal in words for refusal in ("refused the information model", "accepted none")
    ):
        return Attempt(Verdict.PERMANENT, f"the PACS refused C-GET: try --method move ({words})")
    if "refused the information model" in words:
        return Attempt(Verdict.PERMANENT, f"the PACS refused C-{method.upper()}: {words}")
    return Attempt(Verdict.TRANSIENT, f"C-{method.upper()} from {pacs}: {words}")
