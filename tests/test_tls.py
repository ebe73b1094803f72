"""DICOM over TLS (PS3.15 annex B) with real peers: dcmtk's ``storescu``/``echoscu +tls``
(built with OpenSSL), pynetdicom with an ``ssl.SSLContext`` and ``oxidip bench send``; one-way
and mutual TLS, a plain-text peer on the TLS port, a peer that never completes the handshake,
and the peer certificate's subject in the association log line."""

import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from oxidip import AssociationClosed
from oxidip.bench.pki import CLIENT_SUBJECT, Identity, Pki, make_pki
from oxidip.cli import main
from tests.conftest import StartReceiver
from tests.helpers.dicom import (
    encode_dataset,
    make_dataset,
    read_part10,
    stored_files,
    write_part10,
)
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, associate_rq
from tests.helpers.process import ServerProcess
from tests.helpers.receiver import HOST, RunningReceiver, build_env
from tests.helpers.senders import chunked_file_sending, scu, status_of
from tests.helpers.tools import dcmtk_env, require_tool


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_receiver(
    start_receiver: StartReceiver, pki: Pki, *, mutual: bool, **overrides: object
) -> RunningReceiver:
    """A receiver with a TLS listener on a free port (and the plain one, unless told)."""
    tls = {"TLS_CERT": pki.server.cert, "TLS_KEY": pki.server.key, "TLS_PORT": 0}
    if mutual:
        tls["TLS_CA"] = pki.ca
    return start_receiver(PATH_TEMPLATE="{SOPInstanceUID}.dcm", **tls, **overrides)


def write_instances(directory: Path, sizes: Sequence[int]) -> dict[str, bytes]:
    """Part 10 files of these pixel data sizes; SOP Instance UID -> data set bytes."""
    directory.mkdir()
    sent = {}
    for index, size in enumerate(sizes):
        ds = make_dataset(pixel_bytes=size, instance_number=index + 1)
        sent[str(ds.SOPInstanceUID)] = write_part10(directory / f"{index}.dcm", ds)
    return sent


