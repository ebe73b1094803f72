"""Typed stub of the Rust extension ``oxidip._core`` (see ``rust/python.rs``).

Data crosses the boundary as msgpack encoded by msgspec (configuration, in) and by serde
(event batches, out); ``oxidip._boundary`` holds the matching msgspec structs.

``stubtest oxidip._core`` (``tests/run.sh``) holds this stub against the built extension.
pyo3's classes are final (``#[pyclass]`` without ``subclass``) and built by ``__new__``
(``#[new]``).
"""

from typing import final

__all__ = [
    "DEFAULT_PATH_TEMPLATE",
    "EXTRACTED_KEYWORDS",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "ExtractedAttributes",
    "FindResult",
    "Forwarder",
    "OrphanJournal",
    "PathTemplate",
    "Receiver",
    "Retrieval",
    "RetrieveProgress",
    "RetrieveResult",
    "__version__",
    "check_path_template",
    "check_tls",
    "claim_orphan_journals",
    "decode_pdus",
    "echo",
    "extract_attributes",
    "find",
    "move",
    "read_instance",
    "read_stored_for_sending",
    "send_load",
]

__version__: str
#: oxidip's Implementation Class UID, written to (0002,0012) and sent in A-ASSOCIATE-AC.
IMPLEMENTATION_CLASS_UID: str
#: oxidip's Implementation Version Name, written to (0002,0013).
IMPLEMENTATION_VERSION_NAME: str
#: DICOM keywords of the attributes extracted from every instance, in tag order.
EXTRACTED_KEYWORDS: list[str]
#: The default storage path template (oxidicom's layout).
DEFAULT_PATH_TEMPLATE: str

def check_path_template(template: str) -> None:
    """Raises ValueError with a readable reason when the template is invalid."""

def check_tls(cert: str, key: str, ca: str | None = None) -> tuple[str, str] | None:
    """Loads the TLS listener's PEM files as the receiver will: None when they are usable,
    else (which file: "cert", "key" or "ca", why)."""

@final
class OrphanJournal:
    """A journal segment of an oxidip process that no longer runs (its lock was free),
    whatever its host, locked by this process until ``finish`` or ``release``: no other
    process replays it meanwhile."""

    #: Its path.
    path: str
    #: The id of the process that wrote it (``Receiver.process_id``); None for a segment of an
    #: oxidip from before it was recorded.
    node: str | None
    #: Final paths relative to the files root, one per instance the process announced (some
    #: may have no file: the process died before placing it).
    entries: list[str]

    def finish(self) -> None:
        """Its entries are registered: deletes the segment (and the temp files its process
        left) and lets go of it. OSError if it cannot be deleted."""

    def release(self) -> None:
        """Lets go of it, left in place for a later claim."""

def claim_orphan_journals(files_root: str) -> list[OrphanJournal]:
    """The journal segments under ``files_root`` whose process no longer runs, each claimed
    (locked) by this process; segments of live processes, or claimed by another, are left
    alone. OSError when the journal directory cannot be read."""

def read_instance(path: str) -> bytes:
    """msgpack of ``oxidip._boundary.StoredFile`` for a stored Part 10 file. Raises
    ValueError when the file is not a Part 10 file oxidip can read."""

def read_stored_for_sending(path: str) -> bytes:
    """msgpack of ``oxidip._boundary.StoredDataSet`` for a stored Part 10 file: its SOP Class,
    SOP Instance and Transfer Syntax UIDs (file meta, checked against the data set) and the
    byte range of its data set. Raises ValueError naming the problem when the file is not
    Part 10, its meta is truncated or inconsistent, or its transfer syntax unknown."""

def send_load(options: bytes) -> bytes:
    """Runs the load generator: ``options`` is msgpack of ``oxidip._boundary.LoadOptions``,
    the result msgpack of ``LoadReport``. Blocks (without the GIL) until every association
    has ended. Raises ValueError on invalid options."""

