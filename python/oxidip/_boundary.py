"""msgspec mirrors of the serde types that cross the Rust boundary.

``CoreConfig`` goes in (``msgspec.msgpack.encode``, then ``_core.Receiver(bytes)``); event
batches come out as msgpack of ``list[Event]``, internally tagged by ``"kind"``
(``#[serde(tag = "kind")]`` on the Rust side). Field names and types here must match the Rust
structs exactly: they are the wire format.
"""

import enum
from typing import TypeAlias

import msgspec

__all__ = [
    "AckMode",
    "AssociationClosed",
    "AssociationOutcome",
    "Attributes",
    "ConnectionRefused",
    "ContextsRefused",
    "CoreConfig",
    "DeliveryResult",
    "DuplicatesPolicy",
    "Event",
    "ForwardDestination",
    "ForwardItem",
    "ForwardJob",
    "ForwardOutcome",
    "ForwarderConfig",
    "FsyncPolicy",
    "Histogram",
    "InstanceFailed",
    "InstanceStored",
    "ItemOutcome",
    "JobEndKind",
    "JobEnded",
    "LoadOptions",
    "LoadReport",
    "ReceiverMetrics",
    "RefusedContext",
    "ServerWarning",
    "StoredDataSet",
    "StoredFile",
    "TlsListener",
]


class FsyncPolicy(enum.StrEnum):
    """What is synced before success is answered (``OXIDIP_FSYNC``,
    ``storage::writer::FsyncPolicy``)."""

    NONE = "none"
    #: The file.
    FILE = "file"
    #: The file, then its directory after the rename.
    FILE_AND_DIRECTORY = "file-and-directory"


class DuplicatesPolicy(enum.StrEnum):
    """What happens to an instance whose path already holds a file (``OXIDIP_DUPLICATES``,
    ``storage::writer::DuplicatePolicy``)."""

    OVERWRITE = "overwrite"
    #: The first file stays; the instance is answered success.
    KEEP_FIRST = "keep-first"
    #: The first file stays; the instance is refused (0111).
    REJECT = "reject"


class AckMode(enum.StrEnum):
    """When success is answered (``OXIDIP_ACK``)."""

    #: Once the file is in place (and journaled); registration follows.
    STORED = "stored"
    #: Once it is also registered in the database.
    REGISTERED = "registered"


class AssociationOutcome(enum.StrEnum):
    """How an association ended (``AssociationClosed.outcome``, ``server::handler::End``)."""

    RELEASED = "released"
    ABORTED_BY_PEER = "aborted-by-peer"
    #: We aborted (a protocol error).
    ABORTED = "aborted"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    CONNECTION_LOST = "connection-lost"
    SHUTDOWN = "shutdown"


class TlsListener(msgspec.Struct, frozen=True):
    """The TLS listener (``server::config::TlsListenerConfig``): PS3.15 annex B."""

    port: int
    #: PEM files: our certificate chain (leaf first) and its private key.
    cert: str
    key: str
    #: PEM CA certificates a client certificate must chain to (mutual TLS); None: none asked.
    ca: str | None


class CoreConfig(msgspec.Struct, frozen=True):
    """Everything the Rust receiver needs; built by ``oxidip.config.Config.core``."""

    host: str
    #: The plain TCP listener's port, unless ``plain_listener`` is false.
    port: int
    plain_listener: bool
    tls: TlsListener | None
    aet: str
    enforce_called_aet: bool
    allowed_calling_aets: list[str]
    max_pdu_length: int
    strict: bool
    promiscuous: bool
    uncompressed_only: bool
    max_associations: int
    files_root: str
    path_template: str
    fsync: FsyncPolicy
    duplicates: DuplicatesPolicy
    required_attributes: list[str]
    #: Bounds on a deflated data set: inflated MiB, and inflated bytes per deflated byte.
    inflate_max_mib: int
    inflate_max_ratio: int
    #: Seconds.
    artim_timeout: float
    #: Seconds; 0 means no idle timeout.
    idle_timeout: float
    #: Seconds one write may wait for the peer to read.
    write_timeout: float
    event_queue_size: int
    ack: AckMode
    #: Permission bits of stored files and of the directories created for them.
    file_mode: int
    dir_mode: int
    #: The gid stored files and directories get (through setgid directories); None: the
    #: process's group.
    group: int | None
    #: The id of this process (``Receiver.process_id``, which sets it), written in its
    #: journal. Named as in ``server::config``, like every field here.
    node: str = ""


