"""Bad input at the upper layer (PS3.8), each followed by a normal association that still
works: random bytes, truncated PDUs, length fields that lie, PDUs out of order, oversized PDUs
in strict mode, aborts in the middle of an instance, and the association negotiation answers
(unknown SOP class, AE titles, protocol version, association limit).

A-ABORT sources: in Sta2 (no A-ASSOCIATE-RQ yet) PS3.8 prescribes AA-1, whose A-ABORT has
source 0 (service user), while the brief for oxidip says source 2 for malformed PDUs; both are
accepted there. Once associated (Sta6), an unexpected or invalid PDU is AA-8: source 2 with a
reason.
"""

import random
import struct
import time

import pytest

from tests.helpers.checks import assert_receiver_works
from tests.helpers.dicom import (
    SIMPLE_TEMPLATE,
    encode_dataset,
    make_dataset,
    read_part10,
    stored_files,
    temp_files,
)
from tests.helpers.pdu import (
    ABORT,
    ASSOCIATE_RJ,
    CT_IMAGE,
    EXPLICIT_LE,
    P_DATA_TF,
    SECONDARY_CAPTURE,
    VERIFICATION,
    AssociateAc,
    AssociateRj,
    Context,
    Pdu,
    RawClient,
    abort,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    p_data,
    pdu,
    pdv,
    release_rq,
    user_item,
)
from tests.helpers.receiver import RunningReceiver

PROVIDER_REASONS = {0, 1, 2, 4, 5, 6}


def _assert_abort(
    received: list[Pdu], *, sources: set[int], reasons: set[int] | None = None
) -> None:
    aborts = [p for p in received if p.type == ABORT]
    assert aborts, f"expected an A-ABORT before the close, got {received}"
    others = [p for p in received if p.type != ABORT]
    assert not others, f"unexpected PDUs before the A-ABORT: {others}"
    source, reason = aborts[0].abort_source_reason()
    assert source in sources, f"A-ABORT source {source}, expected one of {sources}"
    if source == 2:
        allowed = PROVIDER_REASONS if reasons is None else reasons
        assert reason in allowed, f"A-ABORT reason {reason}, expected one of {allowed}"


# --- garbage before any association -------------------------------------------------------


def test_unknown_pdu_type_is_aborted(receiver: RunningReceiver) -> None:
    with RawClient(receiver.host, receiver.port) as client:
        client.send(pdu(0xA5, random.Random(1).randbytes(10)))
        received = client.expect_closed(timeout=10)
    _assert_abort(received, sources={0, 2}, reasons={1})
    assert_receiver_works(receiver)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_random_bytes(receiver: RunningReceiver, seed: int) -> None:
    """64 KiB of random bytes (first byte not a PDU type, so the server need not wait for a
    body): the connection is closed, with at most an A-ABORT first (the close may come as a
    reset, unread random bytes being discarded)."""
    rng = random.Random(seed)
    blob = bytes([rng.randrange(8, 256)]) + rng.randbytes(64 * 1024 - 1)
    with RawClient(receiver.host, receiver.port) as client:
        try:
            client.send(blob)
        except (BrokenPipeError, ConnectionResetError):
            pass  # already closed on the first bytes: fine
        received = client.expect_closed(timeout=10)
    assert all(p.type == ABORT for p in received), received
    assert_receiver_works(receiver)


def test_garbage_associate_rq_body(receiver: RunningReceiver) -> None:
    """A well-framed A-ASSOCIATE-RQ whose variable items are random: rejected or aborted,
    never accepted, and the connection closed."""
    rng = random.Random(5)
    body = struct.pack(">HH", 1, 0) + b"OXIDIP".ljust(16) + b"GARBAGE".ljust(16) + bytes(32)
    body += rng.randbytes(200)
    with RawClient(receiver.host, receiver.port) as client:
        client.send(pdu(0x01, body))
        received = client.expect_closed(timeout=10)
    assert received, "closed without an A-ASSOCIATE-RJ or A-ABORT"
    assert received[0].type in (ABORT, ASSOCIATE_RJ), received
    if received[0].type == ABORT:
        _assert_abort(received, sources={0, 2})
    assert_receiver_works(receiver)