@final
class Receiver:
    """The Storage SCP. One instance serves one listening socket."""

    def __new__(cls, config: bytes) -> Receiver:
        """``config``: msgpack of ``oxidip._boundary.CoreConfig``. Raises ValueError when a
        value is out of range (the Python layer validates first, naming the variable)."""

    def prepare_storage(self) -> None:
        """Makes the storage root ready: created when missing (with its mode and group), its
        temp directory too, and a file created and removed there. OSError whose message says
        why not (``not a directory``, ``cannot be created: ...``, ``this user (uid N) cannot
        create files in it: ...``)."""

    def start(self) -> tuple[int | None, int | None]:
        """Opens storage, binds and starts serving; returns the bound ports (useful with port
        0): (plain TCP, TLS), None for a listener not configured. Raises OSError when a port
        cannot be bound or storage is unusable."""

    def next_batch(self, max_events: int, timeout: float, linger: float) -> bytes | None:
        """Waits up to ``timeout`` seconds (GIL released) for a first event, then up to
        ``linger`` seconds more for others (unless ``max_events`` are already there), and
        returns up to ``max_events`` as msgpack of ``list[oxidip._boundary.Event]`` (an
        empty list on timeout). Returns None once the receiver has stopped and every event
        was taken."""

    def acknowledge(self, seqs: list[int], registered: bool) -> None:
        """Python's word on journal entries (``InstanceStored.journal_seq``): registered
        (the entries may go; with ``ack=registered`` their senders get success) or not
        (kept for replay at the next start; with ``ack=registered`` the senders get A700)."""

    def stop(self, timeout: float) -> None:
        """Begins a graceful shutdown and returns at once: stops accepting, lets running
        associations finish for up to ``timeout`` seconds, then aborts the rest (their partial
        instances are removed). Keep taking batches: ``next_batch`` returns None once every
        association has ended and every event was taken."""

    def metrics(self) -> bytes:
        """msgpack of ``oxidip._boundary.ReceiverMetrics``: every counter, read without
        stopping the associations. RuntimeError before ``start``."""

    def check_storage(self) -> None:
        """Creates and writes a file where every instance starts (the storage root's temp
        directory), then removes it; OSError saying why when that fails. RuntimeError before
        ``start``."""

    @property
    def queued_events(self) -> int:
        """Events waiting to be taken: the backlog when Python falls behind."""

    @property
    def journal_backlog(self) -> int:
        """Journal entries of this receiver not yet registered (0 before start)."""

    def get(
        self,
        host: str,
        port: int,
        called_aet: str,
        model: str,
        identifier: bytes,
        identifier_transfer_syntax: str,
        sop_classes: list[str],
        transfer_syntaxes: list[str],
        timeout: float,
        idle_timeout: float,
    ) -> Retrieval:
        """Starts a C-GET (PS3.4 C.4.3) on the information model ``model`` of what
        ``identifier`` (encoded in ``identifier_transfer_syntax``) names, from
        ``host``:``port``, as this receiver (its AE title), on the receiver's runtime. It
        proposes a storage context with the SCP role (PS3.7 D.3.3.4) for each of
        ``sop_classes`` (at most 127, else ValueError) with ``transfer_syntaxes``: the
        instances come back on the same association and are stored and reported (events) like
        received ones, with the peer's AE title as calling AE. ``timeout`` seconds bound
        connecting and each write, ``idle_timeout`` each wait for the peer once asked.
        OSError saying why when there is no association that can carry it: refused, or no
        storage context accepted with us as SCP (the peer could send nothing). RuntimeError
        before ``start``."""

@final
class RetrieveResult:
    """How a C-MOVE or C-GET ended: its final response (``Retrieval.result``)."""

    #: The final status (0 success, B000 some sub-operations failed, ...).
    status: int
    #: Its ErrorComment, "" without one.
    comment: str
    #: The final sub-operation counts, None when the peer left one out.
    completed: int | None
    failed: int | None
    warning: int | None
    #: The final response's identifier (the Failed SOP Instance UID List), when it has one.
    identifier: bytes | None

@final
class RetrieveProgress:
    """A pending response of a C-MOVE or C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4)."""

    #: FF00, or FF01 (a C-GET with instances in SOP classes not accepted).
    status: int
    #: The sub-operation counts, None when the peer left one out.
    remaining: int | None
    completed: int | None
    failed: int | None
    warning: int | None

@final
class Retrieval:
    """A C-MOVE or C-GET in progress on an association of its own (released at its end),
    run by the Rust core; Python watches it with ``next_progress``. Dropped before its end,
    it is cancelled (C-CANCEL-RQ)."""

    def next_progress(self, timeout: float) -> RetrieveProgress | None:
        """The next pending response, waiting up to ``timeout`` seconds (GIL released); None
        when none came meanwhile or the operation has ended (see ``result`` and ``error``)
        and every pending response was taken."""

    def cancel(self) -> None:
        """Sends a C-CANCEL-RQ (PS3.7 §9.3.2.3) at once, even while the peer is silent; the
        responses already on their way are still read, then the final one (usually Cancel,
        FE00, with the counts so far). Once only; nothing after the end."""

    def abort(self) -> None:
        """Sends an A-ABORT at once, even in the middle of a sub-operation (a C-GET's
        instance then being received is not stored): for a peer that ignores the cancel.
        ``error`` then says so."""

    @property
    def result(self) -> RetrieveResult | None:
        """The final response once the operation has ended with one, else None."""

    @property
    def error(self) -> str | None:
        """Why the operation ended without a final response, in words (aborted, idle
        timeout, transport or protocol failure), once it has; else None."""

    @property
    def instances_received(self) -> int:
        """C-GET: the instances stored from this association so far, counted at each
        pending response and at the end; 0 for a C-MOVE."""