class Attributes(msgspec.Struct, gc=False):
    """The attributes extracted from every stored instance (``rust/dicom/attributes.rs``),
    as decoded text with padding trimmed; ``None`` when absent from the dataset.

    The events of this module that hold nothing but text, numbers and other such structs are
    ``gc=False``: they cannot be part of a reference cycle, and tens of thousands of them a
    second would otherwise set off the cyclic collector over and over."""

    SpecificCharacterSet: str | None = None
    SOPClassUID: str | None = None
    SOPInstanceUID: str | None = None
    StudyDate: str | None = None
    StudyTime: str | None = None
    AccessionNumber: str | None = None
    Modality: str | None = None
    StudyDescription: str | None = None
    SeriesDescription: str | None = None
    PatientName: str | None = None
    PatientID: str | None = None
    PatientBirthDate: str | None = None
    PatientSex: str | None = None
    PatientAge: str | None = None
    ProtocolName: str | None = None
    StudyInstanceUID: str | None = None
    SeriesInstanceUID: str | None = None
    SeriesNumber: str | None = None
    InstanceNumber: str | None = None
    NumberOfSeriesRelatedInstances: str | None = None


class InstanceStored(msgspec.Struct, gc=False, tag_field="kind", tag="instance"):
    """An instance is on disk at its final path and was answered 0000."""

    association_id: int
    #: Absolute final path of the file.
    path: str
    #: Size of the file in bytes.
    size: int
    attributes: Attributes
    calling_aet: str
    called_aet: str
    #: "ip:port" of the sender.
    peer: str
    #: Transfer syntax UID the dataset was received (and stored) in.
    transfer_syntax: str
    #: Unix seconds when the C-STORE-RQ command arrived.
    received_at: float
    #: Unix seconds when the file was in place.
    stored_at: float
    #: A file was already at the path (overwritten or kept, per the duplicates policy).
    duplicate: bool
    #: Its journal entry: acknowledge it (``Receiver.acknowledge``) once registered. Instances
    #: read back from storage (journal replay, reconcile) have none.
    journal_seq: int | None = None


class InstanceFailed(msgspec.Struct, gc=False, tag_field="kind", tag="failure"):
    """A C-STORE answered with a non-success status."""

    association_id: int
    calling_aet: str
    peer: str
    sop_class_uid: str
    sop_instance_uid: str
    #: The DIMSE status sent, e.g. 0xA700.
    status: int
    #: The ErrorComment sent with it.
    comment: str


class AssociationClosed(msgspec.Struct, gc=False, tag_field="kind", tag="association"):
    """An association (or a connection that never became one) has ended."""

    association_id: int
    calling_aet: str
    called_aet: str
    peer: str
    #: Unix seconds when the connection was accepted.
    started_at: float
    #: Seconds.
    duration: float
    instances_stored: int
    instances_failed: int
    bytes_received: int
    outcome: AssociationOutcome
    #: Human readable reason; "" when released normally.
    detail: str
    #: Came on the TLS listener.
    tls: bool = False
    #: Subject of the peer's certificate (mutual TLS), e.g. "CN=modality, O=Hospital"; "" if
    #: none.
    peer_certificate_subject: str = ""


class RefusedContext(msgspec.Struct):
    """A proposed presentation context that was not accepted."""

    id: int
    abstract_syntax: str
    #: The transfer syntaxes proposed with it.
    transfer_syntaxes: list[str]
    #: The result sent (PS3.8 table 9-18) in words, e.g. "abstract syntax not supported".
    reason: str


class ContextsRefused(msgspec.Struct, tag_field="kind", tag="contexts-refused"):
    """An association was accepted with some of its proposed presentation contexts refused
    (one event per association, once it is established)."""

    association_id: int
    calling_aet: str
    called_aet: str
    peer: str
    #: How many contexts were accepted; 0 means the association can do nothing.
    accepted: int
    refused: list[RefusedContext]


