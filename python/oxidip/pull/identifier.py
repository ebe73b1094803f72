"""Query/retrieve identifiers (PS3.4 C.4) in Explicit VR Little Endian (PS3.5 7.1.2),
written and read here rather than by pydicom: importing pydicom (it imports numpy and its
pixel handlers) cost every ``oxidip pull`` ~0.2 s of its start. ``KEYS`` holds the
attributes a pull asks and reads; any other keyword (a query's own) is looked up in
pydicom's dictionary, imported then, and an identifier with such a key, a value outside
ASCII or a VR other than short text is written by pydicom as before.
"""

import struct
import warnings

__all__ = ["KEYS", "Identifier", "decode", "encode", "entry", "text_of"]

#: keyword -> (tag, VR), as in PS3.6 (checked against pydicom's dictionary by the tests).
KEYS: dict[str, tuple[int, str]] = {
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "SeriesDate": (0x00080021, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "QueryRetrieveLevel": (0x00080052, "CS"),
    "FailedSOPInstanceUIDList": (0x00080058, "UI"),
    "Modality": (0x00080060, "CS"),
    "ModalitiesInStudy": (0x00080061, "CS"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "StudyDescription": (0x00081030, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSex": (0x00100040, "CS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "StudyID": (0x00200010, "SH"),
    "SeriesNumber": (0x00200011, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
    "NumberOfStudyRelatedSeries": (0x00201206, "IS"),
    "NumberOfStudyRelatedInstances": (0x00201208, "IS"),
    "NumberOfSeriesRelatedInstances": (0x00201209, "IS"),
}
#: Text VRs with a 2-byte length (PS3.5 table 7.1-2): what ``encode`` writes itself.
_SHORT_TEXT = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI"}
)
#: VRs with 2 reserved bytes and a 4-byte length (PS3.5 table 7.1-1).
_LONG = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

#: An identifier read: tag -> its value's bytes as sent (sequences skipped).
Identifier = dict[int, bytes]


def entry(keyword: str) -> tuple[int, str] | None:
    """(tag, VR) of a keyword, None when it is none."""
    known = KEYS.get(keyword)
    if known is not None:
        return known
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return None if tag is None else (int(tag), dictionary_VR(tag))


def encode(keys: dict[str, str]) -> bytes:
    """The identifier of ``keys`` (keyword -> value, "" asks for the attribute back).
    Values go as given: wildcards and ranges are not the encoder's to judge. ValueError for
    a keyword that is none."""
    elements = []
    for keyword, value in keys.items():
        found = entry(keyword)
        if found is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        tag, vr = found
        if keyword not in KEYS or vr not in _SHORT_TEXT or not value.isascii():
            return _encode_by_pydicom(keys)
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        if len(raw) > 0xFFFF:
            return _encode_by_pydicom(keys)
        elements.append(
            (tag, struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw)
        )
    return b"".join(element for _, element in sorted(elements))


def _encode_by_pydicom(keys: dict[str, str]) -> bytes:
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a wildcard is no valid UI, a range no valid DA
        for keyword, value in keys.items():
            tag, vr = entry(keyword) or (0, "")
            ds.add_new(tag, vr, value or None)
        try:
            write_dataset(fp, ds)
        except Exception as error:  # pydicom raises what its encoders raise
            raise ValueError(
                f"pydicom could not encode the identifier {keys!r}: {error}"
            ) from error
    return fp.getvalue()


def decode(data: bytes) -> Identifier:
    """The top-level elements of an identifier; ValueError when it is cut short."""
    found: Identifier = {}
    _read(data, 0, found, None)
    return found


def _read(data: bytes, pos: int, found: Identifier | None, until: int | None) -> int:
    """Reads elements from ``pos`` (into ``found`` when given) to the end, or past the
    delimiter ``until``; returns the position after."""
    while pos < len(data):
        if len(data) - pos < 8:
            raise ValueError(f"identifier cut short at byte {pos}")
        group, element = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | element
        if group == 0xFFFE:  # item and delimiters: no VR, a 4-byte length
            (length,) = struct.unpack_from("<I", data, pos + 4)
            pos += 8
            if tag == until:
                return pos
            if tag == _ITEM:
                pos = _read(data, pos, None, _ITEM_END) if length == _UNDEFINED else pos + length
            continue
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG:
            if len(data) - pos < 12:
                raise ValueError(f"identifier cut short at byte {pos}")
            (length,) = struct.unpack_from("<I", data, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        if length == _UNDEFINED:  # a sequence (or UN) of undefined length: skipped
            pos = _read(data, pos, None, _SEQUENCE_END)
            continue
        if pos + length > len(data):
            raise ValueError(f"identifier cut short in ({group:04X},{element:04X})")
        if found is not None and vr != b"SQ":
            found[tag] = data[pos : pos + length]
        pos += length
    if until is not None:
        raise ValueError("identifier cut short in a sequence")
    return pos


def text_of(identifier: Identifier, keyword: str) -> str:
    """An attribute's text as sent ("" when absent or empty), multiple values joined with
    a backslash as sent, never converted (a garbage value is reported, not raised)."""
    found = entry(keyword)
    value = identifier.get(found[0]) if found is not None else None
    return "" if not value else value.decode("utf-8", errors="replace").strip(" \x00")
