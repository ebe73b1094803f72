"""The C-FIND walk down to SERIES level (PS3.4 C.4.1, hierarchical queries C.4.1.3.1):
every series the queries match, with what the retrieval and the report need.

Study Root (the default): a STUDY-level query with the query's patient and study keys, then
a SERIES-level query per study found (its StudyInstanceUID and the query's series keys).
Patient Root (``patient_root``): PATIENT level first (skipped when the query names one
PatientID without wildcards), then STUDY per patient, then SERIES per study. Each C-FIND is
one ``_core.find`` (its own association); identifiers are written and read by ``oxidip.pull.identifier``
(cold path: a few per study). For C-GET the series' SOP classes are needed (its storage
contexts): DICOM has no series-level attribute for them (SOPClassesInStudy is the study's),
so an IMAGE-level C-FIND of the series' SOPClassUIDs asks (``sop_classes_of``).
"""

import logging
from collections.abc import Callable, Iterator, Sequence

import msgspec

from oxidip import _core
from oxidip.nodes import RemoteNode
from oxidip.pull import identifier
from oxidip.pull.identifier import Identifier
from oxidip.pull.query import PATIENT_KEYS, STUDY_KEYS, Query
from oxidip.registry import FoundSeries

__all__ = [
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "PATIENT_ROOT",
    "STUDY_ROOT",
    "FindError",
    "Finder",
    "InformationModel",
    "decode_identifier",
    "encode_identifier",
]

log = logging.getLogger("oxidip.pull")

#: Identifiers are sent in Explicit VR Little Endian, which every PACS accepts.
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


class InformationModel(msgspec.Struct, frozen=True):
    """A Query/Retrieve information model (PS3.4 C.6): its SOP classes and levels."""

    name: str
    find: str
    move: str
    get: str
    #: Levels from the top; the walk queries each in turn.
    levels: tuple[str, ...]


STUDY_ROOT = InformationModel(
    "Study Root",
    find="1.2.840.10008.5.1.4.1.2.2.1",
    move="1.2.840.10008.5.1.4.1.2.2.2",
    get="1.2.840.10008.5.1.4.1.2.2.3",
    levels=("STUDY", "SERIES"),
)
PATIENT_ROOT = InformationModel(
    "Patient Root",
    find="1.2.840.10008.5.1.4.1.2.1.1",
    move="1.2.840.10008.5.1.4.1.2.1.2",
    get="1.2.840.10008.5.1.4.1.2.1.3",
    levels=("PATIENT", "STUDY", "SERIES"),
)

#: Returned at each level (empty keys: universal matching, PS3.4 C.2.2.2.3), what the
#: report and the retrieval use.
_RETURN_KEYS = {
    "PATIENT": ("PatientID", "PatientName"),
    "STUDY": (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "StudyDescription",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    ),
}


class FindError(Exception):
    """A C-FIND that failed, in words (which query, which PACS, why)."""


def encode_identifier(keys: dict[str, str]) -> bytes:
    """An identifier (keyword -> value, "" asks for the attribute back) in Explicit VR
    Little Endian (``oxidip.pull.identifier``)."""
    return identifier.encode(keys)


def decode_identifier(data: bytes) -> Identifier:
    """A match as sent (Explicit VR Little Endian), its values left raw."""
    return identifier.decode(data)


text_of = identifier.text_of


def parse_count(text: str) -> int | None:
    """A non-negative IS (NumberOfSeriesRelatedInstances), None for anything else."""
    digits = text.strip().removeprefix("+")
    return int(digits) if digits and digits.isascii() and digits.isdigit() else None


def _unique(value: str | None) -> bool:
    """A single value without wildcards: a unique key may be taken as is."""
    return bool(value) and not any(c in value for c in "*?\\") if value is not None else False


