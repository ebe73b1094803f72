"""Reading a stored Part 10 file back for sending it on (``_core.read_stored_for_sending``):
its SOP Class, SOP Instance and Transfer Syntax UIDs and the byte range of its data set.

Every file of pydicom's corpus (``tests/helpers/corpus.py``), judged by pydicom: where pydicom
reads it as Part 10 and its meta and data set agree, the range starts where pydicom's file
meta reader stops and runs to the end of the file; otherwise the error says why, in the
words the expectation below derives from pydicom's reading. Files oxidip wrote itself are
checked in ``test_corpus.py`` (``_verify_instance``): every instance the corpus tests store.
"""

import warnings
from pathlib import Path

import msgspec
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble

from oxidip import _core
from oxidip._boundary import StoredDataSet
from tests.helpers import corpus
from tests.helpers.dicom import make_dataset, write_part10

_DECODER = msgspec.msgpack.Decoder(StoredDataSet)

#: Files whose data set our extractor refuses while pydicom reads it (lazily, without checking
#: that item lengths add up to their sequence's): not instances, never stored by oxidip.
MALFORMED_DATA_SETS = {
    "test_files/dicomdirtests/DICOMDIR-nooffset": "data set: item runs past the end of its sequence",
}


def read_for_sending(path: Path) -> StoredDataSet:
    return _DECODER.decode(_core.read_stored_for_sending(str(path)))


def _text(value: object) -> str:
    return str(value or "").strip("\0 ")


def expectation(path: Path) -> tuple[int, pydicom.FileMetaDataset] | str:
    """From pydicom: the data set's offset and the file meta, or what the error must say."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with path.open("rb") as fp:
                read_preamble(fp, force=False)
                meta = _read_file_meta_info(fp)
                offset = fp.tell()
        except InvalidDicomError:
            return "not a Part 10 file"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    for tag, keyword in [
        ("(0002,0002)", "MediaStorageSOPClassUID"),
        ("(0002,0003)", "MediaStorageSOPInstanceUID"),
        ("(0002,0010)", "TransferSyntaxUID"),
    ]:
        if not _text(meta.get(keyword)):
            return f"file meta lacks {tag} {keyword}"
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        in_meta = _text(meta.get(f"MediaStorage{keyword}"))
        in_data_set = _text(ds.get(keyword))
        if not in_data_set:
            return f"the data set lacks {keyword} (file meta: {in_meta})"
        if in_data_set != in_meta:
            return (
                f"file meta MediaStorage{keyword} {in_meta} differs from the data set's "
                f"{keyword} {in_data_set}"
            )
    return offset, meta


PATHS = corpus.all_paths()


@pytest.mark.parametrize("path", PATHS, ids=[corpus.rel(p) for p in PATHS])
def test_corpus_file(path: Path) -> None:
    rel = corpus.rel(path)
    expected = MALFORMED_DATA_SETS.get(rel) or expectation(path)
    if isinstance(expected, str):
        with pytest.raises(ValueError) as raised:
            read_for_sending(path)
        message = str(raised.value)
        assert message.startswith(f"{path}: "), message
        assert expected in message, message
        return
    offset, meta = expected
    got = read_for_sending(path)
    size = path.stat().st_size
    assert (got.offset, got.len) == (offset, size - offset)
    assert got.sop_class_uid == _text(meta.MediaStorageSOPClassUID)
    assert got.sop_instance_uid == _text(meta.MediaStorageSOPInstanceUID)
    assert got.transfer_syntax_uid == _text(meta.TransferSyntaxUID)


def test_the_corpus_covers_both_outcomes() -> None:
    """Most of the corpus reads, and each kind of refusal occurs (so the expectations above
    are exercised, not vacuous)."""
    outcomes = [MALFORMED_DATA_SETS.get(corpus.rel(p)) or expectation(p) for p in PATHS]
    refusals = [o for o in outcomes if isinstance(o, str)]
    assert len(outcomes) - len(refusals) >= 100
    for kind in ("not a Part 10 file", "file meta lacks", "the data set lacks", "differs from"):
        assert any(kind in r for r in refusals), kind


def test_a_truncated_meta_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "whole.dcm"
    data = write_part10(path, make_dataset())
    whole = path.read_bytes()
    meta_end = len(whole) - len(data)
    got = read_for_sending(path)
    assert (got.offset, got.len) == (meta_end, len(data))
    assert whole[got.offset :] == data
    cut = tmp_path / "cut.dcm"
    for end in (140, 150, meta_end - 1):
        cut.write_bytes(whole[:end])
        with pytest.raises(ValueError, match="file meta group truncated: ends inside"):
            read_for_sending(cut)
    cut.write_bytes(whole[:100])
    with pytest.raises(ValueError, match="not a Part 10 file: no DICM prefix"):
        read_for_sending(cut)
