"""The data set a C-STORE carries is walked whole while it streams (PS3.5 §7: element headers,
sequences, items and their delimiters, encapsulated pixel data), not only up to the
attributes the receiver extracts: a data set that ends inside an element or whose lengths do
not add up is refused (C000, with an ErrorComment) and nothing is stored, wherever the fault
is. Well-formed structures of every kind are stored byte for byte.

The UIDs that name an instance and its files (the command's Affected SOP Instance UID, the
data set's Study, Series and SOP Instance UIDs) must be UIDs (PS3.5 §9.1): two different
malformed ones would otherwise map to one file name.
"""

import struct
import zlib

import pydicom
import pytest
from pydicom.uid import generate_uid

from oxidip import InstanceFailed
from tests.helpers import corpus
from tests.helpers.checks import assert_nothing_stored, assert_receiver_works, raw_store
from tests.helpers.dicom import (
    explicit_le_element,
    read_part10,
    simple_path,
    stored_files,
)
from tests.helpers.pdu import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, SECONDARY_CAPTURE
from tests.helpers.receiver import RunningReceiver, of_type
from tests.helpers.senders import chunked_file_sending, scu, status_of

UNDEFINED = 0xFFFF_FFFF
ITEM = 0xFFFE_E000
ITEM_DELIMITATION = 0xFFFE_E00D
SEQUENCE_DELIMITATION = 0xFFFE_E0DD
PIXEL_DATA = 0x7FE0_0010
#: Request Attributes Sequence (0040,0275): a sequence that sorts after every extracted tag.
LATE_SEQUENCE = 0x0040_0275

_LONG_LENGTH_VRS = {"OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV"}


