"""``oxidip pull`` end to end: an archive of patients, studies and series to load into a PACS
(Orthanc, or ``tests.helpers.retrieve_scp.RetrieveScp``), the query file, the pull run as a
subprocess (to its end, or killed mid-way), its ``--json`` report, and what oxidip stored
compared with what the PACS holds, byte for byte."""

import io
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.helpers.dicom import (
    SIMPLE_TEMPLATE,
    make_dataset,
    parse_part10,
    read_part10,
    read_raw_dataset,
    stored_files,
)
from tests.helpers.e2e import Series
from tests.helpers.process import clean_env

HOST = "127.0.0.1"
#: Our AE title: the move destination, and the calling AE of the queries.
OUR_AET = "OXIDIP"
_TRANSFER_SYNTAX = 0x0002_0010


@dataclass(frozen=True)
class Study:
    patient_id: str
    study_instance_uid: str
    series: tuple[Series, ...]


def make_archive(
    patients: int, studies: int, series_sizes: Sequence[int], *, prefix: str = "PULL"
) -> list[Study]:
    """``patients`` patients (``<prefix>-<n>``), each with ``studies`` studies of one series
    per entry of ``series_sizes`` (that many small instances each)."""
    archive = []
    for p in range(1, patients + 1):
        patient_id = f"{prefix}-{p}"
        for s in range(1, studies + 1):
            study_uid = generate_uid()
            series = []
            for number, size in enumerate(series_sizes, start=1):
                series_uid = generate_uid()
                datasets = tuple(
                    make_dataset(
                        study_uid=study_uid,
                        series_uid=series_uid,
                        patient_id=patient_id,
                        patient_name=f"Pull^{p}",
                        series_number=number,
                        instance_number=n,
                        pixel_bytes=256,
                        StudyID=str(s),
                        SeriesDescription=f"series {number}",
                    )
                    for n in range(1, size + 1)
                )
                series.append(Series(study_uid, series_uid, datasets))
            archive.append(Study(patient_id, study_uid, tuple(series)))
    return archive


def all_series(archive: Iterable[Study]) -> list[Series]:
    return [series for study in archive for series in study.series]


def all_datasets(archive: Iterable[Study]) -> list[Dataset]:
    return [ds for series in all_series(archive) for ds in series.datasets]


def part10(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file (its file meta says explicit VR little endian)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_queries(path: Path, queries: Sequence[Mapping[str, str]]) -> Path:
    """pacsnpull's query file: a JSON list of keyword -> value, each with its level."""
    path.write_text(json.dumps(list(queries), indent=2))
    return path


# --- running oxidip pull ----------------------------------------------------------------------


def pull_env(root: Path, port: int, pacs: str, **overrides: str) -> dict[str, str]:
    """The environment of an ``oxidip pull --serve``: storage (and its SQLite registry) under
    ``root``, the in-process receiver on ``port`` (known in advance: the PACS needs it as a
    move destination), the PACS in the node directory (``AET=host:port``)."""
    return clean_env(
        OXIDIP_FILES_ROOT=str(root),
        OXIDIP_LISTENER_HOST=HOST,
        OXIDIP_LISTENER_PORT=str(port),
        OXIDIP_SCP_AET=OUR_AET,
        OXIDIP_PATH_TEMPLATE=SIMPLE_TEMPLATE,
        OXIDIP_PACS_ADDRESS=pacs,
        OXIDIP_LOG_FORMAT="json",
        **overrides,
    )


def pull_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "oxidip", "pull", *args]


def run_pull(
    *args: str, env: dict[str, str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``oxidip pull ARGS`` to its end; a pull still running after ``timeout`` s is a hang:
    killed, and the test fails saying so."""
    try:
        return subprocess.run(
            pull_command(*args),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as expired:
        out = (expired.stderr or b"")[-3000:]
        raise AssertionError(f"oxidip pull {args} hung for {timeout} s:\n{out!r}") from None


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    """``--json``'s output: one JSON object per line."""
    try:
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    except ValueError:
        raise AssertionError(
            f"not JSON lines (exit {result.returncode}):\n{result.stdout[-2000:]}\n"
            f"{result.stderr[-3000:]}"
        ) from None
    assert all(isinstance(row, dict) for row in rows), rows
    return rows


def report(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    """The ``--json`` report (one result per series), by SeriesInstanceUID."""
    rows = json_lines(result)
    by_uid = {str(row["series_instance_uid"]): row for row in rows}
    assert len(by_uid) == len(rows), f"a series reported twice: {rows}"
    return by_uid


# --- what was stored ------------------------------------------------------------------------


def stored_by_uid(root: Path) -> dict[str, Path]:
    """SOP Instance UID (the file name with ``SIMPLE_TEMPLATE``) -> path, every stored file
    once (a second file for one instance fails)."""
    found: dict[str, Path] = {}
    for path in stored_files(root):
        assert path.stem not in found, f"{path.stem} stored twice: {found[path.stem]}, {path}"
        found[path.stem] = path
    return found


def assert_identical(ours: Path, theirs: bytes) -> None:
    """The data set oxidip stored is the PACS's, byte for byte when both files have the same
    transfer syntax (the PACS sent it as it holds it), element for element otherwise."""
    stored = read_part10(ours)
    original = parse_part10(theirs)
    ours_ts, theirs_ts = stored.text(_TRANSFER_SYNTAX), original.text(_TRANSFER_SYNTAX)
    assert ours_ts and theirs_ts, (ours_ts, theirs_ts)
    if ours_ts == theirs_ts:
        assert stored.dataset == original.dataset, f"{ours}: data set bytes differ"
        return
    mine = read_raw_dataset(stored.dataset, ours_ts)
    other = read_raw_dataset(original.dataset, theirs_ts)
    assert mine == other, f"{ours}: data set differs ({ours_ts} vs the PACS's {theirs_ts})"


def assert_same_as_sent(ours: Path, sent: Dataset) -> None:
    """What oxidip stored is ``sent`` (a pynetdicom SCP re-encodes what it sends: compared
    element by element)."""
    stored = read_part10(ours)
    syntax = stored.text(_TRANSFER_SYNTAX)
    assert syntax, ours
    kept = read_raw_dataset(stored.dataset, syntax)
    assert kept == sent, f"{ours}: not the data set the PACS sent"
