"""What to pull: queries as pacsnpull writes them (a JSON list of objects keyword -> value,
each with ``QueryRetrieveLevel``) or as ``-k Keyword=value`` flags.

A query's keys are matching keys (PS3.4 C.2.2.1: single values, ``*``/``?`` wildcards, date
and time ranges ``20240101-20240131``, as the PACS supports them); an empty value asks for
the attribute back. Keywords are checked against pydicom's data dictionary; values are sent
as given. The level says where the walk starts (``oxidip.pull.find``): every query ends at
SERIES level.
"""

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

__all__ = [
    "Level",
    "Query",
    "QueryError",
    "canonical",
    "load_queries",
    "queries_of_canonical",
    "query_from_keys",
]


class QueryError(ValueError):
    """A query that cannot be used; the message says which and why."""


class Level(enum.StrEnum):
    """Query/Retrieve levels (PS3.4 C.3), the walk's starting point."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"


#: Matching keys of the PATIENT and STUDY levels (PS3.4 C.6.1.1.2-3, C.6.2.1.2): the rest
#: match at SERIES level (Modality, SeriesDescription...).
PATIENT_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDsSequence",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "EthnicGroup",
        "PatientComments",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    }
)
STUDY_KEYS = frozenset(
    {
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyInstanceUID",
        "ReferringPhysicianName",
        "StudyDescription",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NameOfPhysiciansReadingStudy",
        "AdmittingDiagnosesDescription",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "InstitutionName",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    }
)

_LEVEL_KEY = "QueryRetrieveLevel"


class Query(msgspec.Struct, frozen=True):
    """One query: its level and its keys (keyword -> value, without the level)."""

    level: Level
    keys: dict[str, str]

    def __str__(self) -> str:
        keys = " ".join(f"{k}={v}" for k, v in self.keys.items())
        return f"{self.level.value} {keys}".strip()


def _check_keyword(keyword: str, where: str) -> None:
    from oxidip.pull.identifier import entry

    found = entry(keyword)
    if found is None:
        raise QueryError(f"{where}: {keyword!r} is not a DICOM keyword (e.g. PatientID)")
    if found[1] == "SQ":
        raise QueryError(f"{where}: {keyword} is a sequence; only plain attributes can be matched")


def _value(raw: object, keyword: str, where: str) -> str:
    if isinstance(raw, bool) or raw is None or isinstance(raw, list | dict):
        raise QueryError(f"{where}: the value of {keyword} must be a string, got {raw!r}")
    if isinstance(raw, int | float):
        return str(raw)
    if not isinstance(raw, str):
        raise QueryError(f"{where}: the value of {keyword} must be a string, got {raw!r}")
    return raw


def _level(raw: object, where: str) -> Level:
    text = raw.strip().upper() if isinstance(raw, str) else ""
    try:
        return Level(text)
    except ValueError:
        raise QueryError(
            f"{where}: QueryRetrieveLevel {raw!r} is not one of"
            f" {', '.join(level.value for level in Level)}"
        ) from None


def _implied_level(keys: Iterable[str]) -> Level:
    """The deepest level a set of keys needs: SERIES for any series key, else STUDY."""
    if any(key not in PATIENT_KEYS and key not in STUDY_KEYS for key in keys):
        return Level.SERIES
    return Level.STUDY


def query_of(obj: Mapping[str, object], where: str) -> Query:
    """One query from a JSON object (keyword -> value, with or without
    ``QueryRetrieveLevel``: without, SERIES when a key needs it, else STUDY)."""
    keys: dict[str, str] = {}
    level: Level | None = None
    for keyword, raw in obj.items():
        if keyword == _LEVEL_KEY:
            level = _level(raw, where)
            continue
        _check_keyword(keyword, where)
        keys[keyword] = _value(raw, keyword, where)
    if not keys:
        raise QueryError(f"{where}: no matching key (it would match the whole PACS)")
    return Query(level or _implied_level(keys), keys)


def load_queries(path: Path) -> list[Query]:
    """The queries of a pacsnpull JSON file (a list of objects, or one object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise QueryError(f"{path}: cannot be read: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QueryError(f"{path}: not JSON: {error}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise QueryError(f"{path}: expected a JSON list of query objects")
    queries = []
    for index, obj in enumerate(data):
        where = f"{path}, query {index + 1}"
        if not isinstance(obj, dict):
            raise QueryError(f"{where}: expected an object of keyword -> value")
        queries.append(query_of(obj, where))
    return queries


def query_from_keys(flags: Sequence[str]) -> Query:
    """One query from ``-k Keyword=value`` flags (``QueryRetrieveLevel=`` among them or
    implied)."""
    obj: dict[str, object] = {}
    for flag in flags:
        keyword, sep, value = flag.partition("=")
        keyword = keyword.strip()
        if not sep or not keyword:
            raise QueryError(f"-k {flag!r}: expected Keyword=value (e.g. -k PatientID=123)")
        if keyword in obj:
            raise QueryError(f"-k {flag!r}: {keyword} is given twice")
        obj[keyword] = value
    return query_of(obj, "-k")


def canonical(queries: Sequence[Query]) -> str:
    """The queries as one JSON text that is the same for the same queries (keys sorted):
    how a pull is found again when the same query file is run again."""
    data = [
        {_LEVEL_KEY: q.level.value, **dict(sorted(q.keys.items()))}
        for q in queries  # the order of the file is kept: it is the order of retrieval
    ]
    return json.dumps(data, sort_keys=False, separators=(",", ":"))


def queries_of_canonical(text: str) -> list[Query]:
    """The queries of a stored pull (``canonical``'s inverse)."""
    return [query_of(obj, f"pull query {i + 1}") for i, obj in enumerate(json.loads(text))]
