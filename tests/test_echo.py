"""C-ECHO (Verification) from dcmtk echoscu, pynetdicom and a raw client."""

from tests.helpers.pdu import VERIFICATION, Context, RawClient
from tests.helpers.receiver import RunningReceiver
from tests.helpers.senders import scu, status_of
from tests.helpers.tools import run_dcmtk


def test_echoscu(receiver: RunningReceiver) -> None:
    since = receiver.mark()
    result = run_dcmtk(
        ["echoscu", "-v", "-aet", "ECHOSCU", "-aec", "OXIDIP", receiver.host, str(receiver.port)],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr, result.stderr
    (closed,) = receiver.wait_closed(1, since=since)
    assert closed.calling_aet == "ECHOSCU"
    assert closed.called_aet == "OXIDIP"
    assert closed.outcome == "released", closed
    assert closed.instances_stored == 0 and closed.instances_failed == 0


def test_echoscu_repeated_in_one_association(receiver: RunningReceiver) -> None:
    since = receiver.mark()
    result = run_dcmtk(
        ["echoscu", "-v", "--repeat", "20", receiver.host, str(receiver.port)], timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Echo Response (Success)") == 20, result.stderr
    (closed,) = receiver.wait_closed(1, since=since)
    assert closed.outcome == "released", closed


def test_echoscu_abort(receiver: RunningReceiver) -> None:
    since = receiver.mark()
    result = run_dcmtk(["echoscu", "--abort", receiver.host, str(receiver.port)], timeout=60)
    assert result.returncode == 0, result.stderr
    (closed,) = receiver.wait_closed(1, since=since)
    assert closed.outcome == "aborted-by-peer", closed


def test_pynetdicom_echo(receiver: RunningReceiver) -> None:
    since = receiver.mark()
    ae = scu("PYECHO")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(receiver.host, receiver.port, ae_title="OXIDIP")
    assert assoc.is_established
    # One echo: repeated echoes are covered by echoscu --repeat; pynetdicom's reactor can
    # take a fast response for an unsolicited message (pynetdicom issue #875), a race in the
    # client that more requests per association only make likelier.
    try:
        assert status_of(assoc.send_c_echo()) == 0x0000
    finally:
        assoc.release()
    (closed,) = receiver.wait_closed(1, since=since)
    assert (closed.calling_aet, closed.outcome) == ("PYECHO", "released")


def test_raw_echo_and_association_parameters(receiver: RunningReceiver) -> None:
    """The A-ASSOCIATE-AC echoes the AE titles, accepts Verification with explicit VR little
    endian (preferred) and announces oxidip's implementation class UID and its max PDU."""
    from oxidip import _core

    with RawClient(receiver.host, receiver.port) as client:
        ac = client.associate_ok(
            called="OXIDIP",
            calling="RAWECHO",
            contexts=[Context(1, VERIFICATION, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])],
        )
        assert (ac.called, ac.calling) == ("OXIDIP", "RAWECHO")
        assert ac.contexts[1].result == 0
        assert ac.contexts[1].transfer_syntax == "1.2.840.10008.1.2.1"
        assert ac.implementation_class_uid == _core.IMPLEMENTATION_CLASS_UID
        assert ac.max_pdu == receiver.config.scp_max_pdu_length
        rsp = client.c_echo(1, message_id=7)
        assert rsp.status == 0x0000
        assert rsp.message_id_responded_to == 7
        client.release()