def dcmtk_tls(
    tool: str, port: int, identity: Identity | None, pki: Pki, files: Sequence[Path] = ()
) -> str:
    """Runs dcmtk's echoscu or storescu (``files``) over TLS, checking our certificate
    against the CA; ``identity``: its client certificate, None: none (+tla). Returns
    "exit N" and its output."""
    tls = ["+tls", str(identity.key), str(identity.cert)] if identity else ["+tla"]
    args = [require_tool(tool), "-aet", "TLSSCU", "-aec", "OXIDIP", *tls, "+cf", str(pki.ca)]
    result = subprocess.run(
        [*args, HOST, str(port), *map(str, files)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def storescu_tls(port: int, identity: Identity | None, pki: Pki, directory: Path) -> str:
    return dcmtk_tls("storescu", port, identity, pki, sorted(directory.iterdir()))


def assert_stored_as_sent(rx: RunningReceiver, sent: dict[str, bytes]) -> None:
    stored = rx.wait_stored(len(sent))
    assert sorted(e.attributes.SOPInstanceUID or "" for e in stored) == sorted(sent)
    for event in stored:
        uid = event.attributes.SOPInstanceUID or ""
        assert read_part10(event.path).dataset == sent[uid], f"{uid} differs from what was sent"


def closed_on_tls(rx: RunningReceiver, count: int, since: int = 0) -> list[AssociationClosed]:
    closed = rx.wait_closed(count, since=since)
    assert all(c.tls for c in closed), closed
    return closed


def test_storescu_and_echoscu_over_tls_store_byte_identical(
    start_receiver: StartReceiver, pki: Pki, tmp_path: Path
) -> None:
    """One-way TLS (no client certificate asked for), TLS only: storescu's instances, one of
    several PDUs and TLS records each, are stored byte for byte as sent."""
    rx = tls_receiver(start_receiver, pki, mutual=False, PLAIN_LISTENER=False)
    with pytest.raises(RuntimeError, match="no plain TCP listener"):
        _ = rx.rx.port
    output = dcmtk_tls("echoscu", rx.rx.tls_port, None, pki)
    assert output.startswith("exit 0"), output
    sent = write_instances(tmp_path / "in", [64, 300_000, 2_000_000])
    output = storescu_tls(rx.rx.tls_port, None, pki, tmp_path / "in")
    assert output.startswith("exit 0"), output
    assert_stored_as_sent(rx, sent)
    echo, store = closed_on_tls(rx, 2)
    assert (echo.outcome, store.outcome, store.instances_stored) == ("released", "released", 3)
    assert store.peer_certificate_subject == ""


def test_mutual_tls_accepts_only_certificates_of_the_ca(
    start_receiver: StartReceiver, pki: Pki, tmp_path: Path
) -> None:
    rx = tls_receiver(start_receiver, pki, mutual=True)
    sent = write_instances(tmp_path / "in", [64, 500_000])
    output = storescu_tls(rx.rx.tls_port, pki.client, pki, tmp_path / "in")
    assert output.startswith("exit 0"), output
    assert_stored_as_sent(rx, sent)
    (accepted,) = closed_on_tls(rx, 1)
    assert accepted.peer_certificate_subject == CLIENT_SUBJECT
    assert accepted.calling_aet == "TLSSCU"

    # No certificate, or one from another CA: refused in the handshake, nothing stored.
    for identity in (None, pki.stranger):
        since = rx.mark()
        write_instances(tmp_path / f"refused-{since}", [64])
        output = storescu_tls(rx.rx.tls_port, identity, pki, tmp_path / f"refused-{since}")
        assert not output.startswith("exit 0"), output
        (refused,) = closed_on_tls(rx, 1, since=since)
        assert refused.outcome == "rejected", refused
        assert refused.detail.startswith("TLS handshake failed"), refused
        assert refused.instances_stored == 0 and refused.calling_aet == ""
    assert len(stored_files(rx.root)) == len(sent)


def client_context(pki: Pki, identity: Identity | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def test_pynetdicom_over_mutual_tls(start_receiver: StartReceiver, pki: Pki) -> None:
    rx = tls_receiver(start_receiver, pki, mutual=True)
    ds = make_dataset(pixel_bytes=200_000)
    ae = scu("PYNETDICOM")
    ae.add_requested_context(SECONDARY_CAPTURE, [EXPLICIT_LE])
    # The server's certificate names localhost and 127.0.0.1: Python checks the host name.
    tls_args = (client_context(pki, pki.client), "localhost")
    with chunked_file_sending():
        assoc = ae.associate(HOST, rx.rx.tls_port, ae_title="OXIDIP", tls_args=tls_args)
        assert assoc.is_established
        try:
            status = status_of(assoc.send_c_store(ds))
        finally:
            assoc.release()
    assert status == 0x0000
    sent = {str(ds.SOPInstanceUID): encode_dataset(ds, EXPLICIT_LE)}
    assert_stored_as_sent(rx, sent)
    (closed,) = closed_on_tls(rx, 1)
    assert closed.peer_certificate_subject == CLIENT_SUBJECT

    since = rx.mark()
    assoc = ae.associate(
        HOST, rx.rx.tls_port, ae_title="OXIDIP", tls_args=(client_context(pki, None), "localhost")
    )
    assert not assoc.is_established
    (refused,) = closed_on_tls(rx, 1, since=since)
    assert refused.outcome == "rejected" and "TLS handshake failed" in refused.detail


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection; fails after ``timeout``."""
    received = b""
    sock.settimeout(timeout)
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):  # closed without a TLS close_notify
            return received
        except TimeoutError:
            raise AssertionError(f"still open after {timeout} s; got {received!r}") from None
        if not chunk:
            return received
        received += chunk


def test_plain_text_peer_on_the_tls_port_is_refused(
    start_receiver: StartReceiver, pki: Pki
) -> None:
    """An A-ASSOCIATE-RQ in clear on the TLS port: closed at once (not after ARTIM, a minute
    here), no A-ASSOCIATE-AC, nothing stored; the receiver still serves TLS peers."""
    rx = tls_receiver(start_receiver, pki, mutual=False, ARTIM_TIMEOUT=60)
    with socket.create_connection((HOST, rx.rx.tls_port), timeout=10) as sock:
        sock.sendall(associate_rq())
        received = read_until_closed(sock, 10)
    # At most a TLS alert record (content type 21), never a PDU.
    assert received == b"" or received[0] == 21, received
    (refused,) = closed_on_tls(rx, 1)
    assert refused.outcome == "rejected" and "TLS handshake failed" in refused.detail, refused
    assert refused.duration < 30
    output = dcmtk_tls("echoscu", rx.rx.tls_port, None, pki)
    assert output.startswith("exit 0"), output
    assert stored_files(rx.root) == []


def test_a_handshake_never_completed_ends_with_artim(
    start_receiver: StartReceiver, pki: Pki
) -> None:
    """A peer that connects to the TLS port and sends nothing is closed when ARTIM expires,
    its slot freed (one slot here): the handshake counts against ARTIM."""
    rx = tls_receiver(start_receiver, pki, mutual=False, ARTIM_TIMEOUT=1, MAX_ASSOCIATIONS=1)
    with socket.create_connection((HOST, rx.rx.tls_port), timeout=10) as sock:
        assert read_until_closed(sock, 10) == b""
    (closed,) = closed_on_tls(rx, 1)
    assert closed.outcome == "timeout", closed
    assert "TLS handshake" in closed.detail and "ARTIM" in closed.detail
    output = dcmtk_tls("echoscu", rx.rx.tls_port, None, pki)
    assert output.startswith("exit 0"), output


def test_over_the_limit_a_tls_peer_gets_a_rejection(
    start_receiver: StartReceiver, pki: Pki
) -> None:
    """With every slot taken, a TLS peer gets its A-ASSOCIATE-RJ (transient) over TLS. The
    second peer speaks PDUs by hand: pynetdicom sometimes lost the rejection when the server
    closed the connection right after it (its association never started, 1 run in ~5)."""
    rx = tls_receiver(start_receiver, pki, mutual=False, MAX_ASSOCIATIONS=1)
    ae = scu("HOLDER")
    ae.add_requested_context(SECONDARY_CAPTURE, [EXPLICIT_LE])
    tls_args = (client_context(pki, None), "localhost")
    holder = ae.associate(HOST, rx.rx.tls_port, ae_title="OXIDIP", tls_args=tls_args)
    assert holder.is_established
    try:
        with (
            socket.create_connection((HOST, rx.rx.tls_port), timeout=10) as raw,
            client_context(pki, None).wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            sock.sendall(associate_rq())
            received = read_until_closed(sock, 10)
        # A-ASSOCIATE-RJ (type 3, PS3.8 9.3.4): result 2 (rejected-transient), source 3
        # (service provider, presentation related), reason 2 (local limit exceeded).
        assert received[:1] == b"\x03" and received[6:10] == b"\x00\x02\x03\x02", received
    finally:
        holder.release()


def test_bench_send_over_mutual_tls(
    start_receiver: StartReceiver, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    rx = tls_receiver(start_receiver, pki, mutual=True)
    base = ["bench", "send", "--host", HOST, "--port", str(rx.rx.tls_port), "--instances", "4"]
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert)]
    assert main([*base, *tls, "--tls-key", str(pki.client.key), "--image", "ct"]) == 0
    assert "4 stored, 0 failed" in capsys.readouterr().out
    # Without its client certificate: refused, nothing more stored.
    assert main([*base, "--tls-ca", str(pki.ca)]) == 1
    assert "0 stored, 4 failed" in capsys.readouterr().out
    assert len(stored_files(rx.root)) == 4


def test_association_log_line_carries_the_certificate_subject(pki: Pki, tmp_path: Path) -> None:
    env = build_env(tmp_path / "data", {})
    env.update(
        OXIDIP_LOG_LEVEL="INFO",
        OXIDIP_TLS_PORT="0",
        OXIDIP_TLS_CERT=str(pki.server.cert),
        OXIDIP_TLS_KEY=str(pki.server.key),
        OXIDIP_TLS_CA=str(pki.ca),
    )
    with ServerProcess(env) as server:
        listening = server.wait_for_record("listening")
        assert listening["tls_client_ca"] == str(pki.ca)
        output = dcmtk_tls("echoscu", int(listening["tls_port"]), pki.client, pki)
        assert output.startswith("exit 0"), output
        record = server.wait_for_record("association closed")
        assert record["tls"] is True
        assert record["peer_certificate_subject"] == CLIENT_SUBJECT
        assert record["outcome"] == "released"
        assert server.terminate() == 0
