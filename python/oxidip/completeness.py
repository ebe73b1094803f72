"""Expected series sizes from the sending PACS: one C-FIND per series, off the event loop.

When the first instance of a series arrives, the receiver asks the PACS that sent it (found
by the association's calling AE title in ``OXIDIP_PACS_ADDRESS``) how many instances the
series has: a Study Root SERIES-level C-FIND with the return key
NumberOfSeriesRelatedInstances (0020,1209). The answer is one ``ExpectedCount``:

- ``known``: the PACS gave a non-negative integer;
- ``unknown``: nothing to ask (no address for that AE) or nothing usable in the answer (no
  match, an empty or absent count, a value that is not a non-negative integer);
- ``error``: the query itself failed (connection refused, association rejected or aborted,
  timeout, failure status), after the retries.

Lookups run on daemon worker threads (pynetdicom is blocking): ``request`` only puts the
lookup in a queue, results are taken with ``poll`` (or ``wait``), so the receiver's event
loop is never held by a slow or silent PACS.

pydicom and pynetdicom are imported by the first lookup, not with this module: a receiver
with no PACS to ask never loads them (with numpy, which pydicom takes when installed, they
are ~30 MB of every ``oxidip serve`` process and a third of a second of its start).
"""

import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Self

import msgspec

from oxidip.nodes import NodeDirectory, RemoteNode
from oxidip.registry import ExpectedStatus
from oxidip.workers import Run, WorkQueue

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association

__all__ = ["ExpectedCount", "ExpectedCountLookup"]

log = logging.getLogger("oxidip.completeness")

#: Study Root Query/Retrieve Information Model - FIND.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

_NUMBER_OF_SERIES_RELATED_INSTANCES = 0x0020_1209


class ExpectedCount(msgspec.Struct, frozen=True):
    """The answer to one ``ExpectedCountLookup.request``."""

    series_instance_uid: str
    #: NumberOfSeriesRelatedInstances as the PACS gave it; None unless ``status`` is known.
    expected: int | None
    #: Known (with ``expected``), unknown or error, never pending.
    status: ExpectedStatus
    #: Human readable: what was asked of whom and what came back.
    detail: str
    #: The calling AE title the series was sent by (whose PACS was asked).
    calling_aet: str = ""


class _Job(msgspec.Struct, frozen=True):
    pacs: RemoteNode
    study_instance_uid: str
    series_instance_uid: str
    calling_aet: str


class _Attempt:
    """The outcome of one association; ``retry`` is True for errors worth another try."""

    def __init__(self, result: ExpectedCount, retry: bool) -> None:
        self.result = result
        self.retry = retry


def _count_text(identifier: "Dataset") -> str | None:
    """The raw text of NumberOfSeriesRelatedInstances (None when absent), without letting
    pydicom convert it: a garbage value must be reported, not raise."""
    from pydicom.dataelem import DataElement, RawDataElement

    if _NUMBER_OF_SERIES_RELATED_INSTANCES not in identifier:
        return None
    elem = identifier.get_item(_NUMBER_OF_SERIES_RELATED_INSTANCES, keep_deferred=True)
    value: object
    if isinstance(elem, (RawDataElement, DataElement)):
        value = elem.value
    else:
        return None
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip(" \x00")
    if isinstance(value, Sequence) and not isinstance(value, str):
        # several values, already split by pydicom (pynetdicom converts the identifier's
        # elements when it logs them)
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _parse_count(text: str) -> int | None:
    digits = text.strip()
    digits = digits.removeprefix("+")
    if digits and digits.isascii() and digits.isdigit():
        return int(digits)
    return None


def _drop_connection(assoc: "Association") -> None:
    """Closes an association's connection from another thread. pynetdicom then wakes the
    thread waiting in it (for the A-ASSOCIATE-AC or a C-FIND response) with an A-P-ABORT
    at once; ``Association.abort`` would send an A-ABORT but leave that thread waiting until
    its own timeout."""
    try:
        sock = assoc.dul.socket
        if sock is not None:
            sock.close()
    except Exception:  # best effort: the thread is a daemon and times out anyway
        log.debug("closing a lookup connection failed", exc_info=True)