def test_truncated_pdu_then_close(receiver: RunningReceiver) -> None:
    rq = associate_rq(contexts=[Context(1, VERIFICATION)])
    for cut in (3, 6, 30, len(rq) - 1):
        with RawClient(receiver.host, receiver.port) as client:
            client.send(rq[:cut])
    assert_receiver_works(receiver)


def test_truncated_pdu_inside_association_then_close(receiver: RunningReceiver) -> None:
    since = receiver.mark()
    ds = make_dataset(pixel_bytes=4096)
    data = encode_dataset(ds)
    with RawClient(receiver.host, receiver.port) as client:
        client.associate_ok(calling="CUTOFF", contexts=[Context(1, SECONDARY_CAPTURE)])
        client.send(
            p_data(
                pdv(1, c_store_rq(1, SECONDARY_CAPTURE, ds.SOPInstanceUID), command=True, last=True)
            )
        )
        whole = p_data(pdv(1, data, command=False, last=True))
        client.send(whole[: len(whole) // 2])
    (closed,) = receiver.wait_closed(1, since=since)
    assert closed.outcome == "connection-lost", closed
    assert closed.instances_stored == 0
    assert stored_files(receiver.root) == []
    assert temp_files(receiver.root) == []
    assert_receiver_works(receiver)


# --- length fields that lie ---------------------------------------------------------------


def test_lying_length_before_association(start_receiver) -> None:
    """An A-ASSOCIATE-RQ header announcing 1 GB, then 100 bytes and silence: the server must
    not wait forever (ARTIM, here 1 s) and must keep serving."""
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, ARTIM_TIMEOUT=1)
    started = time.monotonic()
    with RawClient(rx.host, rx.port) as client:
        rq = associate_rq()
        client.send(pdu(0x01, rq[6:106], length=1 << 30))
        received = client.expect_closed(timeout=10)
    assert time.monotonic() - started < 10
    assert all(p.type in (ABORT, ASSOCIATE_RJ) for p in received), received
    assert_receiver_works(rx)


@pytest.mark.parametrize("strict", [False, True])
def test_lying_length_inside_association(start_receiver, strict: bool) -> None:
    """A P-DATA-TF header announcing 1 GB, 100 bytes of it, then silence: strict mode aborts
    at once (over the maximum length), otherwise the idle timeout (1 s) aborts it; either way
    an A-ABORT (source 2), the connection closed, nothing left on disk."""
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, IDLE_TIMEOUT=1, SCP_STRICT=strict)
    since = rx.mark()
    ds = make_dataset()
    with RawClient(rx.host, rx.port) as client:
        client.associate_ok(calling="LIAR", contexts=[Context(1, SECONDARY_CAPTURE)])
        client.send(
            p_data(
                pdv(1, c_store_rq(1, SECONDARY_CAPTURE, ds.SOPInstanceUID), command=True, last=True)
            )
        )
        body = pdv(1, encode_dataset(ds)[:94], command=False, last=False)
        client.send(pdu(P_DATA_TF, body, length=1 << 30))
        received = client.expect_closed(timeout=15)
    _assert_abort(received, sources={2})
    (closed,) = rx.wait_closed(1, since=since)
    assert closed.outcome in ({"aborted"} if strict else {"timeout", "aborted"}), closed
    assert temp_files(rx.root) == []
    assert stored_files(rx.root) == []
    assert_receiver_works(rx)


def test_idle_association_times_out(start_receiver) -> None:
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, IDLE_TIMEOUT=1)
    since = rx.mark()
    with RawClient(rx.host, rx.port) as client:
        client.associate_ok(calling="SLEEPY", contexts=[Context(1, VERIFICATION)])
        received = client.expect_closed(timeout=15)
    _assert_abort(received, sources={2})
    (closed,) = rx.wait_closed(1, since=since)
    assert closed.outcome == "timeout", closed


