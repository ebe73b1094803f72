"""``oxidip.pull.identifier``: identifiers written and read without importing pydicom,
byte for byte what pydicom writes, and read as pydicom reads them."""

import subprocess
import sys

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from oxidip.pull import identifier


def by_pydicom(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_dataset(fp, ds)
    return fp.getvalue()


def test_the_keys_are_pydicoms() -> None:
    for keyword, (tag, vr) in identifier.KEYS.items():
        assert (tag_for_keyword(keyword), dictionary_VR(tag)) == (tag, vr), keyword


@pytest.mark.filterwarnings("ignore::UserWarning")  # wildcards are no valid UI
def test_written_as_pydicom_writes_it() -> None:
    keys = {
        "QueryRetrieveLevel": "SERIES",
        "StudyInstanceUID": "1.2.3*",
        "SeriesInstanceUID": "",
        "StudyDate": "20240101-20240131",
        "PatientName": "DOE^J?",
        "NumberOfSeriesRelatedInstances": "",
        "Modality": "CT",
    }
    ds = Dataset()
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        ds.add_new(tag, dictionary_VR(tag), value or None)
    assert identifier.encode(keys) == by_pydicom(ds)
    # A key not among KEYS, a value outside ASCII: pydicom writes it, the same way.
    other = {"PatientID": "X", "InstitutionName": "Hôpital"}
    assert identifier.decode(identifier.encode(other))[0x00080080].decode("latin-1").strip() == (
        "Hôpital"
    )
    with pytest.raises(ValueError, match="'Nonsense' is not a DICOM keyword"):
        identifier.encode({"Nonsense": "1"})


def _undefined_length_sequence() -> bytes:
    """(0008,1110) of undefined length: an item of undefined length holding an element and a
    nested sequence of undefined length, then the delimiters (PS3.5 7.5)."""
    element = b"\x08\x00\x55\x11UI\x06\x001.2.3\x00"
    nested = b"\x40\x00\x43\xa0SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    item = (
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + element + nested + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    )
    return (
        b"\x08\x00\x10\x11SQ\x00\x00\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )


def test_read_as_sent_with_sequences_skipped() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedPatientSequence = Sequence([item])  # (0008,1120), of defined length
    ds.FailedSOPInstanceUIDList = ["1.2.4", "1.2.5"]
    ds.SeriesInstanceUID = "1.2.6"
    written = by_pydicom(ds)
    # Spliced in by tag order: after (0008,0058), before (0008,1120).
    at = written.index(b"\x08\x00\x20\x11")
    data = written[:at] + _undefined_length_sequence() + written[at:]
    read = identifier.decode(data)
    assert identifier.text_of(read, "PatientID") == "P1"
    assert identifier.text_of(read, "FailedSOPInstanceUIDList") == "1.2.4\\1.2.5"
    assert identifier.text_of(read, "SeriesInstanceUID") == "1.2.6"
    assert identifier.text_of(read, "StudyInstanceUID") == ""
    assert sorted(read) == [0x00080058, 0x00100020, 0x0020000E]  # the sequences, skipped
    with pytest.raises(ValueError, match="cut short"):
        identifier.decode(data[:-3])
    with pytest.raises(ValueError, match="cut short"):
        identifier.decode(written[:at] + _undefined_length_sequence()[:-8])


def test_a_pull_imports_no_pydicom() -> None:
    code = (
        "import sys; from oxidip.pull import command, find;"
        " find.decode_identifier(find.encode_identifier({'PatientID': 'A*', 'StudyDate': ''}));"
        " print('pydicom' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