class ExpectedCountLookup:
    """Asks the sending PACS for the size of each series, on ``workers`` daemon threads.

    ``nodes`` maps calling AE titles to the node to ask (``oxidip.nodes.NodeDirectory``);
    ``calling_aet`` is the AE title the C-FINDs are sent from (the receiver's: the PACS must
    know it, Orthanc only answers AE titles listed in its DicomModalities). Each attempt
    waits at most ``timeout`` seconds for the connection, for the association to be
    accepted and for each response; a failed attempt is retried ``retries`` times after a
    short backoff. At most ``max_pending`` lookups wait or run at once; past that,
    ``request`` answers "lookup queue full" at once. Each request gets its own result: the
    caller asks once per series.
    """

    #: Seconds slept before retry n (1-based): ``backoff * n``, at most ``max_backoff``.
    backoff: float = 0.2
    max_backoff: float = 2.0

    def __init__(
        self,
        nodes: Mapping[str, RemoteNode],
        calling_aet: str,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        workers: int = 4,
        max_pending: int = 10000,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, not {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {max_pending}")
        self.nodes = NodeDirectory(nodes)
        self.calling_aet = calling_aet
        self.timeout = timeout
        self.retries = retries
        self.workers = workers
        self.max_pending = max_pending
        #: The lookups queued or running (``/metrics`` reads its counters).
        self.jobs: WorkQueue[_Job] = WorkQueue(
            "cfind", self._handle, max_pending=max_pending, workers=workers
        )
        self._results: queue.SimpleQueue[ExpectedCount] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Associations being negotiated or used: close() drops their connections.
        self._live: set[Association] = set()
        #: Answers given beforehand (``already_known``), by (calling AE, series UID).
        self._known: dict[tuple[str, str], ExpectedCount] = {}

    # --- caller side ---------------------------------------------------------------------

    def request(self, calling_aet: str, study_instance_uid: str, series_instance_uid: str) -> None:
        """Queues a lookup of the series sent by ``calling_aet``; never blocks. The result
        arrives through ``poll``/``wait``, immediately when there is nothing to ask (or the
        answer is ``already_known``)."""
        with self._lock:
            known = self._known.get((calling_aet, series_instance_uid))
        if known is not None:
            self._results.put(known)
            return
        pacs = self.nodes.get(calling_aet)
        if pacs is None:
            self._results.put(
                ExpectedCount(
                    series_instance_uid,
                    None,
                    ExpectedStatus.UNKNOWN,
                    f"no PACS address for calling AE {calling_aet.strip()!r} "
                    "(not in OXIDIP_PACS_ADDRESS)",
                    calling_aet,
                )
            )
            return
        job = _Job(pacs, study_instance_uid, series_instance_uid, calling_aet)
        if self._closed.is_set() or self.jobs.closed:
            refused = "lookup service closed"
        elif not self.jobs.put(job, timeout=0):
            closed = self.jobs.closed
            refused = (
                "lookup service closed"
                if closed
                else f"lookup queue full ({self.max_pending} pending)"
            )
        else:
            return
        self._results.put(
            ExpectedCount(series_instance_uid, None, ExpectedStatus.ERROR, refused, calling_aet)
        )

    def already_known(self, answers: Iterable[ExpectedCount]) -> None:
        """Counts found by a C-FIND made already (``oxidip pull``'s walk down to the series,
        its in-process receiver's pipeline): a request for one of those series is answered
        with it at once instead of asking the PACS the same again."""
        with self._lock:
            self._known.update({(a.calling_aet, a.series_instance_uid): a for a in answers})

    def poll(self) -> list[ExpectedCount]:
        """The results that arrived since the last call; never blocks."""
        out: list[ExpectedCount] = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float) -> list[ExpectedCount]:
        """Blocks until at least one result arrived or ``timeout`` seconds passed; returns
        all results available then (possibly none)."""
        try:
            first = self._results.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return []
        return [first, *self.poll()]

    @property
    def pending(self) -> int:
        """Lookups queued or running (those whose result has not arrived yet)."""
        return 0 if self._closed.is_set() else self.jobs.pending

    def close(self) -> None:
        """Stops the workers without waiting for running lookups: those are abandoned (their
        connections closed, their results dropped), queued ones are dropped. Later requests
        are answered "lookup service closed" at once."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            live = list(self._live)
        self.jobs.close()
        self.jobs.abandon()
        for assoc in live:
            _drop_connection(assoc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- workers -------------------------------------------------------------------------

    def _handle(self, run: Run[_Job]) -> None:
        for job in run.items:
            try:
                result = self._lookup(job)
            except Exception as error:  # a lookup must always end in a result
                log.exception(
                    "expected count lookup failed",
                    extra={"series_instance_uid": job.series_instance_uid},
                )
                result = ExpectedCount(
                    job.series_instance_uid,
                    None,
                    ExpectedStatus.ERROR,
                    f"C-FIND to {job.pacs} failed: {type(error).__name__}: {error}",
                )
            run.done()  # no longer pending once its result can be seen
            with self._lock:
                if self._closed.is_set():
                    return
                self._results.put(msgspec.structs.replace(result, calling_aet=job.calling_aet))

    def _lookup(self, job: _Job) -> ExpectedCount:
        """Up to ``retries + 1`` attempts; an error result says how many were made."""
        attempts = self.retries + 1
        number = 0
        while True:
            number += 1
            attempt = self._attempt(job)
            if not attempt.retry or number >= attempts or self._closed.is_set():
                break
            log.debug(
                "C-FIND attempt failed, retrying",
                extra={
                    "series_instance_uid": job.series_instance_uid,
                    "attempt": number,
                    "detail": attempt.result.detail,
                },
            )
            if self._closed.wait(min(self.backoff * number, self.max_backoff)):
                break
        result = attempt.result
        if result.status != ExpectedStatus.ERROR:
            return result
        tries = "1 attempt" if number == 1 else f"{number} attempts"
        return ExpectedCount(
            result.series_instance_uid, None, ExpectedStatus.ERROR, f"{result.detail} after {tries}"
        )

    def _attempt(self, job: _Job) -> _Attempt:
        """One association: connect, negotiate, C-FIND, release."""
        from pynetdicom import AE, evt

        pacs = job.pacs
        where = str(pacs)
        series = job.series_instance_uid

        def error(detail: str, retry: bool = True) -> _Attempt:
            return _Attempt(ExpectedCount(series, None, ExpectedStatus.ERROR, detail), retry)

        ae = AE(ae_title=self.calling_aet)
        ae.connection_timeout = self.timeout
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        ae.add_requested_context(STUDY_ROOT_FIND)

        opened = threading.Event()
        holder: list[Association] = []

        def track(event: "evt.Event") -> None:
            with self._lock:
                if not holder:
                    holder.append(event.assoc)
                    self._live.add(event.assoc)
            if event.event is evt.EVT_CONN_OPEN:
                opened.set()

        started = time.monotonic()
        try:
            assoc = ae.associate(
                pacs.host,
                pacs.port,
                ae_title=pacs.aet,
                evt_handlers=[(evt.EVT_REQUESTED, track), (evt.EVT_CONN_OPEN, track)],
            )
        except (OSError, ValueError) as exc:
            return error(f"C-FIND to {where} could not start: {exc}")
        with self._lock:
            self._live.add(assoc)
        try:
            if self._closed.is_set():
                return error("lookup service closed", retry=False)
            if not assoc.is_established:
                waited = time.monotonic() - started
                if assoc.is_rejected:
                    rsp = assoc.acceptor.primitive
                    why = (
                        f"{rsp.result_str}, source: {rsp.source_str}, reason: {rsp.reason_str}"
                        if rsp is not None
                        else "no details"
                    )
                    return error(f"C-FIND to {where}: association rejected ({why})")
                if not opened.is_set():
                    if waited >= self.timeout * 0.9:
                        return error(
                            f"C-FIND to {where} timed out (no TCP connection within "
                            f"{self.timeout:g} s)"
                        )
                    return error(
                        f"C-FIND to {where} could not connect (connection refused or unreachable)"
                    )
                if waited >= self.timeout * 0.9:
                    return error(
                        f"C-FIND to {where} timed out (no answer to the association request "
                        f"within {self.timeout:g} s)"
                    )
                return error(f"C-FIND to {where} aborted (before the association was accepted)")
            return self._find(assoc, job, where)
        finally:
            if assoc.is_established:
                try:
                    assoc.release()
                except Exception:  # noqa: BLE001 - the answer is already in hand
                    assoc.abort()
            with self._lock:
                self._live.discard(assoc)
                for other in holder:
                    self._live.discard(other)

    def _find(self, assoc: "Association", job: _Job, where: str) -> _Attempt:
        from pydicom.dataset import Dataset

        series = job.series_instance_uid
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = job.study_instance_uid
        query.SeriesInstanceUID = series
        query.NumberOfSeriesRelatedInstances = None
        matches: list[Dataset] = []
        started = time.monotonic()
        final: int | None = None
        final_comment = ""
        for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            if "Status" not in status:
                waited = time.monotonic() - started
                if waited >= self.timeout * 0.9:
                    cause = f"timed out (no C-FIND response within {self.timeout:g} s)"
                else:
                    cause = "aborted (the association ended before the PACS answered)"
                retry = not self._closed.is_set()
                return _Attempt(
                    ExpectedCount(series, None, ExpectedStatus.ERROR, f"C-FIND to {where} {cause}"),
                    retry,
                )
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    matches.append(identifier)
                continue
            final = code
            final_comment = str(status.get("ErrorComment", "") or "")
            break
        if final is None:
            return _Attempt(
                ExpectedCount(
                    series,
                    None,
                    ExpectedStatus.ERROR,
                    f"C-FIND to {where} failed (no final status)",
                ),
                True,
            )
        if final != 0x0000:
            kind = "cancelled" if final == 0xFE00 else "failed"
            comment = f" ({final_comment})" if final_comment else ""
            return _Attempt(
                ExpectedCount(
                    series,
                    None,
                    ExpectedStatus.ERROR,
                    f"C-FIND to {where} {kind} with status 0x{final:04X}{comment}",
                ),
                True,
            )
        return self._interpret(matches, job, where)

    def _interpret(self, matches: list["Dataset"], job: _Job, where: str) -> _Attempt:
        series = job.series_instance_uid
        pacs = job.pacs.aet
        if not matches:
            return _Attempt(
                ExpectedCount(
                    series, None, ExpectedStatus.UNKNOWN, f"PACS {pacs} answered 0 matches"
                ),
                False,
            )
        texts = [_count_text(m) for m in matches]
        counts = [None if t is None else _parse_count(t) for t in texts]
        several = f" ({len(matches)} matches, used the first with a count)"
        for index, count in enumerate(counts):
            if count is not None:
                detail = f"PACS {pacs} answered NumberOfSeriesRelatedInstances={count}"
                if len(matches) > 1:
                    detail += several if index else f" ({len(matches)} matches, used the first)"
                if count == 0:
                    # We are receiving instances of this series: a PACS that counts none does
                    # not hold it (yet); 0 as "expected" would make it overfull at once.
                    return _Attempt(
                        ExpectedCount(series, None, ExpectedStatus.UNKNOWN, detail), False
                    )
                return _Attempt(ExpectedCount(series, count, ExpectedStatus.KNOWN, detail), False)
        first = texts[0]
        if first is None:
            detail = f"PACS {pacs} answered without NumberOfSeriesRelatedInstances"
        elif first == "":
            detail = f"PACS {pacs} answered an empty NumberOfSeriesRelatedInstances"
        else:
            detail = (
                f"PACS {pacs} answered NumberOfSeriesRelatedInstances={first!r}, "
                "not a non-negative integer"
            )
        if len(matches) > 1:
            detail += f" ({len(matches)} matches, none with a count)"
        return _Attempt(ExpectedCount(series, None, ExpectedStatus.UNKNOWN, detail), False)