@final
class FindResult:
    """What a C-FIND found (``find``)."""

    #: The final status (0 success, FE00 cancelled, Axxx/Cxxx failures).
    status: int
    #: Its ErrorComment, "" without one.
    comment: str
    #: The identifier of every match, in order, encoded in the transfer syntax of the query.
    matches: list[bytes]

def find(
    host: str,
    port: int,
    calling_aet: str,
    called_aet: str,
    model: str,
    identifier: bytes,
    transfer_syntax: str,
    timeout: float,
) -> FindResult:
    """C-FIND of ``identifier`` (encoded in ``transfer_syntax``, the only one proposed) on the
    information model ``model`` at ``host``:``port``: every match, then the final status.
    Every wait bounded by ``timeout`` seconds. OSError when the association or the operation
    fails."""

def move(
    host: str,
    port: int,
    calling_aet: str,
    called_aet: str,
    model: str,
    identifier: bytes,
    transfer_syntax: str,
    move_destination: str,
    timeout: float,
    idle_timeout: float,
) -> Retrieval:
    """Starts a C-MOVE (PS3.4 C.4.2) on the information model ``model`` at ``host``:``port``
    of what ``identifier`` (encoded in ``transfer_syntax``, the only one proposed) names:
    the peer sends the instances to the AE ``move_destination`` on associations of its own.
    It runs on a runtime of the module's. ``timeout`` seconds bound connecting and each
    write, ``idle_timeout`` each wait for the peer once asked (a peer silent longer is
    aborted). OSError saying why when there is no association that can carry it."""

def echo(host: str, port: int, calling_aet: str, called_aet: str, timeout: float) -> int:
    """C-ECHO on a new association with ``host``:``port``, released after: the status (0 =
    success). OSError saying why when there was no answer: refused, rejected (permanent or
    transient, and why), aborted, timed out (every wait bounded by ``timeout`` seconds)."""

@final
class Forwarder:
    """The forwarding engine: each job is sent on one association of its own, on a runtime
    the engine owns, its data sets streamed from their files byte for byte as stored;
    outcomes come back as they happen (see ``rust/forward/`` and
    ``oxidip._boundary.ForwardOutcome``)."""

    def __new__(cls, config: bytes) -> Forwarder:
        """``config``: msgpack of ``oxidip._boundary.ForwarderConfig``. ValueError when a
        value is unusable (timeout not > 0, no association allowed)."""

    def submit(self, jobs: bytes) -> None:
        """Starts the jobs (msgpack of ``list[oxidip._boundary.ForwardJob]``) and returns at
        once; beyond ``max_associations`` they wait for room. After ``stop`` each ends at
        once (``JobEnded`` cancelled). ValueError when ``jobs`` does not decode."""

    def next_outcomes(self, max_outcomes: int, timeout: float) -> bytes:
        """msgpack of ``list[oxidip._boundary.ForwardOutcome]``: waits up to ``timeout``
        seconds (GIL released) for a first outcome, then takes those already there, up to
        ``max_outcomes``; an empty list on timeout."""

    def cancel(self, job_ids: list[int]) -> None:
        """A-ABORT the associations of these jobs, even in the middle of an item; each ends
        with ``JobEnded`` cancelled. Ids of jobs not running are ignored."""

    def stop(self, timeout: float) -> None:
        """No new item begins (jobs waiting for an association end at once); the items
        being sent get ``timeout`` seconds to finish, their associations then released;
        the rest are aborted. Returns (GIL released) once every job has ended: each one's
        ``JobEnded`` is among the outcomes still to take."""

    @property
    def running(self) -> int:
        """Jobs submitted whose ``JobEnded`` is not yet among the outcomes."""

# The receiver's hot-path steps, one call each: for the micro-benchmarks (bench/micro/) and for
# tests that hold them against pydicom.

def decode_pdus(stream: bytes, max_pdata_len: int) -> int:
    """Decodes every PDU of a received byte stream as the receiver does (``max_pdata_len``:
    our announced maximum), taking out each PDV of a P-DATA-TF as the handler does; returns
    how many PDUs. ValueError on a codec error or a stream ending inside a PDU."""

@final
class ExtractedAttributes:
    """Attributes extracted from a data set (``extract_attributes``), kept in Rust."""

    def to_msgpack(self) -> bytes:
        """msgpack of ``oxidip._boundary.Attributes``."""

def extract_attributes(dataset: bytes, transfer_syntax: str) -> ExtractedAttributes:
    """Extracts the attributes of a data set (no file meta) encoded in ``transfer_syntax``,
    walking it whole as the receiver does. ValueError when the transfer syntax is unknown or
    the data set is malformed."""

@final
class PathTemplate:
    """A parsed path template (``OXIDIP_PATH_TEMPLATE``)."""

    def __new__(cls, template: str) -> PathTemplate:
        """ValueError with the reason when the template is invalid."""

    def render(self, attributes: ExtractedAttributes, calling_aet: str, called_aet: str) -> str:
        """The relative path of an instance with these attributes."""
