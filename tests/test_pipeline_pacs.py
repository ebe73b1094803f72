"""`oxidip serve` with a PACS that answers the expected-count C-FIND correctly, wrongly, empty,
slowly or not at all: the series states say which, and reception never waits for it.

Each test sends one series with dcmtk's storescu (calling AE "MODALITY") to a real
`oxidip serve`, whose OXIDIP_PACS_ADDRESS points MODALITY at a pynetdicom query SCP (or a
server that never answers), then reads the registry with `oxidip series --json`.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicom import make_dataset, write_part10
from tests.helpers.process import ServerProcess
from tests.helpers.query_scp import QueryScp, SilentServer
from tests.helpers.senders import storescu

SENDER = "MODALITY"
INSTANCES = 12


def write_series(directory: Path, count: int = INSTANCES) -> tuple[str, list[Path]]:
    """``count`` instances of one new series as Part 10 files; returns (series UID, files)."""
    first = make_dataset(instance_number=1)
    series_uid = str(first.SeriesInstanceUID)
    files = []
    for number in range(1, count + 1):
        ds = make_dataset(
            study_uid=str(first.StudyInstanceUID), series_uid=series_uid, instance_number=number
        )
        path = directory / f"{number:04}.dcm"
        write_part10(path, ds)
        files.append(path)
    return series_uid, files


def series_rows(root: Path) -> dict[str, dict[str, Any]]:
    env = {"OXIDIP_FILES_ROOT": str(root), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "oxidip", "series", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["series_instance_uid"]: row for row in rows}


def wait_for_row(root: Path, series_uid: str, done: Any, timeout: float = 60.0) -> dict:
    """Polls the registry until ``done(row)`` holds for the series; returns the row."""
    deadline = time.monotonic() + timeout
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        row = series_rows(root).get(series_uid)
        if row is not None and done(row):
            return row
        time.sleep(0.2)
    raise AssertionError(f"series {series_uid} never reached the wanted state; last: {row}")


def ended(row: dict[str, Any]) -> bool:
    """Every instance registered and the association's end taken into account."""
    return bool(row["received"] == INSTANCES and row["state"] != "receiving")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Starts `oxidip serve` with OXIDIP_PACS_ADDRESS set to what the test gives."""
    servers: list[ServerProcess] = []

    def start(pacs_port: int, **settings: str) -> tuple[ServerProcess, Path]:
        root = tmp_path / "data"
        env = {
            "OXIDIP_LISTENER_HOST": "127.0.0.1",
            "OXIDIP_LISTENER_PORT": "0",
            "OXIDIP_FILES_ROOT": str(root),
            "OXIDIP_PACS_ADDRESS": f"{SENDER}=127.0.0.1:{pacs_port}",
            "OXIDIP_CFIND_RETRIES": "0",
            **{f"OXIDIP_{key}": value for key, value in settings.items()},
        }
        server = ServerProcess(env)
        servers.append(server)
        server.wait_listening()
        return server, root

    yield start
    for server in servers:
        server.terminate()


def send(server: ServerProcess, files: list[Path]) -> None:
    assert server.port is not None
    result = storescu("127.0.0.1", server.port, files, calling_aet=SENDER)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("answer", "state", "expected", "status"),
    [
        (INSTANCES, "complete", INSTANCES, "known"),
        (INSTANCES - 2, "overfull", INSTANCES - 2, "known"),
        (INSTANCES + 5, "incomplete", INSTANCES + 5, "known"),
    ],
)
def test_expected_counts_decide_the_state(
    serve: Any, tmp_path: Path, answer: int, state: str, expected: int, status: str
) -> None:
    series_uid, files = write_series(tmp_path)
    with QueryScp({series_uid: answer}) as pacs:
        server, root = serve(pacs.port)
        send(server, files)
        row = wait_for_row(root, series_uid, lambda r: ended(r) and r["expected"] is not None)
    assert row["state"] == state, row
    assert (row["received"], row["expected"], row["expected_status"]) == (
        INSTANCES,
        expected,
        status,
    )


@pytest.mark.parametrize("mode", ["empty", "no-match", "garbage"])
def test_unusable_answers_leave_the_count_unknown(serve: Any, tmp_path: Path, mode: str) -> None:
    series_uid, files = write_series(tmp_path)
    with QueryScp({series_uid: INSTANCES}, mode=mode) as pacs:
        server, root = serve(pacs.port)
        send(server, files)
        row = wait_for_row(
            root, series_uid, lambda r: ended(r) and r["expected_status"] != "pending"
        )
    assert row["state"] == "finalized-unknown", row
    assert (row["expected"], row["expected_status"], row["received"]) == (
        None,
        "unknown",
        INSTANCES,
    )
    assert row["expected_detail"], row


def test_a_failing_pacs_is_an_error_with_its_reason(serve: Any, tmp_path: Path) -> None:
    series_uid, files = write_series(tmp_path)
    with QueryScp({series_uid: INSTANCES}, mode="failure", status=0xA700) as pacs:
        server, root = serve(pacs.port)
        send(server, files)
        row = wait_for_row(root, series_uid, lambda r: ended(r) and r["expected_status"] == "error")
    assert "0xA700" in row["expected_detail"], row
    assert row["state"] == "finalized-unknown"


def test_a_silent_pacs_never_holds_up_reception(serve: Any, tmp_path: Path) -> None:
    """The PACS accepts the connection and never answers. The sender is done (every instance
    acknowledged and registered) while the lookup is still waiting; it ends as an error."""
    series_uid, files = write_series(tmp_path)
    with SilentServer() as pacs:
        server, root = serve(pacs.port, CFIND_TIMEOUT="8")
        send(server, files)
        row = wait_for_row(root, series_uid, ended)
        # Structural, not a timing assertion: with an 8 s C-FIND timeout and no answer, the
        # count can only still be pending here if reception did not wait for it.
        assert row["expected_status"] == "pending", row
        assert row["state"] == "finalized-unknown", row
        row = wait_for_row(root, series_uid, lambda r: r["expected_status"] == "error", 60)
    assert "timed out" in row["expected_detail"], row
    assert row["state"] == "finalized-unknown"


def test_a_late_count_completes_a_finalized_series(serve: Any, tmp_path: Path) -> None:
    """The association ends before the PACS answers (slowly): the series is first
    finalized-unknown, then complete when the count arrives."""
    series_uid, files = write_series(tmp_path)
    with QueryScp({series_uid: INSTANCES}, delay=4.0) as pacs:
        server, root = serve(pacs.port, CFIND_TIMEOUT="30")
        send(server, files)
        row = wait_for_row(root, series_uid, ended)
        assert (row["state"], row["expected_status"]) == ("finalized-unknown", "pending"), row
        row = wait_for_row(root, series_uid, lambda r: r["state"] == "complete")
    assert (row["expected"], row["received"]) == (INSTANCES, INSTANCES)