# --- PDUs out of order --------------------------------------------------------------------

_ECHO_PDATA = p_data(pdv(1, c_echo_rq(1), command=True, last=True))


@pytest.mark.parametrize(
    ("name", "data", "reasons"),
    [
        ("P-DATA-TF", _ECHO_PDATA, {2}),
        ("A-RELEASE-RQ", release_rq(), {2}),
        ("A-ASSOCIATE-AC", pdu(0x02, bytes(68)), None),
    ],
)
def test_pdu_before_association(
    receiver: RunningReceiver, name: str, data: bytes, reasons: set[int] | None
) -> None:
    with RawClient(receiver.host, receiver.port) as client:
        client.send(data)
        received = client.expect_closed(timeout=10)
    _assert_abort(received, sources={0, 2}, reasons=reasons)
    assert_receiver_works(receiver)


@pytest.mark.parametrize(
    ("name", "data", "reasons"),
    [
        ("A-ASSOCIATE-RQ", associate_rq(contexts=[Context(1, VERIFICATION)]), {2}),
        ("A-ASSOCIATE-AC", pdu(0x02, bytes(68)), None),
        ("A-RELEASE-RP", pdu(0x06, bytes(4)), {2}),
    ],
)
def test_unexpected_pdu_in_association(
    receiver: RunningReceiver, name: str, data: bytes, reasons: set[int] | None
) -> None:
    since = receiver.mark()
    with RawClient(receiver.host, receiver.port) as client:
        client.associate_ok(calling="TWICE", contexts=[Context(1, VERIFICATION)])
        client.send(data)
        received = client.expect_closed(timeout=10)
    _assert_abort(received, sources={2}, reasons=reasons)
    (closed,) = receiver.wait_closed(1, since=since)
    assert closed.outcome == "aborted", closed
    assert_receiver_works(receiver)


def test_dataset_fragment_without_command(receiver: RunningReceiver) -> None:
    """A data set PDV with no C-STORE-RQ before it: an abort, not a crash."""
    with RawClient(receiver.host, receiver.port) as client:
        client.associate_ok(contexts=[Context(1, SECONDARY_CAPTURE)])
        client.send(p_data(pdv(1, b"\x08\x00\x16\x00UI\x02\x001\x00", command=False, last=True)))
        received = client.expect_closed(timeout=10)
    _assert_abort(received, sources={2})
    assert_receiver_works(receiver)


def test_pdv_on_unknown_context(receiver: RunningReceiver) -> None:
    with RawClient(receiver.host, receiver.port) as client:
        client.associate_ok(contexts=[Context(1, VERIFICATION)])
        client.send(p_data(pdv(99, c_echo_rq(1), command=True, last=True)))
        received = client.expect_closed(timeout=10)
    _assert_abort(received, sources={2})
    assert_receiver_works(receiver)


# --- maximum PDU length ---------------------------------------------------------------------


def _send_oversized(client: RawClient, ds_bytes: bytes, sop_instance: str, max_pdu: int) -> None:
    client.send(
        p_data(pdv(1, c_store_rq(1, SECONDARY_CAPTURE, sop_instance), command=True, last=True))
    )
    message = p_data(pdv(1, ds_bytes, command=False, last=True))
    assert len(message) - 6 > max_pdu
    client.send(message)


def test_oversized_pdu_strict_is_aborted(start_receiver) -> None:
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, SCP_STRICT=True, SCP_MAX_PDU_LENGTH=16384)
    since = rx.mark()
    ds = make_dataset(pixel_bytes=40000)
    with RawClient(rx.host, rx.port) as client:
        ac = client.associate_ok(calling="BIGPDU", contexts=[Context(1, SECONDARY_CAPTURE)])
        assert ac.max_pdu == 16384
        _send_oversized(client, encode_dataset(ds), ds.SOPInstanceUID, 16384)
        received = client.expect_closed(timeout=10)
    _assert_abort(received, sources={2})
    (closed,) = rx.wait_closed(1, since=since)
    assert closed.outcome == "aborted" and closed.instances_stored == 0, closed
    assert stored_files(rx.root) == []
    assert temp_files(rx.root) == []
    assert_receiver_works(rx)


