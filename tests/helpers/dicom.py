"""DICOM side of the tests: generating instances, encoding them, reading back stored Part 10
files and computing what the receiver should have extracted and where it should have stored
each instance."""

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.charset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid
from pynetdicom.dsutils import encode

from tests.helpers.pdu import (
    EXPLICIT_LE,
    SECONDARY_CAPTURE,
)

#: The extracted attributes (``rust/dicom/attributes.rs``), in tag order.
EXTRACTED_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "ProtocolName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "NumberOfSeriesRelatedInstances",
)

#: A template with no formatting and no hash: the path of an instance is known exactly.
SIMPLE_TEMPLATE = "{CallingAET}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"

TEMP_DIR_NAME = ".oxidip-tmp"

# Value representations whose text is decoded per Specific Character Set (PS3.5 §6.1.2.3).
_CHARSET_VRS = {"SH", "LO", "PN", "ST", "LT", "UT", "UC"}

# Character sets the issue requires to be decoded exactly: the default repertoire, the
# single-byte ISO_IR sets (without code extensions) and UTF-8. Others (ISO 2022 with code
# extensions, GB18030, GBK) "must not break the instance", nothing more.
EXACT_CHARSETS = {
    "",
    "ISO_IR 6",
    "ISO_IR 100",
    "ISO_IR 101",
    "ISO_IR 109",
    "ISO_IR 110",
    "ISO_IR 144",
    "ISO_IR 127",
    "ISO_IR 126",
    "ISO_IR 138",
    "ISO_IR 148",
    "ISO_IR 203",
    "ISO_IR 166",
    "ISO_IR 13",
    "ISO_IR 192",
}


# --- generating -----------------------------------------------------------------------------


def make_dataset(
    *,
    sop_class: str = SECONDARY_CAPTURE,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_id: str | None = "PAT001",
    patient_name: str | None = "Doe^Jane",
    instance_number: int | None = 1,
    series_number: int | None = 1,
    pixel_bytes: int = 64,
    **extra: object,
) -> Dataset:
    """A small, valid image instance (8-bit monochrome) with fresh UIDs. ``None`` leaves an
    attribute out; ``extra`` sets more attributes by keyword (``None`` deletes them)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyDate = "20240102"
    ds.StudyTime = "101112"
    ds.AccessionNumber = "ACC42"
    ds.Modality = "OT"
    ds.StudyDescription = "Test study"
    ds.SeriesDescription = "Test series"
    if patient_name is not None:
        ds.PatientName = patient_name
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if series_number is not None:
        ds.SeriesNumber = series_number
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    if pixel_bytes:
        side = max(int(pixel_bytes**0.5), 1)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = side
        ds.Columns = side
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(i % 251 for i in range(side * side))
    for keyword, value in extra.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    # pynetdicom picks the presentation context from the file meta's transfer syntax.
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    return ds


def encode_dataset(ds: Dataset, transfer_syntax: str = EXPLICIT_LE) -> bytes:
    """The dataset as sent on the wire in ``transfer_syntax`` (what pynetdicom sends)."""
    ts = UID(transfer_syntax)
    raw = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    if raw is None:
        raise ValueError(f"pydicom could not encode the dataset in {ts.name}")
    return raw


def explicit_le_element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element (for hand-built datasets)."""
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in {"OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV"}:
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


# --- Part 10 files -------------------------------------------------------------------------


def encode_file_meta(
    *,
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    implementation_class_uid: str = "1.2.826.0.1.3680043.10.1234.98",
    implementation_version: str | None = None,
    source_aet: str | None = None,
) -> bytes:
    """Preamble, ``DICM`` and a File Meta Information group (explicit VR little endian)."""
    body = explicit_le_element(0x0002_0001, "OB", b"\x00\x01")
    body += explicit_le_element(0x0002_0002, "UI", sop_class.encode())
    body += explicit_le_element(0x0002_0003, "UI", sop_instance.encode())
    body += explicit_le_element(0x0002_0010, "UI", transfer_syntax.encode())
    body += explicit_le_element(0x0002_0012, "UI", implementation_class_uid.encode())
    if implementation_version is not None:
        body += explicit_le_element(0x0002_0013, "SH", implementation_version.encode())
    if source_aet is not None:
        body += explicit_le_element(0x0002_0016, "AE", source_aet.encode())
    group_length = explicit_le_element(0x0002_0000, "UL", struct.pack("<I", len(body)))
    return bytes(128) + b"DICM" + group_length + body


