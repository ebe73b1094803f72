"""msgspec mirrors of the serde types that cross the Rust boundary.

``CoreConfig`` goes in (``msgspec.msgpack.encode``, then ``_core.Receiver(bytes)``); event
batches come out as msgpack of ``list[Event]``, internally tagged by ``"kind"``
(``#[serde(tag = "kind")]`` on the Rust side). Field names and types here must match the Rust
structs exactly: they are the wire format.
"""

from typing import TypeAlias

import msgspec

__all__ = [
    "AssociationClosed",
    "Attributes",
    "CoreConfig",
    "Event",
    "InstanceFailed",
    "InstanceStored",
    "LoadOptions",
    "LoadReport",
]


class CoreConfig(msgspec.Struct, frozen=True):
    """Everything the Rust receiver needs; built by ``oxidip.config.Config.core``."""

    host: str
    port: int
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
    #: "none" | "file" | "file-and-directory"
    fsync: str
    #: "overwrite" | "keep-first" | "reject"
    duplicates: str
    required_attributes: list[str]
    #: Bounds on a deflated data set: inflated MiB, and inflated bytes per deflated byte.
    inflate_max_mib: int
    inflate_max_ratio: int
    #: Seconds.
    artim_timeout: float
    #: Seconds; 0 means no idle timeout.
    idle_timeout: float
    event_queue_size: int
    #: "stored" | "registered"
    ack: str


class Attributes(msgspec.Struct):
    """The attributes extracted from every stored instance (``rust/dicom/attributes.rs``),
    as decoded text with padding trimmed; ``None`` when absent from the dataset."""

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


class InstanceStored(msgspec.Struct, tag_field="kind", tag="instance"):
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


class InstanceFailed(msgspec.Struct, tag_field="kind", tag="failure"):
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


class AssociationClosed(msgspec.Struct, tag_field="kind", tag="association"):
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
    #: "released" | "aborted-by-peer" | "aborted" | "rejected" | "timeout"
    #: | "connection-lost" | "shutdown"
    outcome: str
    #: Human readable reason; "" when released normally.
    detail: str


Event: TypeAlias = InstanceStored | InstanceFailed | AssociationClosed


class StoredInstance(msgspec.Struct, frozen=True):
    """A stored Part 10 file read back (``_core.read_instance``): for journal replay after a
    crash and for ``oxidip reconcile``."""

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