def test_oversized_pdu_lenient_is_accepted(start_receiver) -> None:
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, SCP_STRICT=False, SCP_MAX_PDU_LENGTH=16384)
    ds = make_dataset(pixel_bytes=40000)
    data = encode_dataset(ds)
    with RawClient(rx.host, rx.port) as client:
        ac = client.associate_ok(calling="BIGPDU", contexts=[Context(1, SECONDARY_CAPTURE)])
        assert ac.max_pdu == 16384
        _send_oversized(client, data, ds.SOPInstanceUID, 16384)
        rsp = client.read_response()
        assert rsp.status == 0x0000, rsp
        client.release()
    (event,) = rx.wait_stored(1)
    assert event.size > len(data)


def test_responses_respect_the_peer_max_pdu(receiver: RunningReceiver) -> None:
    """With our announced maximum of 4096 bytes, every PDU the server sends fits."""
    with RawClient(receiver.host, receiver.port) as client:
        client.associate_ok(contexts=[Context(1, VERIFICATION)], max_pdu=4096)
        for message_id in range(1, 4):
            client.send(p_data(pdv(1, c_echo_rq(message_id), command=True, last=True)))
            reply = client.recv_pdu()
            assert reply.type == P_DATA_TF and len(reply.body) <= 4096
        client.release()


# --- abort or disconnect in the middle of an instance ---------------------------------------


def _start_instance(client: RawClient, rx: RunningReceiver, calling: str) -> str:
    """Associates, sends a C-STORE-RQ and the first ~600 KB of a 2 MB data set (not the last
    fragment); waits (bounded) until the temp file exists, so the abort hits a partial file."""
    ds = make_dataset(pixel_bytes=2_000_000)
    data = encode_dataset(ds)
    client.associate_ok(calling=calling, contexts=[Context(1, SECONDARY_CAPTURE)])
    client.send(
        p_data(pdv(1, c_store_rq(1, SECONDARY_CAPTURE, ds.SOPInstanceUID), command=True, last=True))
    )
    size = client.max_fragment()
    for start in range(0, 600_000, size):
        client.send(p_data(pdv(1, data[start : start + size], command=False, last=False)))
    deadline = time.monotonic() + 5
    while not temp_files(rx.root) and time.monotonic() < deadline:
        time.sleep(0.01)
    return str(ds.SOPInstanceUID)


def test_abort_in_the_middle_of_an_instance(receiver: RunningReceiver) -> None:
    since = receiver.mark()
    with RawClient(receiver.host, receiver.port) as client:
        uid = _start_instance(client, receiver, "ABORTER")
        client.send(abort(source=0))
    (closed,) = receiver.wait_closed(1, since=since)
    assert closed.outcome == "aborted-by-peer", closed
    assert closed.instances_stored == 0
    assert not [p for p in receiver.root.rglob("*.dcm") if uid in p.name]
    assert stored_files(receiver.root) == []
    assert temp_files(receiver.root) == [], "partial temp file left after the abort"
    assert_receiver_works(receiver)


def test_disconnect_in_the_middle_of_an_instance(receiver: RunningReceiver) -> None:
    since = receiver.mark()
    with RawClient(receiver.host, receiver.port) as client:
        _start_instance(client, receiver, "VANISHER")
    (closed,) = receiver.wait_closed(1, since=since)
    assert closed.outcome == "connection-lost", closed
    assert stored_files(receiver.root) == []
    assert temp_files(receiver.root) == []
    assert_receiver_works(receiver)


# --- association negotiation --------------------------------------------------------------


