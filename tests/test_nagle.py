"""Peers that leave Nagle's algorithm on (Debian's dcmtk 3.6.7 without ``TCP_NODELAY=1`` in its
environment, Orthanc 1.10, which is built on dcmtk) write a PDU header and its body
separately and hold the body until the header is acknowledged. The receiver, and our own
requestor, acknowledge at once (TCP_QUICKACK after every read), so such a peer no longer
waits ~40 ms for a delayed ACK per message.

Functional bounds, not benchmarks (``bench/nagle.py`` measures): 200 messages that each
waited for a delayed ACK would take 8 s; the bound is half of that, where the runs here take
a fraction of a second.
"""

import os
import subprocess
import time
from pathlib import Path

from pydicom.uid import generate_uid

from oxidip._boundary import LoadOptions
from oxidip.bench.send import EXPLICIT_VR_LITTLE_ENDIAN, send_load
from tests.helpers.dicom import make_dataset, write_part10
from tests.helpers.orthanc import OrthancServer, free_port
from tests.helpers.receiver import HOST, RunningReceiver
from tests.helpers.tools import require_tool, wait_listening

INSTANCES = 200
#: Half of what INSTANCES messages held ~40 ms each by a delayed ACK would take.
BOUND = INSTANCES * 0.040 / 2


def _nagle_on() -> dict[str, str]:
    """This environment without ``TCP_NODELAY``: dcmtk (and Orthanc) leave Nagle on."""
    return {key: value for key, value in os.environ.items() if key != "TCP_NODELAY"}


def _small_series(directory: Path) -> list[Path]:
    directory.mkdir()
    study, series = generate_uid(), generate_uid()
    files = []
    for n in range(INSTANCES):
        path = directory / f"{n:04d}.dcm"
        ds = make_dataset(study_uid=study, series_uid=series, instance_number=n + 1)
        write_part10(path, ds)
        files.append(path)
    return files


def test_a_nagle_on_storescu_is_not_held_by_delayed_acks(
    receiver: RunningReceiver, tmp_path: Path
) -> None:
    series = tmp_path / "series"
    _small_series(series)
    args = [require_tool("storescu"), "-aec", receiver.config.scp_aet, HOST, str(receiver.port)]
    started = time.monotonic()
    result = subprocess.run(
        [*args, "--scan-directories", str(series)],
        env=_nagle_on(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert len(receiver.wait_stored(INSTANCES)) == INSTANCES
    assert took < BOUND, f"{INSTANCES} instances took {took:.2f} s"


def test_a_stock_orthanc_push_is_not_held_by_delayed_acks(
    receiver: RunningReceiver, tmp_path: Path
) -> None:
    with OrthancServer(tmp_path / "orthanc", environment=_nagle_on()) as orthanc:
        for path in _small_series(tmp_path / "series"):
            orthanc.upload(path)
        [series] = orthanc.series()
        orthanc.add_modality("oxidip", receiver.config.scp_aet, HOST, receiver.port)
        started = time.monotonic()
        job = orthanc.store_series("oxidip", series["ID"])
        took = time.monotonic() - started
    assert job.get("FailedInstancesCount", 0) == 0, job
    assert len(receiver.wait_stored(INSTANCES)) == INSTANCES
    assert took < BOUND, f"Orthanc pushed {INSTANCES} instances in {took:.2f} s"


def test_our_requestor_is_not_held_by_a_nagle_on_storescp(tmp_path: Path) -> None:
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    with subprocess.Popen(
        [require_tool("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)],
        env=_nagle_on(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as storescp:
        try:
            wait_listening(HOST, port, storescp)
            options = LoadOptions(
                addr=f"{HOST}:{port}",
                calling_aet="OXIDIP",
                called_aet="STORESCP",
                associations=1,
                instances=INSTANCES,
                size=1024,
                transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
                max_pdu_length=16384,
            )
            report = send_load(options)
        finally:
            storescp.terminate()
    assert (report.instances, report.failures, report.errors) == (INSTANCES, 0, []), report
    assert len(list(out.iterdir())) == INSTANCES
    assert report.seconds < BOUND, f"{INSTANCES} instances took {report.seconds:.2f} s"