class Finder:
    """Runs the walk against one PACS as ``calling_aet``; ``on_find`` is told of each
    C-FIND done (level and matches), for the log."""

    def __init__(
        self,
        pacs: RemoteNode,
        calling_aet: str,
        model: InformationModel,
        timeout: float,
        on_find: Callable[[str, int], None] = lambda level, matches: None,
    ) -> None:
        self.pacs = pacs
        self.calling_aet = calling_aet
        self.model = model
        self.timeout = timeout
        self._on_find = on_find

    def find(self, level: str, keys: dict[str, str]) -> list[Identifier]:
        """One C-FIND at ``level``; its matches. FindError when it fails."""
        identifier = {"QueryRetrieveLevel": level, **keys}
        try:
            result = _core.find(
                self.pacs.host,
                self.pacs.port,
                self.calling_aet,
                self.pacs.aet,
                self.model.find,
                encode_identifier(identifier),
                EXPLICIT_VR_LITTLE_ENDIAN,
                self.timeout,
            )
        except OSError as error:
            raise FindError(
                f"C-FIND ({self.model.name}, {level}) to {self.pacs} failed: {error}"
            ) from None
        if result.status != 0:
            kind = "was cancelled" if result.status == 0xFE00 else "failed"
            comment = f" ({result.comment})" if result.comment else ""
            raise FindError(
                f"C-FIND ({self.model.name}, {level}) to {self.pacs} {kind} with status"
                f" 0x{result.status:04X}{comment}"
            )
        self._on_find(level, len(result.matches))
        return [decode_identifier(match) for match in result.matches]

    def series(self, queries: Sequence[Query]) -> list[FoundSeries]:
        """Every series the queries match, each once, in the order found."""
        found: dict[str, FoundSeries] = {}
        for query in queries:
            for series in self._walk(query):
                if series.series_instance_uid:
                    found.setdefault(series.series_instance_uid, series)
        return list(found.values())

    def _walk(self, query: Query) -> Iterator[FoundSeries]:
        patient = {k: v for k, v in query.keys.items() if k in PATIENT_KEYS}
        study = {k: v for k, v in query.keys.items() if k in STUDY_KEYS}
        series = {k: v for k, v in query.keys.items() if k not in PATIENT_KEYS | STUDY_KEYS}
        parents: list[dict[str, str]] = [{}]
        if self.model is PATIENT_ROOT:
            if _unique(patient.get("PatientID")):
                parents = [{"PatientID": patient["PatientID"]}]
            else:
                matches = self.find("PATIENT", _with_returns("PATIENT", patient))
                parents = [{"PatientID": text_of(m, "PatientID")} for m in matches]
            study_keys = {k: v for k, v in patient.items() if k != "PatientID"} | study
        else:
            study_keys = patient | study
        for parent in parents:
            if _unique(study_keys.get("StudyInstanceUID")) and len(study_keys) == 1:
                studies = [{**parent, "StudyInstanceUID": study_keys["StudyInstanceUID"]}]
                facts: dict[str, dict[str, str]] = {}
            else:
                matches = self.find("STUDY", _with_returns("STUDY", {**parent, **study_keys}))
                studies = []
                facts = {}
                for m in matches:
                    uid = text_of(m, "StudyInstanceUID")
                    if uid:
                        studies.append({**parent, "StudyInstanceUID": uid})
                        facts[uid] = {k: text_of(m, k) for k in _RETURN_KEYS["STUDY"]}
            for unique in studies:
                uid = unique["StudyInstanceUID"]
                keys = _with_returns("SERIES", {**unique, **series})
                for match in self.find("SERIES", keys):
                    yield _found(match, uid, facts.get(uid, {}))

    def sop_classes_of(self, study_uid: str, series_uid: str, patient_id: str = "") -> list[str]:
        """The SOP Class UIDs of a series' instances (an IMAGE-level C-FIND), for the
        storage contexts of a C-GET; [] when the PACS does not say."""
        keys = {
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": series_uid,
            "SOPInstanceUID": "",
            "SOPClassUID": "",
        }
        if self.model is PATIENT_ROOT:
            keys = {"PatientID": patient_id, **keys}
        classes = {text_of(m, "SOPClassUID") for m in self.find("IMAGE", keys)}
        return sorted(c for c in classes if c)


def _with_returns(level: str, keys: dict[str, str]) -> dict[str, str]:
    return {**dict.fromkeys(_RETURN_KEYS[level], ""), **keys}


def _found(match: Identifier, study_uid: str, study: dict[str, str]) -> FoundSeries:
    count = text_of(match, "NumberOfSeriesRelatedInstances")
    return FoundSeries(
        study_instance_uid=text_of(match, "StudyInstanceUID") or study_uid,
        series_instance_uid=text_of(match, "SeriesInstanceUID"),
        patient_id=study.get("PatientID", ""),
        patient_name=study.get("PatientName", ""),
        study_date=study.get("StudyDate", ""),
        accession_number=study.get("AccessionNumber", ""),
        study_description=study.get("StudyDescription", ""),
        series_description=text_of(match, "SeriesDescription"),
        modality=text_of(match, "Modality"),
        series_number=text_of(match, "SeriesNumber"),
        expected=parse_count(count),
    )
