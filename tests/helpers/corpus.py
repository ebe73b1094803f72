"""pydicom's bundled corpus (``pydicom/data/test_files`` and ``charset_files``, recursively)
and which of its files the receiver tests send.

Selection rule: a file is sent when it is a structurally valid Part 10 file of a storage SOP
class, i.e. all of

1. pydicom reads it as Part 10 (``dcmread`` without ``force``: preamble, ``DICM``, meta);
2. its file meta has (0002,0010) Transfer Syntax UID;
3. its dataset has (0008,0016) SOP Class UID and (0008,0018) SOP Instance UID;
4. the SOP class is a storage SOP class (pynetdicom's Storage service class table);
5. its dataset is encoded the way its transfer syntax says (pydicom had to guess otherwise);
6. no top-level element is truncated (each defined-length value is complete).

Every file that fails the rule must be listed in ``EXCLUDED`` with the reason, and
``test_corpus_selection_is_explicit`` checks that the list and the rule agree exactly, so a
new pydicom release cannot add or drop files silently.

``STORESCU_EXCLUDED`` lists selected files that dcmtk's ``storescu`` itself cannot read (it
skips them with "missing SOP class (or instance)"); pynetdicom still sends them.
"""

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import UID
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

DATA = Path(pydicom.__file__).parent / "data"
CORPUS_DIRS = ("test_files", "charset_files")

#: Corpus files that are not sent, with why (relative to ``pydicom/data``).
EXCLUDED: dict[str, str] = {
    # not DICOM at all
    "test_files/README.txt": "not DICOM (text)",
    "test_files/crayons.icc": "not DICOM (ICC profile)",
    "test_files/rtplan.dump": "not DICOM (dcmdump text)",
    "test_files/rtstruct.dump": "not DICOM (dcmdump text)",
    "test_files/test1.json": "not DICOM (DICOM JSON)",
    "test_files/test_PN.json": "not DICOM (DICOM JSON)",
    "test_files/zipMR.gz": "not DICOM (gzip)",
    "test_files/dicomdirtests/README.txt": "not DICOM (text)",
    "test_files/dicomdirtests/TINY_ALPHA/README": "not DICOM (text)",
    "charset_files/FileInfo.txt": "not DICOM (text)",
    # DICOM datasets without the Part 10 header
    "test_files/ExplVR_BigEndNoMeta.dcm": "no preamble/DICM/file meta (bare dataset)",
    "test_files/ExplVR_LitEndNoMeta.dcm": "no preamble/DICM/file meta (bare dataset)",
    "test_files/no_meta.dcm": "no preamble/DICM/file meta (bare dataset)",
    "test_files/rtstruct.dcm": "no preamble/DICM/file meta (bare dataset)",
    # Part 10 but not a storable instance
    "test_files/meta_missing_tsyntax.dcm": "file meta lacks (0002,0010) Transfer Syntax UID",
    "test_files/UN_sequence.dcm": "dataset lacks SOP Class/Instance UID",
    "test_files/empty_charset_LEI.dcm": "dataset lacks SOP Class/Instance UID",
    "test_files/nested_priv_SQ.dcm": "dataset lacks SOP Class/Instance UID",
    "test_files/no_meta_group_length.dcm": "dataset lacks SOP Class/Instance UID",
    "test_files/priv_SQ.dcm": "dataset lacks SOP Class/Instance UID",
    "charset_files/chrSQEncoding.dcm": "dataset lacks SOP Class/Instance UID",
    "charset_files/chrSQEncoding1.dcm": "dataset lacks SOP Class/Instance UID",
    "test_files/dicomdirtests/DICOMDIR": "DICOMDIR (Media Storage Directory), not an instance",
    "test_files/dicomdirtests/DICOMDIR-bigEnd": "DICOMDIR, not an instance",
    "test_files/dicomdirtests/DICOMDIR-empty.dcm": "DICOMDIR, not an instance",
    "test_files/dicomdirtests/DICOMDIR-implicit": "DICOMDIR, not an instance",
    "test_files/dicomdirtests/DICOMDIR-nooffset": "DICOMDIR, not an instance",
    "test_files/dicomdirtests/DICOMDIR-nopatient": "DICOMDIR, not an instance",
    "test_files/dicomdirtests/DICOMDIR-reordered": "DICOMDIR, not an instance",
    "test_files/dicomdirtests/TINY_ALPHA/DICOMDIR": "DICOMDIR, not an instance",
    # deliberately broken instances
    "test_files/SC_rgb_jpeg.dcm": "meta says explicit VR, the dataset is implicit VR",
    "test_files/MR_truncated.dcm": "truncated: Pixel Data declares 8192 bytes, 8130 present",
    "test_files/rtplan_truncated.dcm": "truncated inside a sequence (300A,00B0)",
}

