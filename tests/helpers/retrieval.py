"""Retrieves in tests: a series loaded into Orthanc, the identifier naming it, and a
``_core.Retrieval`` watched to its end as ``oxidip pull`` does (its pending responses taken as
they come, the wait bounded)."""

import io
import time

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from oxidip import _core
from tests.helpers.dicom import make_dataset
from tests.helpers.orthanc import OrthancServer


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def load_series(orthanc: OrthancServer, size: int) -> tuple[str, str, list[Dataset]]:
    """Uploads one series of ``size`` small instances; (study UID, series UID, instances)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = [
        make_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=n)
        for n in range(1, size + 1)
    ]
    for ds in instances:
        orthanc.upload(part10(ds))
    return study_uid, series_uid, instances


def series_identifier(study_uid: str, series_uid: str) -> Dataset:
    """A Study Root SERIES-level identifier (PS3.4 C.6.2.1) naming one series."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid
    return identifier


def drain(retrieval: _core.Retrieval, deadline: float = 30.0) -> list[_core.RetrieveProgress]:
    """Every pending response until the operation ends (its ``result`` or ``error`` set);
    AssertionError when it has not ended within ``deadline`` seconds."""
    until = time.monotonic() + deadline
    seen: list[_core.RetrieveProgress] = []
    while retrieval.result is None and retrieval.error is None:
        left = until - time.monotonic()
        assert left > 0, f"the retrieve has not ended within {deadline} s"
        progress = retrieval.next_progress(min(left, 1.0))
        if progress is not None:
            seen.append(progress)
    # Those queued before the end.
    while (progress := retrieval.next_progress(0)) is not None:
        seen.append(progress)
    return seen


def finished(retrieval: _core.Retrieval, deadline: float = 30.0) -> _core.RetrieveResult:
    """The final response, once the operation has ended with one (AssertionError with the
    error's words otherwise)."""
    drain(retrieval, deadline)
    assert retrieval.result is not None, retrieval.error
    return retrieval.result
