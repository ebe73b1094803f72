"""``oxidip pull`` end to end, against real PACS (issue 12):

- Orthanc (its C-FIND, C-MOVE and C-GET SCP, with oxidip in its DicomModalities): a query
  file matching several patients and studies pulls every series, by C-MOVE and by C-GET,
  byte-identical to what Orthanc holds, and the report says complete;
- a pynetdicom Q/R SCP (``tests.helpers.retrieve_scp``) that stalls mid-retrieve (answering
  the C-CANCEL, or not), fails sub-operations (B000), answers A801, omits
  NumberOfSeriesRelatedInstances or refuses C-GET: the pull ends, within the test's deadline,
  with the right words per series;
- a pull killed mid-way (SIGKILL) and run again: what was complete is not retrieved again.
"""

import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.e2e import Series
from tests.helpers.orthanc import OrthancServer, free_port
from tests.helpers.pull import (
    HOST,
    OUR_AET,
    Study,
    all_datasets,
    all_series,
    assert_identical,
    assert_same_as_sent,
    make_archive,
    part10,
    pull_command,
    pull_env,
    report,
    run_pull,
    stored_by_uid,
    write_queries,
)
from tests.helpers.retrieve_scp import Misbehaviour, RetrieveScp

#: Any pull here ends well before this (seconds), or it hangs.
DEADLINE = 90.0


# --- Orthanc ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc_archive(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[OrthancServer, list[Study]]]:
    """One Orthanc for the module holding 3 patients of 2 studies of 2 series (3 and 2
    instances), and a patient no query matches."""
    archive = make_archive(3, 2, (3, 2))
    other = make_archive(1, 1, (2,), prefix="OTHER")
    with OrthancServer(
        tmp_path_factory.mktemp("orthanc"), modalities={"oxidip": (OUR_AET, HOST, 1)}
    ) as orthanc:
        for ds in all_datasets(archive + other):
            orthanc.upload(part10(ds))
        yield orthanc, archive


def _orthanc_queries(archive: list[Study], path: Path) -> tuple[Path, list[Series]]:
    """Each level of pacsnpull's format: a patient, a patient's studies by wildcard, one
    study of a third patient; the series they match."""
    first, second, third = (archive[i : i + 2] for i in range(0, 6, 2))
    queries = write_queries(
        path,
        [
            {"QueryRetrieveLevel": "PATIENT", "PatientID": first[0].patient_id},
            {"QueryRetrieveLevel": "STUDY", "PatientID": second[0].patient_id[:-1] + "2*"},
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": third[0].study_instance_uid},
        ],
    )
    return queries, all_series([*first, *second, third[0]])


