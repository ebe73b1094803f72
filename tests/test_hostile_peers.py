"""Hostile and unlucky peers against a real ``oxidip serve``, with small limits: peers that
stop reading, a P-DATA-TF of ten million empty PDVs, more connections than open files,
connections that never send their A-ASSOCIATE-RQ when the receiver stops, a request with a
thousand role selections, and what the log shows of every refusal.

Each test waits on conditions with deadlines (log records, answers, exits), never on fixed
sleeps; the bounds are generous against the timeouts configured (a second or two).
"""

import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from oxidip import _core
from tests.helpers.dicom import SIMPLE_TEMPLATE
from tests.helpers.pdu import (
    ASSOCIATE_AC,
    TEST_IMPLEMENTATION_CLASS_UID,
    TEST_IMPLEMENTATION_VERSION,
    VERIFICATION,
    AssociateAc,
    AssociateRj,
    ConnectionClosed,
    Context,
    RawClient,
    associate_rq,
    c_echo_rq,
    p_data,
    pdv,
    user_item,
)
from tests.helpers.process import SERVE, ServerProcess

HOST = "127.0.0.1"

#: A-ASSOCIATE-RJ for a local limit: rejected-transient, service provider (presentation),
#: local limit exceeded (PS3.8 table 9-21).
LOCAL_LIMIT_RJ = (2, 3, 2)


def _env(root: Path, **extra: object) -> dict[str, str]:
    env = {
        "OXIDIP_LISTENER_HOST": HOST,
        "OXIDIP_LISTENER_PORT": "0",
        "OXIDIP_FILES_ROOT": str(root),
        "OXIDIP_PATH_TEMPLATE": SIMPLE_TEMPLATE,
        "OXIDIP_LOG_FORMAT": "json",
        "OXIDIP_ARTIM_TIMEOUT": "5",
        "OXIDIP_SHUTDOWN_TIMEOUT": "1",
    }
    env.update({f"OXIDIP_{key}": str(value) for key, value in extra.items()})
    return env


def _records(server: ServerProcess, msg: str) -> list[dict[str, Any]]:
    return [r for r in server.records() if r.get("msg") == msg]


def _wait_records(
    server: ServerProcess, msg: str, count: int, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The first ``count`` records with message ``msg``, waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(found := _records(server, msg)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(found)} {msg!r} records, {count} expected:\n{server.output()}"
            )
        server.wait_for_record(msg, timeout=max(deadline - time.monotonic(), 0.01))
        time.sleep(0.02)  # polling the record list, with the deadline above
    return found[:count]


def _associate_when_possible(port: int, timeout: float) -> float:
    """Seconds until an association is accepted (released at once), polling; fails after
    ``timeout`` seconds of rejections."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        with RawClient(HOST, port, timeout=5) as client:
            last = client.associate()
            if isinstance(last, AssociateAc):
                client.release()
                return time.monotonic() - start
        time.sleep(0.05)  # polling, with the deadline above
    raise AssertionError(f"no association accepted within {timeout} s; last answer {last}")


def _echo_pdu(message_id: int) -> bytes:
    return p_data(pdv(1, c_echo_rq(message_id), command=True, last=True))


#: Seconds without the receiver taking any request before a flooding peer counts it as parked
#: in a write: far longer than a busy machine keeps a running process from being scheduled.
QUIET = 3.0

#: Linux TCP states (``tcpi_state``, the first byte of TCP_INFO).
TCP_ESTABLISHED = 1


@contextmanager
def _peer_that_stops_reading(port: int) -> Iterator[socket.socket]:
    """An association whose peer shrank its receive buffer, then sends C-ECHO-RQs without
    ever reading a response, until the receiver has taken none for ``QUIET`` seconds: it is
    then parked in a write of responses (or has already reset the connection)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Before connecting: the window is announced in the handshake.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((HOST, port))
        sock.sendall(associate_rq(contexts=[Context(1, VERIFICATION)]))
        header = sock.recv(6, socket.MSG_WAITALL)
        assert header[0] == ASSOCIATE_AC, header
        sock.recv(struct.unpack(">I", header[2:6])[0], socket.MSG_WAITALL)
        sock.setblocking(False)
        chunk = b"".join(_echo_pdu(n % 0xFFFF + 1) for n in range(10_000))
        sent, limit = 0, 512 * 1024 * 1024
        while sent < limit:
            _, writable, _ = select.select([], [sock], [], QUIET)
            if not writable:
                break
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
            except OSError:
                break  # already reset by the receiver
        assert sent < limit, "the receiver took every request: it never blocked writing"
        yield sock
    finally:
        sock.close()


