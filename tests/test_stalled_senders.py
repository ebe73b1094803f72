"""Writing a large data set holds no thread while its sender is silent: stalled senders do not
add threads to the receiver, and another large instance is stored meanwhile.
"""

import time
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import generate_uid

from tests.helpers.dicom import encode_dataset, make_dataset, read_part10, temp_files
from tests.helpers.pdu import (
    EXPLICIT_LE,
    SECONDARY_CAPTURE,
    Context,
    RawClient,
    c_store_rq,
    p_data,
    pdv,
)
from tests.helpers.receiver import RunningReceiver

MIB = 1 << 20


def _threads() -> int:
    """Threads of this process, where the receiver runs (/proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line in /proc/self/status")


def _large_dataset(pixel_bytes: int) -> tuple[str, bytes]:
    uid = generate_uid()
    ds = make_dataset(sop_instance_uid=uid, pixel_bytes=pixel_bytes)
    return uid, encode_dataset(ds)


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _store_large(rx: RunningReceiver, calling: str) -> None:
    uid, data = _large_dataset(4 * MIB)
    since = rx.mark()
    with RawClient(rx.host, rx.port) as client:
        client.associate_ok(
            calling=calling, contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])]
        )
        rsp = client.c_store(1, SECONDARY_CAPTURE, uid, data)
        client.release()
    assert rsp.status == 0x0000, rsp
    (event,) = rx.wait_stored(1, since=since)
    assert read_part10(event.path).dataset == data


def test_stalled_senders_hold_no_thread(start_receiver) -> None:
    """20 senders each stop after 2 MiB of a 16 MiB data set (past the part written inline):
    the receiver's thread count stays where it was, and another large instance is stored
    while they sit there."""
    senders = 20
    rx = start_receiver(IDLE_TIMEOUT=120)
    _store_large(rx, "WARMUP")
    baseline = _threads()
    stalled: list[RawClient] = []
    try:
        for n in range(senders):
            uid, data = _large_dataset(16 * MIB)
            client = RawClient(rx.host, rx.port)
            stalled.append(client)
            client.associate_ok(
                calling=f"STALL{n}", contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])]
            )
            client.send(
                p_data(pdv(1, c_store_rq(1, SECONDARY_CAPTURE, uid), command=True, last=True))
            )
            size = client.max_fragment()
            sent = 0
            while sent < 2 * MIB + MIB // 4:
                client.send(p_data(pdv(1, data[sent : sent + size], command=False, last=False)))
                sent += size
            # Every byte sent is at the receiver once its temp file holds most of them
            # (the last few fragments may wait in memory for the next write).
            _wait_until(
                lambda n=n: (
                    len(temp_files(rx.root)) == n + 1
                    and all(p.stat().st_size >= 3 * MIB // 2 for p in temp_files(rx.root))
                ),
                f"sender {n}'s data set written",
            )
        grown = _threads() - baseline
        assert grown <= 4, f"{senders} stalled senders added {grown} threads"
        _store_large(rx, "MEANWHILE")
    finally:
        for client in stalled:
            client.abort()
    _wait_until(lambda: temp_files(rx.root) == [], "the stalled senders' temp files removed")