class ConnectionRefused(msgspec.Struct, tag_field="kind", tag="refused"):
    """A connection refused before it became an association (A-ASSOCIATE-RJ, or closed
    without one) because of a limit of the server."""

    #: "ip:port" of the peer.
    peer: str
    #: From its A-ASSOCIATE-RQ; "" when none was read.
    calling_aet: str
    called_aet: str
    #: "over-limit" (OXIDIP_MAX_ASSOCIATIONS) | "open-files" (RLIMIT_NOFILE), the labels of
    #: ``ReceiverMetrics.associations_refused``
    reason: str
    detail: str


class ServerWarning(msgspec.Struct, tag_field="kind", tag="warning"):
    """Something the operator must know about the server itself (e.g. the open-files limit)."""

    message: str
    detail: str


Event: TypeAlias = (
    InstanceStored
    | InstanceFailed
    | AssociationClosed
    | ContextsRefused
    | ConnectionRefused
    | ServerWarning
)


class Histogram(msgspec.Struct, frozen=True):
    """Fixed-bucket histogram (``server::metrics::HistogramSnapshot``)."""

    #: Upper bounds in seconds, +Inf left out.
    bounds: list[float]
    #: Observations per bucket, not cumulative; one more than ``bounds`` (the +Inf bucket).
    counts: list[int]
    #: Seconds.
    sum: float


class ReceiverMetrics(msgspec.Struct, frozen=True):
    """The receiver's counters at one moment (``_core.Receiver.metrics``,
    ``server::metrics::MetricsSnapshot``)."""

    #: The listener accepts connections.
    listening: bool
    #: Associations being served.
    associations_open: int
    #: Connections served as associations since start (refused at negotiation included;
    #: over the association limit they are turned away before, see associations_refused).
    associations_total: int
    #: Ended associations by outcome (``AssociationClosed.outcome``; "other" for new ones).
    associations_closed: dict[str, int]
    #: Refused associations by reason: "over-limit", "open-files", "calling-aet", "called-aet",
    #: "application-context", "protocol-version", "other".
    associations_refused: dict[str, int]
    instances_stored: int
    #: Instances answered with a failure, by status in hex ("A700").
    instances_failed: dict[str, int]
    #: Data set bytes received.
    bytes_received: int
    #: Seconds from a C-STORE-RQ's command to its response, whatever the status.
    store_latency: Histogram
    #: Events not yet taken by Python.
    event_queue_backlog: int
    #: Journaled instances not yet registered.
    journal_backlog: int


class StoredFile(msgspec.Struct, frozen=True):
    """A stored Part 10 file as read back from disk (``_core.read_instance``,
    ``storage::read_back::StoredInstance``): for journal replay after a crash and for
    ``oxidip reconcile``. Not the event of its storing, ``InstanceStored``."""

    path: str
    size: int
    attributes: Attributes
    transfer_syntax: str
    #: Source Application Entity Title (0002,0016): the calling AE that sent it.
    source_aet: str
    media_storage_sop_class_uid: str
    media_storage_sop_instance_uid: str
    #: Unix seconds.
    modified_at: float


class StoredDataSet(msgspec.Struct, frozen=True):
    """A stored Part 10 file as sending it on needs it (``_core.read_stored_for_sending``):
    the UIDs of its C-STORE request, checked against its data set, and the byte range of
    its data set, streamed from the file as it is."""

    #: (0002,0002) Media Storage SOP Class UID, equal to the data set's SOP Class UID.
    sop_class_uid: str
    #: (0002,0003) Media Storage SOP Instance UID, equal to the data set's SOP Instance UID.
    sop_instance_uid: str
    #: (0002,0010) Transfer Syntax UID.
    transfer_syntax_uid: str
    #: Offset of the data set in the file: just past the file meta group.
    offset: int
    #: Length of the data set: the rest of the file.
    len: int


class LoadOptions(msgspec.Struct, frozen=True):
    """What ``_core.send_load`` sends (``scu::load::LoadOptions``)."""

    #: "host:port".
    addr: str
    calling_aet: str
    called_aet: str
    #: Concurrent associations, each one series.
    associations: int
    #: Instances in all, spread evenly over the associations.
    instances: int
    #: Approximate data set size in bytes ("sc", "multiframe"; "ct" is always 512x512).
    size: int
    #: Explicit or implicit VR little endian.
    transfer_syntax: str
    #: Our maximum PDU length (0 = unlimited).
    max_pdu_length: int
    #: Seconds to wait for the peer at each step.
    timeout: float = 30.0
    #: "sc" (Secondary Capture, 8-bit, sized), "ct" (CT 512x512 16-bit) or "multiframe"
    #: (512x512 16-bit frames, as many as the size holds).
    image: str = "sc"
    #: Associations opened before the load and held idle until it ends.
    idle_associations: int = 0
    #: Seconds after which no more instances are sent (0 = none).
    deadline: float = 0.0
    #: DICOM over TLS: PEM CA file the receiver's certificate must chain to; None: plain TCP.
    tls_ca: str | None = None
    #: With ``tls_ca``: our client certificate chain and key (PEM), for mutual TLS.
    tls_cert: str | None = None
    tls_key: str | None = None