#: Selected files that dcmtk 3.6.7's storescu cannot read, so cannot send.
STORESCU_EXCLUDED: dict[str, str] = {
    "test_files/rtdose_rle.dcm": (
        "every element is encoded with explicit VR UN (gdcmconv); dcmtk then finds no SOP "
        "Class UID and skips the file"
    ),
    "test_files/rtdose_rle_1frame.dcm": "as rtdose_rle.dcm: every element has explicit VR UN",
}


@dataclass(frozen=True)
class CorpusFile:
    rel: str
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    #: (0002,0003) of the file; some corpus files disagree with their dataset.
    meta_sop_instance: str
    #: Has a Study and a Series Instance UID: what the receiver requires by default to
    #: identify an instance (a few corpus files lack both).
    identified: bool
    #: PatientID, None when absent or empty (Type 2: legitimately empty).
    patient_id: str | None

    @property
    def name(self) -> str:
        return self.rel


def all_paths() -> list[Path]:
    paths = []
    for directory in CORPUS_DIRS:
        for root, _dirs, files in os.walk(DATA / directory):
            paths.extend(Path(root) / f for f in files)
    return sorted(paths)


def rel(path: Path) -> str:
    return path.relative_to(DATA).as_posix()


def _truncated(ds: pydicom.Dataset) -> str | None:
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        length = getattr(elem, "length", None)
        value = getattr(elem, "value", None)
        if (
            isinstance(value, bytes)
            and length is not None
            and length != 0xFFFFFFFF
            and len(value) < length
        ):
            return f"{tag} declares {length} bytes, {len(value)} present"
    return None


def why_excluded(path: Path) -> str | None:
    """None when the file is selected, else the rule it fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001 - any reading failure excludes the file
        return f"pydicom cannot read it as Part 10: {type(error).__name__}"
    ts = ds.file_meta.get("TransferSyntaxUID")
    if not ts:
        return "no Transfer Syntax UID in file meta"
    if _encoding_mismatch(ds, UID(ts)):
        return "dataset encoding does not match the transfer syntax"
    truncated = _truncated(ds)
    if truncated:
        return f"truncated: {truncated}"
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        return "no SOP Class/Instance UID"
    if uid_to_service_class(ds.SOPClassUID) is not StorageServiceClass and not issubclass(
        uid_to_service_class(ds.SOPClassUID), StorageServiceClass
    ):
        return f"{ds.SOPClassUID} is not a storage SOP class"
    return None


def _encoding_mismatch(ds: pydicom.Dataset, ts: UID) -> bool:
    """pydicom falls back to the other VR encoding when the dataset does not match its
    transfer syntax; the raw elements it read say which one it used."""
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        implicit = getattr(elem, "is_implicit_VR", None)
        if implicit is not None:
            return bool(implicit) != ts.is_implicit_VR or elem.is_little_endian != (
                ts.is_little_endian
            )
    return False


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    return str(ds.get(keyword) or "").strip() or None


def load(path: Path) -> CorpusFile:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return CorpusFile(
        rel=rel(path),
        path=path,
        sop_class=str(ds.SOPClassUID),
        sop_instance=str(ds.SOPInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        meta_sop_instance=str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")),
        identified=bool(_text(ds, "StudyInstanceUID") and _text(ds, "SeriesInstanceUID")),
        patient_id=_text(ds, "PatientID"),
    )


def selected() -> list[CorpusFile]:
    """The files the corpus tests send (the rule above, minus ``EXCLUDED``)."""
    return [load(p) for p in all_paths() if rel(p) not in EXCLUDED]


def rounds(files: list[CorpusFile]) -> list[list[CorpusFile]]:
    """Splits ``files`` so that no SOP Instance UID appears twice in a round: the corpus has
    several encodings of the same instance (MR_small*, rtdose*, ...) and they would land on
    the same path. Each round is sent with its own calling AE title, so paths stay apart."""
    seen: dict[str, int] = defaultdict(int)
    out: list[list[CorpusFile]] = []
    for f in files:
        index = seen[f.sop_instance]
        seen[f.sop_instance] += 1
        while len(out) <= index:
            out.append([])
        out[index].append(f)
    return out