def test_find_only_lists_the_matching_series(
    orthanc_archive: tuple[OrthancServer, list[Study]], tmp_path: Path
) -> None:
    orthanc, archive = orthanc_archive
    queries, wanted = _orthanc_queries(archive, tmp_path / "queries.json")
    env = pull_env(tmp_path / "storage", free_port(), f"{orthanc.aet}={HOST}:{orthanc.dicom_port}")
    result = run_pull("--pacs", orthanc.aet, "--find-only", "--json", str(queries), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = report(result)
    assert set(rows) == {s.series_instance_uid for s in wanted}, "the matching series, no more"
    for series in wanted:
        row = rows[series.series_instance_uid]
        assert row["expected"] == len(series), row
        assert row["study_instance_uid"] == series.study_instance_uid, row
        assert row["modality"] == "OT", row
    # The patient of the series found by PatientID (a query by StudyInstanceUID alone
    # does not ask the study level for it).
    by_patient = [s for study in archive[:4] for s in study.series]
    assert {rows[s.series_instance_uid]["patient_id"] for s in by_patient} == {"PULL-1", "PULL-2"}
    csv = run_pull("--pacs", orthanc.aet, "--find-only", str(queries), env=env)
    assert csv.returncode == 0, csv.stderr[-3000:]
    lines = csv.stdout.splitlines()
    assert lines[0].startswith("study_instance_uid,series_instance_uid,") and len(lines) == 1 + len(
        wanted
    )
    assert not list((tmp_path / "storage").rglob("*.dcm")), "nothing retrieved"


@pytest.mark.parametrize("method", ["move", "get"])
def test_pull_from_orthanc_is_complete_and_byte_identical(
    orthanc_archive: tuple[OrthancServer, list[Study]], tmp_path: Path, method: str
) -> None:
    orthanc, archive = orthanc_archive
    port = free_port()
    orthanc.add_modality("oxidip", OUR_AET, HOST, port)
    queries, wanted = _orthanc_queries(archive, tmp_path / "queries.json")
    root = tmp_path / "storage"
    env = pull_env(root, port, f"{orthanc.aet}={HOST}:{orthanc.dicom_port}")
    args = ("--pacs", orthanc.aet, "--serve", "--method", method, "--json", str(queries))
    result = run_pull(*args, env=env, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr[-3000:]

    rows = report(result)
    assert set(rows) == {s.series_instance_uid for s in wanted}, "the matching series, no more"
    for series in wanted:
        row = rows[series.series_instance_uid]
        assert row["state"] == "complete", row
        assert row["expected"] == row["received"] == len(series), row
        assert Path(str(row["path"])).is_dir(), row

    stored = stored_by_uid(root)
    expected_uids = {uid for s in wanted for uid in s.sop_instance_uids}
    assert set(stored) == expected_uids
    for series in wanted:
        by_uid = orthanc.series_by_uid()[series.series_instance_uid]
        for instance in orthanc.get(f"/series/{by_uid['ID']}/instances"):
            uid = instance["MainDicomTags"]["SOPInstanceUID"]
            assert_identical(stored[uid], _raw(orthanc, instance["ID"]))


def _raw(orthanc: OrthancServer, instance_id: str) -> bytes:
    """The Part 10 file Orthanc holds (``/instances/{id}/file``), as bytes."""
    with urllib.request.urlopen(f"{orthanc.url}/instances/{instance_id}/file", timeout=30) as rsp:
        data: bytes = rsp.read()
        return data


# --- a misbehaving PACS -----------------------------------------------------------------------


def _pull_from(
    scp: RetrieveScp,
    tmp_path: Path,
    port: int,
    archive: list[Study],
    *extra: str,
    method: str = "move",
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    """Pulls every study of ``archive`` from ``scp`` with a short watchdog; its report."""
    queries = write_queries(
        tmp_path / "queries.json",
        [
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": s.study_instance_uid}
            for s in archive
        ],
    )
    env = pull_env(tmp_path / "storage", port, f"{scp.aet}={HOST}:{scp.port}")
    args = ("--pacs", scp.aet, "--serve", "--method", method, "--json", *extra, str(queries))
    result = run_pull(*args, env=env, timeout=DEADLINE)
    return result, report(result)


def _words(row: dict[str, object]) -> str:
    return str(row.get("error") or "")


def _misbehaving(archive: list[Study], port: int, **options: object) -> RetrieveScp:
    return RetrieveScp(
        all_datasets(archive),
        destinations={OUR_AET: (HOST, port)},
        **options,  # type: ignore[arg-type]
    )


def test_a_stalled_retrieve_is_cancelled_and_retried(tmp_path: Path) -> None:
    archive = make_archive(1, 1, (3, 2))
    stalling, fine = all_series(archive)
    port = free_port()
    rule = Misbehaviour("stall", after=1)
    with _misbehaving(archive, port, misbehaviour={stalling.series_instance_uid: rule}) as scp:
        result, rows = _pull_from(scp, tmp_path, port, archive, "--stall", "1", "--retries", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert scp.cancels >= 1, "the watchdog cancels a retrieve that makes no progress"
    assert scp.retrieves[stalling.series_instance_uid] == 2
    assert scp.retrieves[fine.series_instance_uid] == 1
    for series in (stalling, fine):
        row = rows[series.series_instance_uid]
        assert (row["state"], row["received"]) == ("complete", len(series)), row
    stored = stored_by_uid(tmp_path / "storage")
    for ds in all_datasets(archive):
        assert_same_as_sent(stored[str(ds.SOPInstanceUID)], ds)


def test_a_pacs_ignoring_the_cancel_is_aborted_and_the_series_fails(tmp_path: Path) -> None:
    archive = make_archive(1, 1, (3, 2))
    stalling, fine = all_series(archive)
    port = free_port()
    rule = Misbehaviour("stall", after=1, honour_cancel=False, times=100)
    with _misbehaving(archive, port, misbehaviour={stalling.series_instance_uid: rule}) as scp:
        result, rows = _pull_from(scp, tmp_path, port, archive, "--stall", "1", "--retries", "1")
    assert result.returncode == 1, result.stderr[-3000:]
    row = rows[stalling.series_instance_uid]
    # One instance of three arrived: incomplete, and the words say why.
    assert (row["state"], row["received"]) == ("incomplete", 1), row
    words = _words(row)
    assert "stalled" in words and "aborted" in words and "C-CANCEL" in words, row
    assert scp.retrieves[stalling.series_instance_uid] == 2, "one try and one retry"
    assert rows[fine.series_instance_uid]["state"] == "complete"


def test_failed_sub_operations_are_reported_with_their_uids(tmp_path: Path) -> None:
    archive = make_archive(1, 1, (4, 2))
    failing, fine = all_series(archive)
    lost = sorted(failing.sop_instance_uids[1:3])
    port = free_port()
    rule = Misbehaviour("fail", failing=frozenset(lost), times=100)
    with _misbehaving(archive, port, misbehaviour={failing.series_instance_uid: rule}) as scp:
        result, rows = _pull_from(scp, tmp_path, port, archive, "--retries", "0")
    assert result.returncode == 1, result.stderr[-3000:]
    row = rows[failing.series_instance_uid]
    assert row["state"] == "incomplete", row
    assert (row["expected"], row["received"]) == (4, 2), row
    words = _words(row)
    assert "B000" in words and "2" in words, row
    assert any(uid in words for uid in lost), f"the first failed UIDs are named: {row}"
    assert rows[fine.series_instance_uid]["state"] == "complete"
    assert set(stored_by_uid(tmp_path / "storage")) == (
        set(failing.sop_instance_uids) - set(lost)
    ) | set(fine.sop_instance_uids)
    assert scp.moves >= 2


def test_an_unknown_move_destination_says_how_to_configure_the_pacs(tmp_path: Path) -> None:
    archive = make_archive(1, 1, (2,))
    [series] = all_series(archive)
    port = free_port()
    with RetrieveScp(all_datasets(archive), destinations={}) as scp:
        result, rows = _pull_from(scp, tmp_path, port, archive, "--retries", "0")
    assert result.returncode == 1, result.stderr[-3000:]
    row = rows[series.series_instance_uid]
    assert row["state"] == "failed", row
    words = _words(row)
    assert "A801" in words and "unknown" in words, row
    assert f"add {OUR_AET}" in words and "DICOM modalities" in words, f"says what to do: {row}"
    assert scp.moves == 1, "a permanent failure is not retried"


def test_series_without_a_count_are_unknown_not_complete(tmp_path: Path) -> None:
    """No NumberOfSeriesRelatedInstances in the PACS's answers: everything arrives, but
    nothing says it is all there: ``unknown``, with what was received."""
    archive = make_archive(1, 1, (3, 2))
    port = free_port()
    with _misbehaving(archive, port, series_counts=False) as scp:
        result, rows = _pull_from(scp, tmp_path, port, archive)
    assert result.returncode == 1, result.stderr[-3000:]
    for series in all_series(archive):
        row = rows[series.series_instance_uid]
        assert row["state"] == "unknown", row
        assert (row["expected"], row["received"]) == (None, len(series)), row
    assert len(stored_by_uid(tmp_path / "storage")) == 5


@pytest.mark.parametrize("refusal", ["refuse-model", "no-roles"])
def test_a_refused_c_get_says_to_try_c_move(tmp_path: Path, refusal: str) -> None:
    archive = make_archive(1, 1, (2,))
    [series] = all_series(archive)
    port = free_port()
    with _misbehaving(archive, port, get=refusal) as scp:
        result, rows = _pull_from(scp, tmp_path, port, archive, "--retries", "0", method="get")
    assert result.returncode == 1, result.stderr[-3000:]
    row = rows[series.series_instance_uid]
    assert row["state"] == "failed", row
    assert "--method move" in _words(row), row
    assert stored_by_uid(tmp_path / "storage") == {}


# --- killed and run again ---------------------------------------------------------------------


def test_a_killed_pull_run_again_retrieves_nothing_complete_twice(tmp_path: Path) -> None:
    """Five series; the third retrieve stalls; the pull is killed (SIGKILL) there and run
    again with the same query file: the series completed before the kill are skipped, the
    rest retrieved, and the whole is complete."""
    archive = make_archive(1, 1, (2, 2, 3, 2, 2))
    port = free_port()
    with _misbehaving(archive, port) as scp:
        scp.stall_from = 3
        queries = write_queries(
            tmp_path / "queries.json",
            [{"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": archive[0].study_instance_uid}],
        )
        env = pull_env(tmp_path / "storage", port, f"{scp.aet}={HOST}:{scp.port}")
        args = ("--pacs", scp.aet, "--serve", "--json", "--stall", "60", str(queries))
        proc = subprocess.Popen(
            pull_command(*args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert scp.stalled.wait(DEADLINE), "the third retrieve never came"
        finally:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
        before = dict(scp.retrieves)
        assert len(before) == 3 and sorted(before.values()) == [1, 1, 1], before
        done_before = [
            uid for uid in before if scp.sent_in_series(uid) == len(_series(archive, uid))
        ]
        assert len(done_before) == 2, (before, err[-2000:])

        scp.stall_from = None
        result = run_pull(*args, env=env, timeout=DEADLINE)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = report(result)
        for series in all_series(archive):
            uid = series.series_instance_uid
            assert rows[uid]["state"] == "complete", rows[uid]
            assert rows[uid]["received"] == len(series), rows[uid]
            expected = 1 if uid in done_before else (2 if uid in before else 1)
            assert scp.retrieves[uid] == expected, (uid, dict(scp.retrieves), done_before)
        for uid in done_before:
            for sop in _series(archive, uid).sop_instance_uids:
                assert scp.sent[sop] == 1, f"{sop} of a series complete before the kill sent again"
    assert set(stored_by_uid(tmp_path / "storage")) == {
        str(ds.SOPInstanceUID) for ds in all_datasets(archive)
    }


def _series(archive: list[Study], uid: str) -> Series:
    [series] = [s for s in all_series(archive) if s.series_instance_uid == uid]
    return series
