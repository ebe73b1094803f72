"""Typed stub of the Rust extension ``oxidip._core`` (see ``rust/python.rs``).

Data crosses the boundary as msgpack encoded by msgspec (configuration, in) and by serde
(event batches, out); ``oxidip._boundary`` holds the matching msgspec structs.
"""

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

def orphan_journals(files_root: str) -> list[str]:
    """Journal segments left by oxidip processes of this host that no longer run: each line
    is the path (relative to ``files_root``) of an instance that was acknowledged, maybe not
    registered. Register them, then delete the segment."""

def read_instance(path: str) -> bytes:
    """msgpack of ``oxidip._boundary.StoredInstance`` for a stored Part 10 file. Raises
    ValueError when the file is not a Part 10 file oxidip can read."""

def send_load(options: bytes) -> bytes:
    """Runs the load generator: ``options`` is msgpack of ``oxidip._boundary.LoadOptions``,
    the result msgpack of ``LoadReport``. Blocks (without the GIL) until every association
    has ended. Raises ValueError on invalid options."""

class Receiver:
    """The Storage SCP. One instance serves one listening socket."""

    def __init__(self, config: bytes) -> None:
        """``config``: msgpack of ``oxidip._boundary.CoreConfig``. Raises ValueError when a
        value is out of range (the Python layer validates first, naming the variable)."""

    def start(self) -> int:
        """Opens storage, binds and starts serving; returns the bound TCP port (useful with
        port 0). Raises OSError when the port cannot be bound or storage is unusable."""

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

    @property
    def queued_events(self) -> int:
        """Events waiting to be taken: the backlog when Python falls behind."""

# The receiver's hot-path steps, one call each: for the micro-benchmarks (bench/micro/) and for
# tests that hold them against pydicom.

def decode_pdus(stream: bytes, max_pdata_len: int) -> int:
    """Decodes every PDU of a received byte stream as the receiver does (``max_pdata_len``:
    our announced maximum); returns how many. ValueError on a codec error or a stream ending
    inside a PDU."""

class ExtractedAttributes:
    """Attributes extracted from a data set (``extract_attributes``), kept in Rust."""

    def to_msgpack(self) -> bytes:
        """msgpack of ``oxidip._boundary.Attributes``."""

def extract_attributes(dataset: bytes, transfer_syntax: str) -> ExtractedAttributes:
    """Extracts the attributes of a data set (no file meta) encoded in ``transfer_syntax``,
    walking it whole as the receiver does. ValueError when the transfer syntax is unknown or
    the data set is malformed."""

class PathTemplate:
    """A parsed path template (``OXIDIP_PATH_TEMPLATE``)."""

    def __init__(self, template: str) -> None:
        """ValueError with the reason when the template is invalid."""

    def render(self, attributes: ExtractedAttributes, calling_aet: str, called_aet: str) -> str:
        """The relative path of an instance with these attributes."""