class Encoder:
    """Element headers and items in one of the uncompressed transfer syntaxes."""

    def __init__(self, transfer_syntax: str) -> None:
        self.implicit = transfer_syntax == IMPLICIT_LE
        self.order = ">" if transfer_syntax == EXPLICIT_BE else "<"

    def tag(self, tag: int) -> bytes:
        return struct.pack(f"{self.order}HH", tag >> 16, tag & 0xFFFF)

    def header(self, tag: int, vr: str, length: int) -> bytes:
        if self.implicit:
            return self.tag(tag) + struct.pack(f"{self.order}I", length)
        if vr in _LONG_LENGTH_VRS:
            return self.tag(tag) + vr.encode() + struct.pack(f"{self.order}HI", 0, length)
        return self.tag(tag) + vr.encode() + struct.pack(f"{self.order}H", length)

    def element(self, tag: int, vr: str, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr == "UI" else b" "
        return self.header(tag, vr, len(value)) + value

    def item(self, content: bytes, length: int | None = None) -> bytes:
        """An item (PS3.5 §7.5); ``length`` overrides its real length (UNDEFINED too)."""
        real = len(content) if length is None else length
        return self.tag(ITEM) + struct.pack(f"{self.order}I", real) + content

    def delimiter(self, tag: int) -> bytes:
        return self.tag(tag) + struct.pack(f"{self.order}I", 0)

    def identifying(self, sop_instance: str) -> bytes:
        """The attributes an instance needs, in tag order."""
        return (
            self.element(0x0008_0016, "UI", SECONDARY_CAPTURE.encode())
            + self.element(0x0008_0018, "UI", sop_instance.encode())
            + self.element(0x0010_0020, "LO", b"PAT")
            + self.element(0x0020_000D, "UI", b"1.2.3.4")
            + self.element(0x0020_000E, "UI", b"1.2.3.4.5")
        )


def _wire(transfer_syntax: str, dataset: bytes) -> bytes:
    """The data set as sent: raw deflate (PS3.5 §A.5) for the deflated syntax."""
    if transfer_syntax != DEFLATED_LE:
        return dataset
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(dataset) + compressor.flush()


def _encoder(transfer_syntax: str) -> Encoder:
    # The deflated syntax deflates explicit VR little endian.
    return Encoder(EXPLICIT_LE if transfer_syntax == DEFLATED_LE else transfer_syntax)


def _malformed_tails(e: Encoder) -> dict[str, bytes]:
    """What follows the extracted attributes, each malformed in one way."""
    nested = e.element(0x0008_0100, "SH", b"CODE")  # 8 + 4 bytes
    return {
        "pixel data announcing 1 MiB, 1 KiB sent": e.header(PIXEL_DATA, "OB", 1 << 20)
        + bytes(1024),
        "element header cut short": e.element(0x0028_0010, "US", b"\x01\x00") + e.tag(0x0028_0011),
        "undefined-length sequence never delimited": e.header(LATE_SEQUENCE, "SQ", UNDEFINED)
        + e.item(nested),
        "undefined-length item never delimited": e.header(LATE_SEQUENCE, "SQ", UNDEFINED)
        + e.item(nested, UNDEFINED)
        + nested,
        "encapsulated pixel data never delimited": e.header(PIXEL_DATA, "OB", UNDEFINED)
        + e.item(b"")
        + e.item(b"\xff\xd8\xff\xd9"),
        "pixel data fragment longer than what follows": e.header(PIXEL_DATA, "OB", UNDEFINED)
        + e.item(b"")
        + e.item(b"\xff\xd8", 1000),
    }


def _malformed_explicit_tails(e: Encoder) -> dict[str, bytes]:
    """Faults only visible where the VR says "SQ" (explicit VR: implicit VR data sets carry no
    VR, so a defined-length value there is skipped whole, never walked)."""
    nested = e.element(0x0008_0100, "SH", b"CODE")  # 12 bytes
    return {
        "item longer than its sequence": e.header(LATE_SEQUENCE, "SQ", 8 + len(nested))
        + e.item(nested, 100)
        + nested
        + bytes(100),
        "items overrun a defined-length sequence": e.header(
            LATE_SEQUENCE, "SQ", 8 + len(nested) - 4
        )
        + e.item(nested)
        + e.element(PIXEL_DATA, "OB", b"\0\0"),
        "element overruns its defined-length item": e.header(LATE_SEQUENCE, "SQ", 8 + 10)
        + e.item(nested[:10], 10)
        + nested[10:]
        + e.element(PIXEL_DATA, "OB", b"\0\0"),
        "sequence delimiter inside an item": e.header(LATE_SEQUENCE, "SQ", UNDEFINED)
        + e.item(nested + e.delimiter(SEQUENCE_DELIMITATION), UNDEFINED)
        + e.delimiter(ITEM_DELIMITATION)
        + e.delimiter(SEQUENCE_DELIMITATION),
    }


def _well_formed_tail(e: Encoder) -> bytes:
    """Every structure the walk must follow, correctly encoded: defined- and
    undefined-length sequences and items, nested, an empty item, encapsulated pixel data
    with an offset table and two fragments."""
    nested = e.element(0x0008_0100, "SH", b"CODE") + e.element(0x0008_0102, "SH", b"DCM")
    inner = e.header(0x0040_A730, "SQ", UNDEFINED)
    inner += e.item(nested, UNDEFINED) + e.delimiter(ITEM_DELIMITATION)
    inner += e.delimiter(SEQUENCE_DELIMITATION)
    defined_items = e.item(nested + inner) + e.item(b"")
    tail = e.header(0x0040_0275, "SQ", len(defined_items)) + defined_items
    tail += e.header(0x0040_0280, "SQ", UNDEFINED) + e.item(nested, UNDEFINED)
    tail += e.delimiter(ITEM_DELIMITATION) + e.delimiter(SEQUENCE_DELIMITATION)
    tail += e.header(PIXEL_DATA, "OB", UNDEFINED) + e.item(struct.pack("<I", 0))
    tail += e.item(b"\xff\xd8\xff\xe0" * 100) + e.item(b"\xff\xd9\x00\x00")
    tail += e.delimiter(SEQUENCE_DELIMITATION)
    tail += e.element(0xFFFC_FFFC, "OB", bytes(6))  # Data Set Trailing Padding
    return tail


def _refused(rx: RunningReceiver, data: bytes, uid: str, transfer_syntax: str) -> None:
    since = rx.mark()
    status, comment = raw_store(rx, data=data, sop_instance=uid, transfer_syntax=transfer_syntax)
    assert status == 0xC000, (hex(status), comment)
    assert comment, "a failure must carry an ErrorComment"
    events = rx.wait_for(
        lambda evs: any(isinstance(e, InstanceFailed) for e in evs[since:]), what="InstanceFailed"
    )
    (failure,) = of_type(events[since:], InstanceFailed)
    assert failure.status == 0xC000 and failure.sop_instance_uid == uid
    assert_nothing_stored(rx, uid)


SYNTAXES = [IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE]
EXPLICIT_SYNTAXES = [EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE]
MALFORMED = [
    *((fault, ts) for fault in sorted(_malformed_tails(Encoder(EXPLICIT_LE))) for ts in SYNTAXES),
    *(
        (fault, ts)
        for fault in sorted(_malformed_explicit_tails(Encoder(EXPLICIT_LE)))
        for ts in EXPLICIT_SYNTAXES
    ),
]


@pytest.mark.parametrize(("fault", "transfer_syntax"), MALFORMED)
def test_malformed_after_the_extracted_attributes_is_refused(
    receiver: RunningReceiver, fault: str, transfer_syntax: str
) -> None:
    e = _encoder(transfer_syntax)
    uid = generate_uid()
    tails = {**_malformed_tails(e), **_malformed_explicit_tails(e)}
    dataset = e.identifying(uid) + tails[fault]
    _refused(receiver, _wire(transfer_syntax, dataset), uid, transfer_syntax)
    assert_receiver_works(receiver)


def test_malformed_inside_a_sequence_before_the_attributes_is_refused(
    receiver: RunningReceiver,
) -> None:
    """A defined-length sequence early in the data set whose item overruns it: the walk goes
    into defined-length sequences, it does not only skip them."""
    e = Encoder(EXPLICIT_LE)
    uid = generate_uid()
    nested = e.element(0x0008_1150, "UI", b"1.2.3")
    # The item holds one more element than its sequence's length leaves room for; skipping
    # the sequence by its length alone would read that element as a top-level one.
    overflow = e.element(0x0008_1155, "UI", b"1.2.3.4")
    sequence = e.header(0x0008_1115, "SQ", 8 + len(nested))
    dataset = (
        e.element(0x0008_0016, "UI", SECONDARY_CAPTURE.encode())
        + e.element(0x0008_0018, "UI", uid.encode())
        + sequence
        + e.item(nested + overflow)
        + e.element(0x0010_0020, "LO", b"PAT")
        + e.element(0x0020_000D, "UI", b"1.2.3.4")
        + e.element(0x0020_000E, "UI", b"1.2.3.4.5")
    )
    _refused(receiver, dataset, uid, EXPLICIT_LE)


@pytest.mark.parametrize("transfer_syntax", SYNTAXES)
def test_well_formed_structures_are_stored_byte_for_byte(
    receiver: RunningReceiver, transfer_syntax: str
) -> None:
    e = _encoder(transfer_syntax)
    uid = generate_uid()
    sent = _wire(transfer_syntax, e.identifying(uid) + _well_formed_tail(e))
    since = receiver.mark()
    status, comment = raw_store(
        receiver, data=sent, sop_instance=uid, transfer_syntax=transfer_syntax
    )
    assert status == 0x0000, (hex(status), comment)
    (event,) = receiver.wait_stored(1, since=since)
    assert read_part10(event.path).dataset == sent


def test_implicit_vr_items_in_an_explicit_vr_data_set_are_stored(
    receiver: RunningReceiver,
) -> None:
    """Some writers encode the items of (private) sequences in implicit VR inside an
    explicit VR data set; pydicom reads such elements as implicit VR and dcmtk's storescp
    stores them. So does the walk: no VR where one should be means an implicit VR element."""
    e = Encoder(EXPLICIT_LE)
    implicit = Encoder(IMPLICIT_LE)
    uid = generate_uid()
    content = implicit.element(0x0029_1010, "OB", b"CSA header") + implicit.element(
        0x0029_1020, "LO", b"SIEMENS"
    )
    items = e.item(content) + e.item(content)
    tail = e.element(0x0029_0010, "LO", b"SIEMENS CSA HEADER")
    tail += e.header(0x0029_1000, "SQ", len(items)) + items
    tail += e.header(0x0029_1100, "SQ", UNDEFINED) + e.item(content, UNDEFINED)
    tail += e.delimiter(ITEM_DELIMITATION) + e.delimiter(SEQUENCE_DELIMITATION)
    sent = e.identifying(uid) + tail
    since = receiver.mark()
    status, comment = raw_store(receiver, data=sent, sop_instance=uid)
    assert status == 0x0000, (hex(status), comment)
    (event,) = receiver.wait_stored(1, since=since)
    assert read_part10(event.path).dataset == sent


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_truncated_corpus_files_are_refused(receiver: RunningReceiver, name: str) -> None:
    """pydicom's deliberately truncated files (Pixel Data cut short; a sequence cut inside,
    both after the extracted attributes), sent as they are by pynetdicom: C000, nothing
    stored. dcmtk's storescp stores neither either (it aborts the association)."""
    path = corpus.DATA / "test_files" / name
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = scu("TRUNCATED")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate(receiver.host, receiver.port, ae_title="OXIDIP")
    assert assoc.is_established
    try:
        with chunked_file_sending():
            result = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status_of(result) == 0xC000, result
    assert result.ErrorComment.startswith("data set: dataset ends inside"), result.ErrorComment
    assert_nothing_stored(receiver, str(ds.SOPInstanceUID))


# --- UIDs (PS3.5 §9.1) -------------------------------------------------------------------------


def _instance(sop_instance: str, study: str = "1.2.3.4", series: str = "1.2.3.4.5") -> bytes:
    """A minimal data set, built by hand so that malformed UIDs go out as they are."""
    return (
        explicit_le_element(0x0008_0016, "UI", SECONDARY_CAPTURE.encode())
        + explicit_le_element(0x0008_0018, "UI", sop_instance.encode())
        + explicit_le_element(0x0010_0020, "LO", b"PAT")
        + explicit_le_element(0x0020_000D, "UI", study.encode())
        + explicit_le_element(0x0020_000E, "UI", series.encode())
    )


NOT_UIDS = [
    "1.2.3/4",
    "1.2.3\\4",
    "1.2..3",
    ".1.2",
    "1.2.",
    "1.2.3a",
    "1.2 .3",
    "1.2." + "3" * 61,  # 65 characters
]


@pytest.mark.parametrize("uid", NOT_UIDS)
def test_sop_instance_uid_that_is_not_a_uid_is_refused(receiver: RunningReceiver, uid: str) -> None:
    """0117 "Invalid SOP Instance": the SOP Instance UID violates the UID construction rules
    (PS3.7 §9.1.1.1.9)."""
    since = receiver.mark()
    status, comment = raw_store(receiver, data=_instance(uid), sop_instance=uid)
    assert status == 0x0117, (hex(status), comment)
    assert comment and "UID" in comment, comment
    events = receiver.wait_for(
        lambda evs: any(isinstance(e, InstanceFailed) for e in evs[since:]), what="InstanceFailed"
    )
    assert [e.status for e in of_type(events[since:], InstanceFailed)] == [0x0117]
    assert stored_files(receiver.root) == []


def test_two_malformed_uids_never_share_a_file(receiver: RunningReceiver) -> None:
    """``1.2.3/4`` and ``1.2.3\\4`` would both become ``1.2.3_4`` in a file name: neither is
    acknowledged, nothing is stored, nothing replaced."""
    for uid in ("1.2.3/4", "1.2.3\\4"):
        status, comment = raw_store(receiver, data=_instance(uid), sop_instance=uid)
        assert status != 0x0000, f"{uid} acknowledged"
        assert status == 0x0117, (hex(status), comment)
    assert stored_files(receiver.root) == []


@pytest.mark.parametrize("which", ["study", "series"])
def test_study_or_series_uid_that_is_not_a_uid_is_refused(
    receiver: RunningReceiver, which: str
) -> None:
    uid = generate_uid()
    bad = "1.2.3/../4"
    data = _instance(uid, study=bad) if which == "study" else _instance(uid, series=bad)
    status, comment = raw_store(receiver, data=data, sop_instance=uid)
    assert status == 0xC003, (hex(status), comment)
    keyword = "StudyInstanceUID" if which == "study" else "SeriesInstanceUID"
    assert comment and keyword in comment, comment
    assert_nothing_stored(receiver, uid)


def test_uids_with_leading_zeros_are_stored(receiver: RunningReceiver) -> None:
    """Components with a leading zero break PS3.5 §9.1 but are common in the wild and keep
    file names distinct (digits and dots are never rewritten): tolerated."""
    uid, study, series = "1.2.03.4", "1.02.3", "01.2.3.4"
    status, comment = raw_store(
        receiver, data=_instance(uid, study=study, series=series), sop_instance=uid
    )
    assert status == 0x0000, (hex(status), comment)
    (event,) = receiver.wait_stored(1)
    attributes = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": uid}
    assert event.path == str(receiver.root / simple_path("RAWSTORE", attributes))