def _wait_closed_by_peer(sock: socket.socket, timeout: float) -> None:
    """Waits until the receiver has closed or reset ``sock``, without reading from it (the
    TCP state, from TCP_INFO)."""
    deadline = time.monotonic() + timeout
    while sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED:
        if time.monotonic() > deadline:
            raise AssertionError(f"connection still established after {timeout} s")
        time.sleep(0.05)  # polling the state, with the deadline above


def test_peers_that_stop_reading_lose_their_association_after_the_write_timeout(
    tmp_path: Path,
) -> None:
    slots = 2
    env = _env(tmp_path, MAX_ASSOCIATIONS=slots, WRITE_TIMEOUT=1, IDLE_TIMEOUT=60)
    with ServerProcess(env) as server, ExitStack() as peers:
        port = server.wait_listening()
        stalled = [peers.enter_context(_peer_that_stops_reading(port)) for _ in range(slots)]
        # Every slot was taken by a peer that does not read; the write timeout frees them.
        for sock in stalled:
            _wait_closed_by_peer(sock, timeout=15)
        _associate_when_possible(port, timeout=15)
        closed = _wait_records(server, "association closed", slots + 1)
        timeouts = [r for r in closed if r["outcome"] == "timeout"]
        assert len(timeouts) == slots, closed
        assert all("write timeout" in r["detail"] for r in timeouts), timeouts
        assert server.terminate(timeout=15) == 0, server.output()


