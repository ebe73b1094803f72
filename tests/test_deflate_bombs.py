"""Deflated data sets (PS3.5 §A.5) are inflated a slice at a time on the blocking pool, never
on the async workers, within bounds (OXIDIP_INFLATE_MAX_MIB, OXIDIP_INFLATE_MAX_RATIO): a
deflate bomb gets A701 with an ErrorComment and nothing is stored, while other associations
are answered meanwhile.
"""

import os
import struct
import threading
import time
import zlib

from pydicom.uid import generate_uid

from oxidip import InstanceFailed
from tests.helpers.checks import assert_nothing_stored, assert_receiver_works
from tests.helpers.dicom import encode_dataset, explicit_le_element, make_dataset
from tests.helpers.pdu import (
    DEFLATED_LE,
    EXPLICIT_LE,
    P_DATA_TF,
    SECONDARY_CAPTURE,
    VERIFICATION,
    Context,
    RawClient,
    c_store_rq,
    p_data,
    pdv,
)
from tests.helpers.receiver import RunningReceiver, of_type

MIB = 1 << 20
GIB = 1 << 30


def _flushed(data: bytes) -> bytes:
    """``data`` deflated (raw, as PS3.5 §A.5 wants) up to a full flush: byte-aligned, not the
    final block, and independent of what came before, so such pieces can be concatenated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


#: One GiB of zeros, deflated: 1 MiB (shared by every bomb of a test run).
_GIB_OF_ZEROS = _flushed(bytes(MIB)) * 1024


def _deflate_bomb(sop_instance: str, gib: int) -> list[bytes]:
    """A well-formed data set that inflates to ``gib`` GiB of zeros (private OB elements of
    1 GiB each, before the identifying attributes), deflated about 1000:1, in pieces to send
    one after the other. Built from one compressed MiB of zeros repeated, so that making it
    costs nothing and its pieces are the same few objects."""
    head = explicit_le_element(0x0008_0016, "UI", SECONDARY_CAPTURE.encode())
    head += explicit_le_element(0x0008_0018, "UI", sop_instance.encode())
    head += explicit_le_element(0x0009_0010, "LO", b"BOMB")
    pieces = [_flushed(head)]
    for n in range(gib):
        header = struct.pack("<HH2sHI", 0x0009, 0x1001 + n, b"OB", 0, GIB)
        pieces += [_flushed(header), _GIB_OF_ZEROS]
    tail = explicit_le_element(0x0010_0020, "LO", b"PAT")
    tail += explicit_le_element(0x0020_000D, "UI", b"1.2.3.4")
    tail += explicit_le_element(0x0020_000E, "UI", b"1.2.3.4.5")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    pieces += [compressor.compress(tail), compressor.flush()]
    return pieces


def _send_bomb(rx: RunningReceiver, sop_instance: str, bomb: list[bytes]) -> tuple[int, str | None]:
    """Sends the bomb's data set in one P-DATA-TF (one fragment of up to 64 MiB, which the
    receiver tolerates outside strict mode): the largest single piece of work a peer can hand
    over at once."""
    with RawClient(rx.host, rx.port, timeout=120) as client:
        client.associate_ok(
            calling="BOMB", contexts=[Context(1, SECONDARY_CAPTURE, [DEFLATED_LE])], max_pdu=0
        )
        command = c_store_rq(1, SECONDARY_CAPTURE, sop_instance)
        client.send(p_data(pdv(1, command, command=True, last=True)))
        length = sum(map(len, bomb))
        # The PDU and PDV headers (PS3.8 §9.3.5): PDV length counts its 2 header bytes; the
        # data set follows piece by piece, never joined.
        client.send(struct.pack(">BBIIBB", P_DATA_TF, 0, length + 6, length + 2, 1, 0x02))
        for piece in bomb:
            client.send(piece)
        rsp = client.read_response(120)
        client.release()
    return rsp.status, rsp.error_comment


def _assert_bomb_refused(
    rx: RunningReceiver, uid: str, status: int, comment: str | None, variable: str
) -> None:
    assert status == 0xA701, (hex(status), comment)
    assert comment and variable in comment, comment
    events = rx.wait_for(
        lambda evs: any(isinstance(e, InstanceFailed) and e.sop_instance_uid == uid for e in evs),
        what=f"InstanceFailed for {uid}",
    )
    (failure,) = [e for e in of_type(events, InstanceFailed) if e.sop_instance_uid == uid]
    assert failure.status == 0xA701
    assert_nothing_stored(rx, uid)


def test_deflate_bomb_over_the_ratio_is_refused(start_receiver) -> None:
    """Default bounds: a data set inflating ~1000:1 is refused once it passes the ratio."""
    rx = start_receiver()
    uid = generate_uid()
    status, comment = _send_bomb(rx, uid, _deflate_bomb(uid, 1))
    _assert_bomb_refused(rx, uid, status, comment, "OXIDIP_INFLATE_MAX_RATIO")
    assert_receiver_works(rx)


def test_deflate_bombs_do_not_delay_other_associations(start_receiver) -> None:
    """As many bombs at once as the machine has cores (so as many as the runtime has async
    workers), each one P-DATA-TF that inflates to 40 GiB, refused at the size bound (the
    ratio bound lifted so that each takes seconds of CPU). Meanwhile another association's
    C-ECHOs and C-STOREs are each answered within a second; inflating on the async workers,
    they would wait for a bomb to finish."""
    rx = start_receiver(INFLATE_MAX_MIB=2048, INFLATE_MAX_RATIO=1_000_000)
    bombs = max(os.cpu_count() or 1, 2)
    payloads = {uid: _deflate_bomb(uid, 40) for uid in (generate_uid() for _ in range(bombs))}
    uids = list(payloads)
    results: dict[str, tuple[int, str | None]] = {}

    def send(uid: str) -> None:
        results[uid] = _send_bomb(rx, uid, payloads[uid])

    with RawClient(rx.host, rx.port) as other:
        other.associate_ok(
            calling="BYSTANDER",
            contexts=[Context(1, VERIFICATION), Context(3, SECONDARY_CAPTURE, [EXPLICIT_LE])],
        )
        senders = [threading.Thread(target=send, args=(uid,)) for uid in uids]
        for sender in senders:
            sender.start()
        slowest, answered = 0.0, 0
        while any(sender.is_alive() for sender in senders):
            started = time.monotonic()
            assert other.c_echo(1, message_id=answered + 1).status == 0x0000
            ds = make_dataset()
            rsp = other.c_store(3, SECONDARY_CAPTURE, str(ds.SOPInstanceUID), encode_dataset(ds))
            assert rsp.status == 0x0000, rsp
            slowest = max(slowest, time.monotonic() - started)
            answered += 1
        for sender in senders:
            sender.join()
        other.release()
    assert answered >= 1, "the bombs were answered before anything else was tried"
    assert slowest < 1.0, f"an echo and a store took {slowest:.2f} s while bombs inflated"
    for uid in uids:
        _assert_bomb_refused(rx, uid, *results[uid], "OXIDIP_INFLATE_MAX_MIB")
