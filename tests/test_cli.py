"""``python -m oxidip serve``: the ``listening`` readiness line (JSON, with the bound port),
serving, and SIGTERM: stop accepting, let the running association finish, exit 0."""

import signal
import socket
from pathlib import Path

from pynetdicom.sop_class import Verification

from tests.helpers.dicom import SIMPLE_TEMPLATE, make_dataset, stored_files
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE
from tests.helpers.process import ServerProcess
from tests.helpers.senders import scu, status_of


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {
        "OXIDIP_LISTENER_HOST": "127.0.0.1",
        "OXIDIP_LISTENER_PORT": "0",
        "OXIDIP_FILES_ROOT": str(root),
        "OXIDIP_PATH_TEMPLATE": SIMPLE_TEMPLATE,
        "OXIDIP_LOG_FORMAT": "json",
        "OXIDIP_SHUTDOWN_TIMEOUT": "20",
    }
    env.update(extra)
    return env


def test_listening_line_and_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with ServerProcess(_env(root)) as server:
        port = server.wait_listening()
        assert port > 0
        listening = server.wait_for_record("listening")
        assert listening["level"] == "INFO"
        ae = scu("CLITEST")
        ae.add_requested_context(Verification)
        ae.add_requested_context(SECONDARY_CAPTURE, [EXPLICIT_LE])
        assoc = ae.associate("127.0.0.1", port, ae_title="OXIDIP")
        assert assoc.is_established
        try:
            assert status_of(assoc.send_c_echo()) == 0
            assert status_of(assoc.send_c_store(make_dataset())) == 0
        finally:
            assoc.release()
        closed = server.wait_for_record("association closed")
        assert closed["calling_aet"] == "CLITEST"
        assert closed["outcome"] == "released"
        assert closed["stored"] == 1
        assert server.terminate() == 0, server.output()
        assert any(r.get("msg") == "stopped" for r in server.records()), server.output()
    assert len(stored_files(root)) == 1


def test_sigterm_lets_the_running_association_finish(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with ServerProcess(_env(root)) as server:
        port = server.wait_listening()
        ae = scu("LATE")
        ae.add_requested_context(SECONDARY_CAPTURE, [EXPLICIT_LE])
        assoc = ae.associate("127.0.0.1", port, ae_title="OXIDIP")
        assert assoc.is_established
        try:
            assert status_of(assoc.send_c_store(make_dataset())) == 0
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for_record("stopping")
            # No new connections once stopping ...
            _assert_refused(port)
            # ... but the running association may go on.
            assert status_of(assoc.send_c_store(make_dataset())) == 0
        finally:
            assoc.release()
        assert server.proc.wait(30) == 0, server.output()
        closed = [r for r in server.records() if r.get("msg") == "association closed"]
        assert [(r["calling_aet"], r["stored"], r["outcome"]) for r in closed] == [
            ("LATE", 2, "released")
        ]
    assert len(stored_files(root)) == 2


def _assert_refused(port: int) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(5)
            # Accepted by a backlog that nobody serves any more would show as EOF or reset.
            data = sock.recv(1)
            assert data == b"", "a new connection was served after SIGTERM"
    except (ConnectionRefusedError, ConnectionResetError):
        pass


def test_sigterm_aborts_associations_after_the_shutdown_timeout(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with ServerProcess(_env(root, OXIDIP_SHUTDOWN_TIMEOUT="1")) as server:
        port = server.wait_listening()
        ae = scu("STUBBORN")
        ae.add_requested_context(SECONDARY_CAPTURE, [EXPLICIT_LE])
        assoc = ae.associate("127.0.0.1", port, ae_title="OXIDIP")
        assert assoc.is_established
        try:
            assert server.terminate(timeout=30) == 0, server.output()
            closed = [r for r in server.records() if r.get("msg") == "association closed"]
            assert [(r["calling_aet"], r["outcome"]) for r in closed] == [("STUBBORN", "shutdown")]
        finally:
            assoc.abort()