def test_unknown_sop_class_context_rejected(receiver: RunningReceiver) -> None:
    with RawClient(receiver.host, receiver.port) as client:
        ac = client.associate_ok(
            contexts=[
                Context(1, "1.2.3.4.5.6.7.8.9.10"),
                Context(3, SECONDARY_CAPTURE),
                Context(5, CT_IMAGE, ["1.2.3.4.5.999"]),
            ]
        )
        assert ac.contexts[1].result == 3, "abstract syntax not supported"
        assert ac.contexts[3].result == 0
        assert ac.contexts[3].transfer_syntax == EXPLICIT_LE
        assert ac.contexts[5].result == 4, "transfer syntaxes not supported"
        ds = make_dataset()
        rsp = client.c_store(3, SECONDARY_CAPTURE, ds.SOPInstanceUID, encode_dataset(ds))
        assert rsp.status == 0x0000
        client.release()


def test_promiscuous_accepts_unknown_sop_class(start_receiver) -> None:
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, SCP_PROMISCUOUS=True)
    unknown = "1.2.826.0.1.3680043.10.1234.5.6"
    ds = make_dataset(sop_class=unknown)
    with RawClient(rx.host, rx.port) as client:
        ac = client.associate_ok(contexts=[Context(1, unknown)])
        assert ac.contexts[1].result == 0
        rsp = client.c_store(1, unknown, ds.SOPInstanceUID, encode_dataset(ds))
        assert rsp.status == 0x0000
        client.release()
    (event,) = rx.wait_stored(1)
    assert event.attributes.SOPClassUID == unknown


def test_uncompressed_only_rejects_compressed_syntaxes(start_receiver) -> None:
    rx = start_receiver(SCP_UNCOMPRESSED_ONLY=True)
    with RawClient(rx.host, rx.port) as client:
        ac = client.associate_ok(
            contexts=[
                Context(1, SECONDARY_CAPTURE, ["1.2.840.10008.1.2.4.50"]),
                Context(3, SECONDARY_CAPTURE, ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2"]),
            ]
        )
        assert ac.contexts[1].result == 4
        assert ac.contexts[3].result == 0
        assert ac.contexts[3].transfer_syntax == "1.2.840.10008.1.2"
        client.release()


def _rejected(rx: RunningReceiver, **kwargs: object) -> AssociateRj:
    with RawClient(rx.host, rx.port) as client:
        reply = client.associate(**kwargs)
        assert isinstance(reply, AssociateRj), f"expected A-ASSOCIATE-RJ, got {reply}"
        client.expect_closed(timeout=10)
    return reply


def _accepted(rx: RunningReceiver, **kwargs: object) -> AssociateAc:
    with RawClient(rx.host, rx.port) as client:
        reply = client.associate_ok(**kwargs)
        client.release()
    return reply


def test_wrong_called_ae_title_rejected_when_enforced(start_receiver) -> None:
    rx = start_receiver(SCP_AET="OXIDIP", SCP_ENFORCE_AET=True)
    since = rx.mark()
    rj = _rejected(rx, called="NOTOXIDIP")
    assert (rj.result, rj.source, rj.reason) == (1, 1, 7)
    (closed,) = rx.wait_closed(1, since=since)
    assert closed.outcome == "rejected", closed
    _accepted(rx, called="OXIDIP")
    assert_receiver_works(rx)


def test_wrong_called_ae_title_accepted_when_not_enforced(receiver: RunningReceiver) -> None:
    _accepted(receiver, called="ANYTHING")


def test_unlisted_calling_ae_title_rejected(start_receiver) -> None:
    rx = start_receiver(ALLOWED_CALLING_AETS="GOOD1,GOOD2")
    rj = _rejected(rx, calling="INTRUDER")
    assert (rj.result, rj.source, rj.reason) == (1, 1, 3)
    _accepted(rx, calling="GOOD2")
    assert_receiver_works(rx, calling_aet="GOOD1")


def test_unsupported_protocol_version_rejected(receiver: RunningReceiver) -> None:
    rj = _rejected(receiver, protocol_version=0x0002)
    assert (rj.result, rj.source, rj.reason) == (1, 2, 2)
    assert_receiver_works(receiver)


def test_unknown_application_context_rejected(receiver: RunningReceiver) -> None:
    rj = _rejected(receiver, application_context="1.2.3.4.5")
    assert (rj.result, rj.source, rj.reason) == (1, 1, 2)
    assert_receiver_works(receiver)


def test_association_limit(start_receiver) -> None:
    """Over OXIDIP_MAX_ASSOCIATIONS: A-ASSOCIATE-RJ transient, source 3, reason 2; once one
    is released a new association is accepted again."""
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, MAX_ASSOCIATIONS=2)
    first = RawClient(rx.host, rx.port)
    second = RawClient(rx.host, rx.port)
    try:
        first.associate_ok(calling="FIRST", contexts=[Context(1, VERIFICATION)])
        second.associate_ok(calling="SECOND", contexts=[Context(1, VERIFICATION)])
        rj = _rejected(rx, calling="THIRD")
        assert (rj.result, rj.source, rj.reason) == (2, 3, 2)
        first.release()
        # The slot is freed once the server has finished the first association; retry
        # (bounded) rather than guess how long that takes.
        deadline = time.monotonic() + 10
        while True:
            with RawClient(rx.host, rx.port) as client:
                reply = client.associate(calling="FOURTH", contexts=[Context(1, VERIFICATION)])
                if isinstance(reply, AssociateAc):
                    assert client.c_echo(1).status == 0
                    client.release()
                    break
            assert time.monotonic() < deadline, f"still rejected after a release: {reply}"
            time.sleep(0.05)
    finally:
        first.close()
        second.close()


