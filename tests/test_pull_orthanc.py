"""``oxidip pull`` end to end against Orthanc, the smallest case of each method: C-MOVE to
the in-process receiver (``--serve``) and C-GET; the report says complete with the expected
and registered counts, and a rerun skips what is complete (nothing retrieved again). (The
misbehaving peers, kill and resume, byte comparisons: the pullqa helper's tests.)"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.helpers.orthanc import OrthancServer, free_port
from tests.test_pull_find import load

OUR_AET = "OXIDIP"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[tuple[OrthancServer, int]]:
    port = free_port()
    with OrthancServer(
        tmp_path / "orthanc", modalities={"oxidip": (OUR_AET, "127.0.0.1", port)}
    ) as server:
        yield server, port


def pull(
    orthanc: OrthancServer, port: int, root: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OXIDIP_FILES_ROOT": str(root),
        "OXIDIP_SCP_AET": OUR_AET,
        "OXIDIP_LISTENER_PORT": str(port),
        "OXIDIP_PACS_ADDRESS": f"{orthanc.aet}={orthanc.host}:{orthanc.dicom_port}",
        "OXIDIP_SHUTDOWN_TIMEOUT": "5",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "oxidip",
            "pull",
            "--json",
            "--timeout",
            "10",
            "--stall",
            "20",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def results(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return {str(r["series_instance_uid"]): r for r in lines}


@pytest.mark.parametrize("method", ["move", "get"])
def test_pull_by_each_method_is_complete_and_a_rerun_retrieves_nothing(
    orthanc: tuple[OrthancServer, int], tmp_path: Path, method: str
) -> None:
    server, port = orthanc
    patient = f"P{generate_uid()[-8:]}"
    study = load(server, patient, [3, 2])
    root = tmp_path / "files"
    args = ["-k", f"PatientID={patient}", "--method", method, "--serve"]
    done = pull(server, port, root, *args)
    assert done.returncode == 0, done.stderr
    got = results(done)
    assert len(got) == 2
    for result in got.values():
        assert result["state"] == "complete", result
        assert result["received"] == result["expected"]
        assert result["study_instance_uid"] == study
        assert Path(str(result["path"])).is_dir()
    assert sorted(int(str(r["expected"])) for r in got.values()) == [2, 3]
    files = sorted(p for p in root.rglob("*.dcm"))
    assert len(files) == 5
    before = {p: p.stat().st_mtime_ns for p in files}

    again = pull(server, port, root, *args)
    assert again.returncode == 0, again.stderr
    assert {uid: r["state"] for uid, r in results(again).items()} == dict.fromkeys(got, "complete")
    assert "series retrieval started" not in again.stderr, "nothing retrieved again"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.dcm")} == before