def test_shutdown_aborts_associations_parked_in_a_write(tmp_path: Path) -> None:
    # A write timeout far beyond the test: only the shutdown abort can end them.
    env = _env(tmp_path, MAX_ASSOCIATIONS=2, WRITE_TIMEOUT=600, IDLE_TIMEOUT=600)
    with ServerProcess(env) as server, ExitStack() as peers:
        port = server.wait_listening()
        for _ in range(2):
            peers.enter_context(_peer_that_stops_reading(port))
        started = time.monotonic()
        assert server.terminate(timeout=15) == 0, server.output()
        took = time.monotonic() - started
        closed = _records(server, "association closed")
        assert [r["outcome"] for r in closed] == ["shutdown", "shutdown"], closed
    # Shutdown timeout (1 s) plus the abort: far from the 600 s timeouts.
    assert took < 15


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process, KiB (``VmHWM`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def test_ten_million_empty_pdvs_cost_no_more_than_the_pdu(tmp_path: Path) -> None:
    """A 60 MB P-DATA-TF (within the 64 MiB tolerated outside strict mode) holding ten million
    empty command fragments, then a C-ECHO-RQ's command as its last fragment: answered, and
    the receiver's peak memory grows by about the PDU, not by a record per PDV (+445 MiB)."""
    pdvs = 10_000_000
    with ServerProcess(_env(tmp_path)) as server:
        port = server.wait_listening()
        with RawClient(HOST, port, timeout=60) as client:
            client.associate_ok(contexts=[Context(1, VERIFICATION)])
            assert client.c_echo(1).status == 0
            before = _vm_hwm_kib(server.proc.pid)
            empty = pdv(1, b"", command=True, last=False)
            client.send(p_data(empty * pdvs + pdv(1, c_echo_rq(2), command=True, last=True)))
            rsp = client.read_response(timeout=60)
            assert (rsp.status, rsp.message_id_responded_to) == (0, 2)
            after = _vm_hwm_kib(server.proc.pid)
            client.release()
        growth_mib = (after - before) / 1024
        # The PDU itself is ~57 MiB; a Vec of 10 million PDVs added ~400 MiB more.
        assert growth_mib < 150, f"peak RSS grew by {growth_mib:.0f} MiB"
        assert server.terminate() == 0, server.output()


#: Runs ``oxidip serve`` with RLIMIT_NOFILE soft = hard = argv[1], so that raising the soft
#: limit cannot help.
_LIMITED_SERVE = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def test_running_out_of_open_files_refuses_peers_instead_of_leaving_them_hanging(
    tmp_path: Path,
) -> None:
    limit, peers = 32, 40
    command = [sys.executable, "-c", _LIMITED_SERVE, str(limit), *SERVE[1:]]
    with ServerProcess(_env(tmp_path), command=command) as server, ExitStack() as held:
        port = server.wait_listening()
        answers: list[object] = []
        for _ in range(peers):
            client = held.enter_context(RawClient(HOST, port, timeout=10))
            try:
                answers.append(client.associate())
            except ConnectionClosed:
                answers.append("closed")
            # A TimeoutError (a peer left hanging) fails the test here.
        accepted = [a for a in answers if isinstance(a, AssociateAc)]
        rejected = [a for a in answers if isinstance(a, AssociateRj)]
        assert accepted and rejected, answers
        assert {(rj.result, rj.source, rj.reason) for rj in rejected} == {LOCAL_LIMIT_RJ}
        warning = server.wait_for_record("open-files limit too low for OXIDIP_MAX_ASSOCIATIONS")
        assert warning["level"] == "WARNING" and str(limit) in warning["detail"], warning
        accept_failed = server.wait_for_record("accept failed: too many open files")
        assert accept_failed["level"] == "WARNING", accept_failed
        refused = _wait_records(server, "association refused", len(rejected))
        assert {r["reason"] for r in refused} == {"open-files"}, refused
        assert all(r["peer"].startswith(f"{HOST}:") for r in refused), refused
        held.close()
        # Descriptors free again: served as before.
        _associate_when_possible(port, timeout=20)
        assert server.terminate() == 0, server.output()


def test_connections_without_a_request_are_closed_at_once_on_stop(tmp_path: Path) -> None:
    env = _env(tmp_path, ARTIM_TIMEOUT=600, SHUTDOWN_TIMEOUT=600)
    with ServerProcess(env) as server:
        port = server.wait_listening()
        with socket.create_connection((HOST, port)) as silent:
            # Accepted in order: once a later connection is an association, the silent one
            # waits in its handler for an A-ASSOCIATE-RQ.
            _associate_when_possible(port, timeout=10)
            started = time.monotonic()
            assert server.terminate(timeout=30) == 0, server.output()
            took = time.monotonic() - started
            silent.settimeout(5)
            assert silent.recv(1) == b"", "the connection was not closed"
        closed = _records(server, "association closed")
        assert [r["outcome"] for r in closed] == ["released", "shutdown"], closed
        assert closed[1]["detail"] == "receiver stopping: closed before A-ASSOCIATE-RQ"
    assert took < 10


def _role_selections(size: int, uid_length: int) -> bytes:
    """SCP/SCU role selection sub-items (PS3.7 D.3.3.4), SCU role proposed, with distinct SOP
    class UIDs of ``uid_length`` characters (some one longer), ``size`` bytes in all."""
    count, longer = divmod(size, 4 + 2 + uid_length + 2)
    assert longer <= count
    items = b""
    for n in range(count):
        digits = uid_length - 4 + (n < longer)
        uid = f"1.2.{n:0{digits}d}".encode("ascii")
        items += user_item(0x54, struct.pack(">H", len(uid)) + uid + b"\x01\x00")
    assert len(items) == size
    return items


def test_a_thousand_role_selections_still_get_the_user_information_item(tmp_path: Path) -> None:
    # The request's user information item as full as its 16-bit length allows: the maximum
    # length, implementation class UID and version name sub-items, then role selections.
    own_items = 8 + 4 + len(TEST_IMPLEMENTATION_CLASS_UID) + 4 + len(TEST_IMPLEMENTATION_VERSION)
    roles = _role_selections(0xFFFF - own_items, uid_length=57)
    # Echoing every role beside our own (longer) identity overflows the reply's item.
    ours = 8 + 4 + len(_core.IMPLEMENTATION_CLASS_UID) + 4 + len(_core.IMPLEMENTATION_VERSION_NAME)
    assert ours + len(roles) > 0xFFFF
    with ServerProcess(_env(tmp_path)) as server:
        port = server.wait_listening()
        with RawClient(HOST, port) as client:
            ac = client.associate_ok(contexts=[Context(1, VERIFICATION)], extra_user_items=roles)
            assert ac.max_pdu is not None, "A-ASSOCIATE-AC without its user information item"
            assert ac.implementation_class_uid == _core.IMPLEMENTATION_CLASS_UID
            assert client.c_echo(1).status == 0
            client.release()
        assert server.terminate() == 0, server.output()