# --- negotiation items and fragmentation the receiver must take in its stride ---------------


def test_associate_rq_with_every_user_information_sub_item(receiver: RunningReceiver) -> None:
    """Asynchronous operations window, SCP/SCU role selection, SOP class extended
    negotiation, user identity (username + passcode, positive response requested) and an
    unknown sub-item: the A-ASSOCIATE-RQ is parsed and accepted, and the association works."""
    role = struct.pack(">H", len(SECONDARY_CAPTURE)) + SECONDARY_CAPTURE.encode() + b"\x01\x00"
    extended = struct.pack(">H", len(SECONDARY_CAPTURE)) + SECONDARY_CAPTURE.encode() + b"\x01"
    identity = b"\x02\x01" + struct.pack(">H", 4) + b"user" + struct.pack(">H", 6) + b"secret"
    extra = (
        user_item(0x53, struct.pack(">HH", 4, 4))
        + user_item(0x54, role)
        + user_item(0x56, extended)
        + user_item(0x58, identity)
        + user_item(0x7E, b"unknown sub-item")
    )
    ds = make_dataset()
    with RawClient(receiver.host, receiver.port) as client:
        ac = client.associate_ok(
            contexts=[Context(1, VERIFICATION), Context(3, SECONDARY_CAPTURE)],
            extra_user_items=extra,
        )
        assert ac.contexts[1].result == 0 and ac.contexts[3].result == 0
        assert client.c_echo(1).status == 0
        rsp = client.c_store(3, SECONDARY_CAPTURE, ds.SOPInstanceUID, encode_dataset(ds))
        assert rsp.status == 0
        client.release()


def test_a_storage_context_whose_requestor_wants_to_be_its_scp_is_refused(
    receiver: RunningReceiver,
) -> None:
    """SCP/SCU role selection (PS3.7 D.3.3.4): a requestor proposing to be only the SCP of a
    storage SOP class (as a C-GET requestor would) leaves no role the receiver can play there:
    that context is refused (user rejection) instead of accepted with no role; the others, the
    one with the default roles included, work."""
    scp_only = struct.pack(">H", len(CT_IMAGE)) + CT_IMAGE.encode() + b"\x00\x01"
    ds = make_dataset()
    with RawClient(receiver.host, receiver.port) as client:
        ac = client.associate_ok(
            contexts=[Context(1, CT_IMAGE), Context(3, SECONDARY_CAPTURE)],
            extra_user_items=user_item(0x54, scp_only),
        )
        assert ac.contexts[1].result == 1, "user rejection"
        assert ac.contexts[3].result == 0
        rsp = client.c_store(3, SECONDARY_CAPTURE, ds.SOPInstanceUID, encode_dataset(ds))
        assert rsp.status == 0
        client.release()


