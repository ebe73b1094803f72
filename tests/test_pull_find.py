"""``oxidip pull --find-only`` against Orthanc: the C-FIND walk (Study Root and Patient
Root) lists every matching series with its study, description and expected count, as CSV
or JSON lines, and retrieves nothing."""

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.helpers.dicom import make_dataset
from tests.helpers.orthanc import OrthancServer

OUR_AET = "OXIDIP"


def part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with OrthancServer(
        tmp_path_factory.mktemp("orthanc"), modalities={"oxidip": (OUR_AET, "127.0.0.1", 1)}
    ) as server:
        yield server


def load(orthanc: OrthancServer, patient: str, series_sizes: list[int], **extra: object) -> str:
    """One study of ``patient`` with a series per size; its Study Instance UID."""
    study = generate_uid()
    for number, size in enumerate(series_sizes, start=1):
        series = generate_uid()
        for n in range(1, size + 1):
            ds = make_dataset(
                study_uid=study,
                series_uid=series,
                patient_id=patient,
                instance_number=n,
                series_number=number,
                SeriesDescription=f"series {number}",
                **extra,
            )
            orthanc.upload(part10(ds))
    return study


def pull(orthanc: OrthancServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OXIDIP_FILES_ROOT": str(tmp_path / "files"),
        "OXIDIP_SCP_AET": OUR_AET,
        "OXIDIP_PACS_ADDRESS": f"{orthanc.aet}={orthanc.host}:{orthanc.dicom_port}",
    }
    return subprocess.run(
        [sys.executable, "-m", "oxidip", "pull", "--find-only", "--timeout", "10", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_find_only_lists_every_series_of_the_matching_studies(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    patient = f"P{generate_uid()[-8:]}"
    first = load(orthanc, patient, [2, 3])
    second = load(orthanc, patient, [1])
    load(orthanc, f"other{patient}", [1])
    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps([{"PatientID": patient, "QueryRetrieveLevel": "STUDY"}]))
    done = pull(orthanc, tmp_path, str(queries))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert sorted(
        (r["study_instance_uid"], r["expected"], r["series_description"]) for r in rows
    ) == sorted([(first, "2", "series 1"), (first, "3", "series 2"), (second, "1", "series 1")])
    assert {r["patient_id"] for r in rows} == {patient}
    assert {r["modality"] for r in rows} == {"OT"}
    assert not (tmp_path / "files").exists(), "find-only creates nothing"

    # The same by flags, narrowed to a series description, as JSON lines, Patient Root.
    done = pull(
        orthanc,
        tmp_path,
        "-k",
        f"PatientID={patient}",
        "-k",
        "SeriesDescription=series 2",
        "--patient-root",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    assert (line["study_instance_uid"], line["expected"]) == (first, 3)


def test_find_only_reports_a_refused_query_in_words(orthanc: OrthancServer, tmp_path: Path) -> None:
    env_aet = "STRANGER"
    done = subprocess.run(
        [sys.executable, "-m", "oxidip", "pull", "--find-only", "-k", "PatientID=1"],
        env={
            **os.environ,
            "OXIDIP_FILES_ROOT": str(tmp_path),
            "OXIDIP_SCP_AET": env_aet,
            "OXIDIP_PACS_ADDRESS": f"{orthanc.aet}={orthanc.host}:{orthanc.dicom_port}",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "C-FIND (Study Root, STUDY) to ORTHANC at" in done.stderr
    assert "failed" in done.stderr