class LoadReport(msgspec.Struct, frozen=True):
    """What ``_core.send_load`` returns (``scu::load::LoadReport``)."""

    #: Instances answered with success or a warning.
    instances: int
    #: Instances not stored: a failure status, or never answered.
    failures: int
    #: Failure status -> instances answered with it.
    statuses: dict[int, int]
    #: Association-level errors (rejection, abort, timeout...).
    errors: list[str]
    #: Idle associations established and held through the load.
    idle_associations: int
    #: Data set bytes of the instances answered.
    bytes: int
    seconds: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_max_ms: float


# --- forwarding (``_core.Forwarder``, ``rust/forward/``) ------------------------------------


class ForwarderConfig(msgspec.Struct, frozen=True):
    """The forwarding engine's settings (``_core.Forwarder(config)``,
    ``forward::job::ForwarderConfig``)."""

    #: Seconds: bound on connecting, on each wait for the peer, on each write.
    timeout: float
    #: The maximum PDU length we announce (0 = unlimited); we send at most the peer's.
    max_pdu_length: int
    #: Associations open at once, all destinations together (a guard: the limits per
    #: destination are the caller's, which submits no more jobs than they allow).
    max_associations: int


class ForwardDestination(msgspec.Struct, frozen=True):
    """Where a job goes."""

    #: The destination's name (routes file), for messages.
    name: str
    called_aet: str
    host: str
    port: int
    calling_aet: str


class ForwardItem(msgspec.Struct, frozen=True, array_like=True):
    """One stored instance to send, as the registry knows it."""

    item_id: int
    #: Absolute path of the stored Part 10 file.
    path: str
    #: What the association proposes, and what the file must still hold.
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


class ForwardJob(msgspec.Struct, frozen=True):
    """Items to send, in order, on one association to one destination. At most 128
    distinct (sop_class_uid, transfer_syntax) pairs: one presentation context each."""

    job_id: int
    destination: ForwardDestination
    items: list[ForwardItem]


class DeliveryResult(enum.StrEnum):
    """What became of an item (PS3.4 C.4.2.1.5 statuses)."""

    #: 0000.
    DELIVERED = "delivered"
    #: 0001 or Bxxx: stored by the destination with a warning (delivered).
    WARNING = "warning"
    #: 0122, 0124, A9xx, Cxxx or another failure status; or never sent: no accepted
    #: presentation context, the file missing, unreadable or changed. Permanent.
    FAILED = "failed"


class ItemOutcome(msgspec.Struct, frozen=True, tag_field="kind", tag="item"):
    """An item's outcome, reported as it happens."""

    job_id: int
    item_id: int
    result: DeliveryResult
    #: The destination's DIMSE status; None when the item failed before being sent.
    status: int | None
    #: The destination's ErrorComment (or, without one, what its status means), or our
    #: words for an item never sent ("file missing: ...").
    comment: str


class JobEndKind(enum.StrEnum):
    """How a job ended."""

    #: Every item has its ItemOutcome; the association was released.
    OK = "ok"
    #: Retry later: connection refused or lost, timeout, A-ABORT, A-ASSOCIATE-RJ transient,
    #: an A7xx answer (that item has no outcome).
    TRANSIENT = "transient"
    #: A-ASSOCIATE-RJ permanent (or contexts that cannot be proposed).
    PERMANENT = "permanent"
    #: ``cancel`` or ``stop``.
    CANCELLED = "cancelled"


class JobEnded(msgspec.Struct, frozen=True, tag_field="kind", tag="job"):
    """A job's end, its last outcome. Items without an ItemOutcome were not delivered."""

    job_id: int
    end: JobEndKind
    #: "" when ok; else what happened, in words.
    error: str


ForwardOutcome: TypeAlias = ItemOutcome | JobEnded