def _store_fragmented(
    client: RawClient,
    sop_instance: str,
    data: bytes,
    *,
    fragment: int,
    per_pdu: int,
    with_command: bool,
) -> None:
    """Sends the command in 3-byte fragments, then the data set in ``fragment``-byte PDVs,
    ``per_pdu`` PDVs per P-DATA-TF (the first data PDVs sharing the command's last PDU when
    ``with_command``)."""
    command = c_store_rq(1, SECONDARY_CAPTURE, sop_instance)
    command_pdvs = [
        pdv(1, command[i : i + 3], command=True, last=i + 3 >= len(command))
        for i in range(0, len(command), 3)
    ]
    data_pdvs = [
        pdv(1, data[i : i + fragment], command=False, last=i + fragment >= len(data))
        for i in range(0, len(data), fragment)
    ]
    if with_command:
        client.send(p_data(*command_pdvs[:-1]))
        data_pdvs[0:0] = [command_pdvs[-1]]
    else:
        client.send(p_data(*command_pdvs))
    for i in range(0, len(data_pdvs), per_pdu):
        client.send(p_data(*data_pdvs[i : i + per_pdu]))


@pytest.mark.parametrize(
    ("fragment", "per_pdu", "with_command"),
    [(7, 1, False), (1, 64, False), (333, 5, True), (4096, 3, True)],
)
def test_fragmentation(
    receiver: RunningReceiver, fragment: int, per_pdu: int, with_command: bool
) -> None:
    """Tiny odd-sized fragments that split element headers, several PDVs per PDU, the
    command's last fragment and the first data fragments in one PDU: stored byte for byte,
    attributes extracted."""
    ds = make_dataset(pixel_bytes=3000, patient_id="FRAG01")
    data = encode_dataset(ds)
    with RawClient(receiver.host, receiver.port) as client:
        client.associate_ok(contexts=[Context(1, SECONDARY_CAPTURE)])
        _store_fragmented(
            client,
            ds.SOPInstanceUID,
            data,
            fragment=fragment,
            per_pdu=per_pdu,
            with_command=with_command,
        )
        rsp = client.read_response()
        assert rsp.status == 0x0000, rsp
        client.release()
    (event,) = receiver.wait_stored(1)
    assert event.attributes.PatientID == "FRAG01"
    assert event.attributes.SOPInstanceUID == ds.SOPInstanceUID
    assert read_part10(event.path).dataset == data


def test_several_instances_in_one_association(receiver: RunningReceiver) -> None:
    """Message IDs are echoed and each response follows its request."""
    datasets = [make_dataset(pixel_bytes=100) for _ in range(20)]
    with RawClient(receiver.host, receiver.port) as client:
        client.associate_ok(contexts=[Context(1, SECONDARY_CAPTURE)])
        for n, ds in enumerate(datasets, start=100):
            rsp = client.c_store(
                1, SECONDARY_CAPTURE, ds.SOPInstanceUID, encode_dataset(ds), message_id=n
            )
            assert (rsp.status, rsp.message_id_responded_to) == (0, n)
            assert rsp.affected_sop_instance == ds.SOPInstanceUID
        client.release()
    assert len(receiver.wait_stored(20)) == 20


def test_large_instance_streams_through(receiver: RunningReceiver) -> None:
    """A 24 MB data set in maximum-size PDUs: stored byte for byte."""
    ds = make_dataset(pixel_bytes=0)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 4096, 3072
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256)) * (4096 * 3072 * 2 // 256)
    data = encode_dataset(ds)
    with RawClient(receiver.host, receiver.port, timeout=60) as client:
        client.associate_ok(contexts=[Context(1, SECONDARY_CAPTURE)])
        rsp = client.c_store(1, SECONDARY_CAPTURE, ds.SOPInstanceUID, data)
        assert rsp.status == 0x0000, rsp
        client.release()
    (event,) = receiver.wait_stored(1)
    assert read_part10(event.path).dataset == data
