"""``oxidip bench send`` (the Rust load generator) against an in-process oxidip receiver and
against dcmtk ``storescp``: every instance stored, and the report says so."""

import json
import socket
import subprocess
from pathlib import Path

import pytest

from oxidip.cli import main

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME = "1.2.840.10008.5.1.4.1.1.7.3"
from tests.conftest import StartReceiver
from tests.helpers.receiver import HOST, RunningReceiver
from tests.helpers.tools import dcmtk_env, require_tool, wait_listening


def send(capsys: pytest.CaptureFixture[str], port: int, *extra: str) -> tuple[int, dict]:
    argv = ["bench", "send", "--host", HOST, "--port", str(port), "--json", *extra]
    status = main(argv)
    out = capsys.readouterr().out
    return status, json.loads(out)


def test_send_to_oxidip(receiver: RunningReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    aet = receiver.config.scp_aet
    status, report = send(
        capsys,
        receiver.port,
        "--aet",
        aet,
        "--calling-aet",
        "BENCHSCU",
        "--associations",
        "3",
        "--instances",
        "31",
        "--size",
        "5000",
        "--max-pdu",
        "4096",
        "--idle-associations",
        "2",
    )
    assert status == 0, report
    assert report["instances"] == 31 and report["failures"] == 0 and report["errors"] == []
    assert report["idle_associations"] == 2
    assert report["instances_per_second"] > 0 and report["megabytes_per_second"] > 0
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"] <= report["latency_max_ms"]
    stored = receiver.wait_stored(31)
    assert len({s.attributes.SOPInstanceUID for s in stored}) == 31
    assert len({s.attributes.SeriesInstanceUID for s in stored}) == 3
    assert len({s.attributes.StudyInstanceUID for s in stored}) == 1
    # File size: the ~5000-byte data set plus preamble and file meta.
    assert all(4000 < s.size <= 5600 for s in stored), [s.size for s in stored]
    closed = receiver.wait_closed(5)
    assert {c.outcome for c in closed} == {"released"}
    # The idle ones stored nothing.
    assert sorted(c.instances_stored for c in closed)[:2] == [0, 0]


def test_send_rejected_reports_failure(
    start_receiver: StartReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = start_receiver(SCP_ENFORCE_AET=True)
    status, report = send(capsys, receiver.port, "--aet", "NOT-OXIDIP", "--instances", "4")
    assert status == 1
    assert report["instances"] == 0 and report["failures"] == 4
    assert "rejected" in report["errors"][0]


def test_ct_and_multiframe_images(
    receiver: RunningReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    aet = ["--aet", receiver.config.scp_aet]
    status, ct = send(capsys, receiver.port, *aet, "--image", "ct", "--instances", "2")
    assert status == 0 and ct["instances"] == 2, ct
    status, frames = send(
        capsys,
        receiver.port,
        *aet,
        "--image",
        "multiframe",
        "--size",
        str(3 << 20),
        "--instances",
        "2",
    )
    assert status == 0 and frames["instances"] == 2, frames
    stored = receiver.wait_stored(4)
    by_class: dict[str | None, list[int]] = {}
    for s in stored:
        by_class.setdefault(s.attributes.SOPClassUID, []).append(s.size)
    # CT: 512 x 512 x 2 bytes of pixels; multi-frame: 6 such frames in 3 MiB.
    assert all(512 * 512 * 2 < size < 512 * 512 * 2 + 2048 for size in by_class[CT_IMAGE])
    assert all(6 * 512 * 512 * 2 < size < 6 * 512 * 512 * 2 + 2048 for size in by_class[MULTIFRAME])


def test_human_report(receiver: RunningReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "send", "--port", str(receiver.port), "--aet", receiver.config.scp_aet]
    assert main([*argv, "--instances", "5", "--size", "1000"]) == 0
    out = capsys.readouterr().out
    assert "5 stored, 0 failed" in out and "instances/s" in out and "p99" in out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def test_send_to_dcmtk_storescp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storescp = require_tool("storescp")
    port = _free_port()
    out_dir = tmp_path / "storescp"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [storescp, "-aet", "STORESCP", "-od", str(out_dir), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(HOST, port, proc)
        status, report = send(
            capsys,
            port,
            "--aet",
            "STORESCP",
            "--associations",
            "2",
            "--instances",
            "20",
            "--size",
            "3000",
            "--max-pdu",
            "0",
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert status == 0, report
    assert report["instances"] == 20 and report["failures"] == 0
    files = [p for p in out_dir.iterdir() if p.is_file()]
    assert len(files) == 20, sorted(p.name for p in files)
    assert all(p.read_bytes()[128:132] == b"DICM" for p in files)
