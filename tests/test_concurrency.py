"""Many associations at once, each pushing its own freshly generated instances: every instance
is stored exactly once, nothing is lost, one InstanceStored event and one file per instance.

Two senders: 50 dcmtk storescu processes started together (real SCUs), and 50 raw-socket
clients in threads that all associate first and pass a barrier before sending, so the 50
associations certainly overlap.

(pynetdicom is not used here: with 50 associations in one process its requestor sometimes
misses a C-STORE response and aborts after its DIMSE timeout; the same happens against dcmtk
``storescp --fork``, so it is pynetdicom's, not the receiver's.)
"""

import subprocess
import threading
from collections import Counter
from pathlib import Path

from pydicom.uid import generate_uid

from tests.helpers.dicom import (
    SIMPLE_TEMPLATE,
    encode_dataset,
    make_dataset,
    read_part10,
    simple_path,
    stored_files,
    temp_files,
    write_part10,
)
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, Context, RawClient
from tests.helpers.receiver import RunningReceiver
from tests.helpers.tools import dcmtk_env, require_tool

ASSOCIATIONS = 50
INSTANCES_EACH = 8


def _generate(study: str) -> dict[int, list]:
    return {
        index: [
            make_dataset(
                study_uid=study,
                series_uid=series,
                instance_number=n + 1,
                patient_id=f"P{index:03d}",
                pixel_bytes=1024,
            )
            for n in range(INSTANCES_EACH)
        ]
        for index, series in ((i, generate_uid()) for i in range(ASSOCIATIONS))
    }


def _check_everything_stored_once(
    rx: RunningReceiver, work: dict[int, list], aet: str, sent: dict[str, bytes]
) -> None:
    total = ASSOCIATIONS * INSTANCES_EACH
    closed = rx.wait_closed(ASSOCIATIONS, timeout=120)
    stored = rx.wait_stored(total, timeout=120)
    assert len(stored) == total, f"{len(stored)} InstanceStored events for {total} instances"
    assert not rx.failed(), rx.failed()
    counts = Counter(e.attributes.SOPInstanceUID for e in stored)
    assert set(counts) == set(sent), "instances missing or unexpected"
    assert max(counts.values()) == 1, "an instance was reported stored twice"
    assert len({e.association_id for e in stored}) == ASSOCIATIONS
    assert len(closed) == ASSOCIATIONS
    assert len({c.association_id for c in closed}) == ASSOCIATIONS
    bad = [c for c in closed if c.outcome != "released" or c.instances_stored != INSTANCES_EACH]
    assert not bad, bad

    expected_paths = {
        str(ds.SOPInstanceUID): simple_path(
            f"{aet}{index:02d}",
            {
                "StudyInstanceUID": str(ds.StudyInstanceUID),
                "SeriesInstanceUID": str(ds.SeriesInstanceUID),
                "SOPInstanceUID": str(ds.SOPInstanceUID),
            },
        )
        for index, datasets in work.items()
        for ds in datasets
    }
    assert len(stored_files(rx.root)) == total
    assert temp_files(rx.root) == []
    for event in stored:
        path = Path(event.path)
        uid = event.attributes.SOPInstanceUID
        assert path.relative_to(rx.root).as_posix() == expected_paths[uid]
        assert read_part10(path).dataset == sent[uid]


def test_fifty_storescu_processes(start_receiver, tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, MAX_ASSOCIATIONS=200)
    work = _generate(generate_uid())
    sent: dict[str, bytes] = {}
    for index, datasets in work.items():
        directory = tmp_path / f"sender{index:02d}"
        directory.mkdir()
        for n, ds in enumerate(datasets):
            sent[str(ds.SOPInstanceUID)] = write_part10(directory / f"{n}.dcm", ds)
    procs = [
        subprocess.Popen(
            [
                storescu,
                "-aet",
                f"STORESCU{index:02d}",
                "-aec",
                "OXIDIP",
                "--scan-directories",
                rx.host,
                str(rx.port),
                str(tmp_path / f"sender{index:02d}"),
            ],
            env=dcmtk_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in work
    ]
    failures = []
    try:
        for index, proc in enumerate(procs):
            output, _ = proc.communicate(timeout=180)
            if proc.returncode != 0:
                failures.append(f"storescu {index}: exit {proc.returncode}: {output[-500:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert not failures, failures
    _check_everything_stored_once(rx, work, "STORESCU", sent)


def test_fifty_overlapping_raw_associations(start_receiver) -> None:
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, MAX_ASSOCIATIONS=200)
    work = _generate(generate_uid())
    sent = {
        str(ds.SOPInstanceUID): encode_dataset(ds, EXPLICIT_LE) for d in work.values() for ds in d
    }
    barrier = threading.Barrier(ASSOCIATIONS, timeout=60)
    statuses: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def push(index: int) -> None:
        try:
            with RawClient(rx.host, rx.port, timeout=60) as client:
                client.associate_ok(
                    calling=f"RAW{index:02d}",
                    contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])],
                )
                barrier.wait()  # every association is established before anyone sends
                for n, ds in enumerate(work[index]):
                    uid = str(ds.SOPInstanceUID)
                    rsp = client.c_store(1, SECONDARY_CAPTURE, uid, sent[uid], message_id=n + 1)
                    with lock:
                        statuses[uid] = rsp.status
                client.release()
        except Exception as error:  # noqa: BLE001 - collected and reported below
            barrier.abort()
            with lock:
                errors.append(f"association {index}: {error!r}")

    threads = [threading.Thread(target=push, args=(i,)) for i in range(ASSOCIATIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(t.is_alive() for t in threads), "senders still running after 180 s"
    assert not errors, errors
    assert len(statuses) == len(sent)
    bad = {uid: s for uid, s in statuses.items() if s != 0x0000}
    assert not bad, f"non-success statuses: {bad}"
    _check_everything_stored_once(rx, work, "RAW", sent)