def write_part10(path: Path, ds: Dataset, transfer_syntax: str = EXPLICIT_LE) -> bytes:
    """Writes ``ds`` as a Part 10 file; returns the dataset bytes written after the meta."""
    data = encode_dataset(ds, transfer_syntax)
    meta = encode_file_meta(
        sop_class=str(ds.SOPClassUID),
        sop_instance=str(ds.SOPInstanceUID),
        transfer_syntax=transfer_syntax,
    )
    path.write_bytes(meta + data)
    return data


@dataclass
class Part10:
    preamble: bytes
    meta: dict[int, bytes]
    group_length: int
    dataset: bytes

    def text(self, tag: int) -> str | None:
        raw = self.meta.get(tag)
        return None if raw is None else raw.decode("ascii").rstrip("\0 ")


def read_part10(path: Path | str) -> Part10:
    """Splits a Part 10 file by hand (no pydicom): preamble, meta elements (explicit VR LE,
    bounded by the group length), dataset bytes. Asserts the structure."""
    return parse_part10(Path(path).read_bytes(), path)


def parse_part10(data: bytes, path: Path | str = "(bytes)") -> Part10:
    """``read_part10`` of a file's bytes (``path`` names them in assertion messages)."""
    assert len(data) >= 132 + 12, f"{path}: {len(data)} bytes, too short for Part 10"
    assert data[128:132] == b"DICM", f"{path}: no DICM prefix at offset 128"
    group, elem, vr = struct.unpack_from("<HH2s", data, 132)
    assert (group, elem, vr) == (2, 0, b"UL"), f"{path}: meta does not start with (0002,0000) UL"
    (length_field,) = struct.unpack_from("<H", data, 138)
    assert length_field == 4, f"{path}: group length element of length {length_field}"
    (group_length,) = struct.unpack_from("<I", data, 140)
    start = 144
    end = start + group_length
    assert end <= len(data), f"{path}: group length {group_length} runs past the file"
    meta: dict[int, bytes] = {}
    offset = start
    while offset < end:
        group, elem, vr = struct.unpack_from("<HH2s", data, offset)
        assert group == 2, f"{path}: element ({group:04X},{elem:04X}) inside the meta group"
        if vr in {b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"}:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8
        meta[(group << 16) | elem] = data[offset : offset + length]
        offset += length
    assert offset == end, f"{path}: meta elements end at {offset}, group length says {end}"
    return Part10(preamble=data[:128], meta=meta, group_length=group_length, dataset=data[end:])


def source_dataset_bytes(path: Path | str) -> bytes:
    """The dataset bytes of a Part 10 file (after its meta), as the file stores them."""
    from pynetdicom.dsutils import split_dataset

    _, offset = split_dataset(Path(path))
    return Path(path).read_bytes()[offset:]


def check_file_meta(
    stored: Part10,
    *,
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    calling_aet: str,
    implementation_class_uid: str,
    implementation_version: str,
) -> None:
    """Asserts the File Meta Information the receiver must write (PS3.10 §7.1)."""
    assert stored.meta.get(0x0002_0001) == b"\x00\x01", "(0002,0001) must be 00\\01"
    expected = {
        0x0002_0002: sop_class,
        0x0002_0003: sop_instance,
        0x0002_0010: transfer_syntax,
        0x0002_0012: implementation_class_uid,
        0x0002_0013: implementation_version,
        0x0002_0016: calling_aet,
    }
    for tag, value in expected.items():
        got = stored.text(tag)
        assert got == value, f"({tag >> 16:04X},{tag & 0xFFFF:04X}): {got!r} != {value!r}"
    for tag, raw in stored.meta.items():
        if tag in (0x0002_0002, 0x0002_0003, 0x0002_0010, 0x0002_0012):
            assert len(raw) % 2 == 0, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has odd length"
            assert not raw.endswith(b" "), "UIDs are padded with NUL, not space"


# --- the attributes the receiver extracts --------------------------------------------------


def _element_text(ds: Dataset, keyword: str, encodings: list[str]) -> str | None:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    if tag not in ds:
        return None
    elem = ds.get_item(tag)  # raw (undecoded) unless already accessed
    value = elem.value
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        vr = dictionary_VR(tag)
        if vr in _CHARSET_VRS:
            delimiters = {0x5C, 0x5E, 0x3D} if vr == "PN" else {0x5C}
            text = pydicom.charset.decode_bytes(bytes(value), encodings, delimiters)
        else:
            text = bytes(value).decode("latin-1")
    else:  # already converted by pydicom (e.g. SOPClassUID read to select the file)
        if isinstance(value, list | tuple | pydicom.multival.MultiValue):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
    text = text.strip(" \0")
    return text or None


def charset_of(ds: Dataset) -> list[str]:
    elem = ds.get_item(0x0008_0005)
    if elem is None or elem.value is None:
        return []
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return [v.strip(" \0") for v in bytes(value).decode("ascii").split("\\")]
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def expected_attributes(ds: Dataset) -> dict[str, str | None]:
    """What the receiver should extract from ``ds`` (read by pydicom from the sent bytes,
    elements left raw): decoded text per Specific Character Set, padding stripped, None when
    absent or empty."""
    charsets = charset_of(ds)
    encodings = pydicom.charset.convert_encodings(charsets or ["ISO_IR 6"])
    return {kw: _element_text(ds, kw, encodings) for kw in EXTRACTED_KEYWORDS}


def exact_charset(ds: Dataset) -> bool:
    """Whether the issue requires the dataset's text to be decoded exactly."""
    return all(cs in EXACT_CHARSETS for cs in charset_of(ds) or [""])


def attributes_as_dict(attributes: object) -> dict[str, str | None]:
    """An event's ``attributes`` struct as keyword -> value, empty strings as None."""
    return {kw: (getattr(attributes, kw) or None) for kw in EXTRACTED_KEYWORDS}


def compare_attributes(
    got: Mapping[str, str | None], expected: Mapping[str, str | None], *, exact: bool
) -> list[str]:
    """Differences, one line each. With ``exact`` False (charsets the issue does not require),
    values with non-ASCII characters only need to be present."""
    problems = []
    for kw in EXTRACTED_KEYWORDS:
        want, have = expected.get(kw), got.get(kw)
        if not exact and want is not None and not want.isascii():
            if have is None:
                problems.append(f"{kw}: missing (pydicom decodes {want!r})")
            continue
        if want != have:
            problems.append(f"{kw}: got {have!r}, expected {want!r}")
    return problems


# --- storage paths -------------------------------------------------------------------------
#
# A model of the receiver's documented rendering (``rust/storage/path_template.rs`` and
# ``sanitize.rs``), which follows oxidicom so that its paths match oxidicom's byte for byte:
# a value is trimmed (Unicode white space), NULs are dropped, ASCII letters, digits, "." and
# "-" are kept, every run of other characters becomes one "_", and at most 64 bytes are kept;
# a missing or blank value renders as its keyword; a component is at most 255 bytes (keeping
# its end) and never "", "." or "..".

MAX_VALUE_LEN = 64
MAX_COMPONENT_LEN = 255

# Rust's char::is_whitespace (Unicode White_Space), which str::trim uses.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)


def sanitise(value: str) -> str:
    """A value as the receiver puts it into a path ("" when nothing is left)."""
    out: list[str] = []
    replacing = False
    for c in value.strip(_RUST_WHITESPACE).replace("\0", ""):
        if len(out) == MAX_VALUE_LEN:
            break
        if (c.isascii() and c.isalnum()) or c in ".-":
            out.append(c)
            replacing = False
        elif not replacing:
            out.append("_")
            replacing = True
    return "".join(out)


def render_value(keyword: str, attributes: Mapping[str, str | None], width: int = 0) -> str:
    """``{Keyword}`` or ``{Keyword:0N}`` (``width``) for one instance."""
    value = attributes.get(keyword)
    if width and value is not None:
        text = value.strip(_RUST_WHITESPACE)
        if text.isascii() and text.isdigit() and int(text) < 2**32:
            return f"{int(text):0{width}d}"
    rendered = sanitise(value or "")
    if not rendered:
        return keyword
    return rendered.rjust(width, "0") if width else rendered


def safe_component(component: str) -> str:
    raw = component.encode()
    if len(raw) > MAX_COMPONENT_LEN:
        component = raw[len(raw) - MAX_COMPONENT_LEN :].decode("utf-8", "ignore")
    if component in ("", ".", ".."):
        return "_"
    # No component starts with a dot: stored files stay visible and out of .oxidip* dirs.
    return "_" + component[1:] if component.startswith(".") else component


def simple_path(calling_aet: str, attributes: Mapping[str, str | None]) -> str:
    """The relative path under ``SIMPLE_TEMPLATE``."""
    attrs = {**attributes, "CallingAET": calling_aet}
    return "/".join(
        safe_component(c)
        for c in [
            render_value("CallingAET", attrs),
            render_value("StudyInstanceUID", attrs),
            render_value("SeriesInstanceUID", attrs),
            render_value("SOPInstanceUID", attrs) + ".dcm",
        ]
    )


def default_path(calling_aet: str, attributes: Mapping[str, str | None]) -> str:
    """The relative path under the default (oxidicom) template, series hash included."""
    attrs = {**attributes, "CallingAET": calling_aet}

    def join(*keywords: str) -> str:
        return "-".join(render_value(kw, attrs) for kw in keywords)

    series_uid = (attrs.get("SeriesInstanceUID") or "").strip(_RUST_WHITESPACE).replace("\0", "")
    series_hash = hash7(series_uid) if series_uid else "SeriesInstanceUID"
    components = [
        render_value("CallingAET", attrs),
        join("PatientID", "PatientName", "PatientBirthDate"),
        join("StudyDescription", "AccessionNumber", "StudyDate"),
        "-".join(
            [
                render_value("SeriesNumber", attrs, 5),
                render_value("SeriesDescription", attrs),
                series_hash,
            ]
        ),
        "-".join(
            [
                render_value("InstanceNumber", attrs, 4),
                render_value("SOPInstanceUID", attrs) + ".dcm",
            ]
        ),
    ]
    return "/".join(safe_component(c) for c in components)


def hash7(uid: str) -> str:
    """First 7 hex digits of ``format!("{:x}", seahash::hash(uid))``."""
    return f"{seahash(uid.encode()):x}"[:7]


_MASK = (1 << 64) - 1


def _diffuse(x: int) -> int:
    x = (x * 0x6EED0E9DA4D94A4F) & _MASK
    a = x >> 32
    b = x >> 60
    x ^= a >> b
    return (x * 0x6EED0E9DA4D94A4F) & _MASK


def seahash(buf: bytes) -> int:
    """SeaHash (the Rust ``seahash`` crate 4.x, its reference implementation)."""
    state = [0x16F11FE89B0D677C, 0xB480A793D8E6C86C, 0x6FE2E5AAF078EBC9, 0x14F994A4C5259381]
    for start in range(0, len(buf), 8):
        n = int.from_bytes(buf[start : start + 8], "little")
        a = _diffuse(state[0] ^ n)
        state = [state[1], state[2], state[3], a]
    return _diffuse(state[0] ^ state[1] ^ state[2] ^ state[3] ^ len(buf))


# --- the storage tree ----------------------------------------------------------------------


def stored_files(root: Path) -> list[Path]:
    """Every regular file under the storage root outside oxidip's own directories (temp
    files, journal, registry), which all start with ``.oxidip``."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith(".oxidip")
    )


def temp_files(root: Path) -> list[Path]:
    tmp = root / TEMP_DIR_NAME
    return sorted(p for p in tmp.rglob("*") if not p.is_dir()) if tmp.is_dir() else []


def assert_inside(root: Path, path: Path | str) -> Path:
    """``path`` resolves to a location strictly inside ``root``; returns it relative."""
    resolved = Path(path).resolve()
    base = root.resolve()
    assert resolved.is_relative_to(base) and resolved != base, f"{path} escapes {root}"
    return resolved.relative_to(base)


def read_raw_dataset(data: bytes, transfer_syntax: str) -> Dataset:
    """Parses dataset bytes (as sent) with pydicom, elements left raw."""
    from io import BytesIO

    from pynetdicom.dsutils import decode

    ts = UID(transfer_syntax)
    return decode(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
