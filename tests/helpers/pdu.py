"""A small raw PS3.8 upper layer client for tests: builds PDUs byte by byte (so that tests can
also build wrong ones), parses what the server answers, and encodes DIMSE command sets.

Nothing here is clever on purpose: it mirrors the tables of PS3.8 §9.3 and PS3.7 §9.3/E.1 so
that a test reads like the standard.
"""

import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Self

# PDU types (PS3.8 §9.3.1).
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

PDU_NAMES = {
    ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    ASSOCIATE_AC: "A-ASSOCIATE-AC",
    ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    RELEASE_RQ: "A-RELEASE-RQ",
    RELEASE_RP: "A-RELEASE-RP",
    ABORT: "A-ABORT",
}

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

TEST_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1234.99"
TEST_IMPLEMENTATION_VERSION = "OXIDIP_TESTS"

# DIMSE command fields (PS3.7 E.1).
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATASET = 0x0101


# --- building ------------------------------------------------------------------------------


def pdu(pdu_type: int, body: bytes, *, length: int | None = None) -> bytes:
    """A PDU: type, reserved, 4-byte big endian length (``length`` overrides the real one,
    to build PDUs whose length field lies), body."""
    return struct.pack(">BBI", pdu_type, 0, len(body) if length is None else length) + body


def user_item(item_type: int, value: bytes) -> bytes:
    """A user information sub-item (PS3.7 annex D.3.3): type, reserved, 2-byte length."""
    return _item(item_type, value)


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae(title: str) -> bytes:
    raw = title.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE title longer than 16 bytes: {title!r}")
    return raw.ljust(16, b" ")


@dataclass
class Context:
    """A proposed presentation context."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str] = field(default_factory=lambda: [EXPLICIT_LE, IMPLICIT_LE])


def associate_rq(
    *,
    called: str = "OXIDIP",
    calling: str = "RAWTEST",
    contexts: list[Context] | None = None,
    max_pdu: int | None = 16384,
    protocol_version: int = 1,
    application_context: str = APPLICATION_CONTEXT,
    extra_user_items: bytes = b"",
) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 §9.3.2) with the given presentation contexts and a user
    information item (maximum length, implementation class UID and version name)."""
    if contexts is None:
        contexts = [Context(1, VERIFICATION)]
    body = struct.pack(">HH", protocol_version, 0) + _ae(called) + _ae(calling) + bytes(32)
    body += _item(0x10, application_context.encode("ascii"))
    for ctx in contexts:
        sub = _item(0x30, ctx.abstract_syntax.encode("ascii"))
        for ts in ctx.transfer_syntaxes:
            sub += _item(0x40, ts.encode("ascii"))
        body += _item(0x20, struct.pack(">BBBB", ctx.id, 0, 0, 0) + sub)
    user = b""
    if max_pdu is not None:
        user += _item(0x51, struct.pack(">I", max_pdu))
    user += _item(0x52, TEST_IMPLEMENTATION_CLASS_UID.encode("ascii"))
    user += _item(0x55, TEST_IMPLEMENTATION_VERSION.encode("ascii"))
    user += extra_user_items
    body += _item(0x50, user)
    return pdu(ASSOCIATE_RQ, body)


def pdv(context_id: int, data: bytes, *, command: bool, last: bool) -> bytes:
    """One presentation data value item (PS3.8 §9.3.5.1, annex E.2)."""
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def p_data(*pdvs: bytes, length: int | None = None) -> bytes:
    return pdu(P_DATA_TF, b"".join(pdvs), length=length)


def release_rq() -> bytes:
    return pdu(RELEASE_RQ, bytes(4))


def release_rp() -> bytes:
    return pdu(RELEASE_RP, bytes(4))


def abort(source: int = 0, reason: int = 0) -> bytes:
    return pdu(ABORT, struct.pack(">BBBB", 0, 0, source, reason))


# --- DIMSE command sets (implicit VR little endian, PS3.7 §6.3.1) -------------------------


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(elements: dict[int, bytes]) -> bytes:
    """Encodes (0000,eeee) -> value into a command set, with (0000,0000) group length first."""
    body = b"".join(_element(0, elem, value) for elem, value in sorted(elements.items()))
    return _element(0, 0x0000, struct.pack("<I", len(body))) + body


def c_store_rq(message_id: int, sop_class: str, sop_instance: str, priority: int = 0) -> bytes:
    return command_set(
        {
            0x0002: _uid(sop_class),
            0x0100: _us(C_STORE_RQ),
            0x0110: _us(message_id),
            0x0700: _us(priority),
            0x0800: _us(0x0000),  # a dataset follows
            0x1000: _uid(sop_instance),
        }
    )


def c_echo_rq(message_id: int) -> bytes:
    return command_set(
        {
            0x0002: _uid(VERIFICATION),
            0x0100: _us(C_ECHO_RQ),
            0x0110: _us(message_id),
            0x0800: _us(NO_DATASET),
        }
    )


def parse_command_set(data: bytes) -> dict[int, bytes]:
    """(0000,eeee) -> raw value of an implicit VR little endian command set."""
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        out[(group << 16) | elem] = data[offset : offset + length]
        offset += length
    return out


@dataclass
class DimseResponse:
    command_field: int
    status: int
    error_comment: str | None
    affected_sop_class: str | None
    affected_sop_instance: str | None
    message_id_responded_to: int | None

    @classmethod
    def parse(cls, data: bytes) -> "DimseResponse":
        cmd = parse_command_set(data)

        def text(tag: int) -> str | None:
            raw = cmd.get(tag)
            return None if raw is None else raw.decode("ascii", "replace").rstrip("\0 ")

        def us(tag: int) -> int | None:
            raw = cmd.get(tag)
            return None if raw is None else struct.unpack("<H", raw[:2])[0]

        command_field = us(0x0000_0100)
        status = us(0x0000_0900)
        if command_field is None or status is None:
            raise AssertionError(f"response command set lacks CommandField or Status: {cmd}")
        return cls(
            command_field=command_field,
            status=status,
            error_comment=text(0x0000_0902),
            affected_sop_class=text(0x0000_0002),
            affected_sop_instance=text(0x0000_1000),
            message_id_responded_to=us(0x0000_0120),
        )


# --- parsing what the server sends ---------------------------------------------------------


@dataclass
class Pdu:
    type: int
    body: bytes

    @property
    def name(self) -> str:
        return PDU_NAMES.get(self.type, f"unknown PDU type 0x{self.type:02X}")

    def __repr__(self) -> str:
        if self.type == ABORT:
            source, reason = self.abort_source_reason()
            return f"<A-ABORT source={source} reason={reason}>"
        if self.type == ASSOCIATE_RJ:
            return f"<A-ASSOCIATE-RJ result={self.body[1]} source={self.body[2]} reason={self.body[3]}>"
        return f"<{self.name} {len(self.body)} bytes>"

    def abort_source_reason(self) -> tuple[int, int]:
        assert self.type == ABORT, self
        return self.body[2], self.body[3]


@dataclass
class ContextResult:
    id: int
    result: int
    transfer_syntax: str


@dataclass
class AssociateAc:
    called: str
    calling: str
    application_context: str
    contexts: dict[int, ContextResult]
    max_pdu: int | None
    implementation_class_uid: str | None
    implementation_version: str | None

    @classmethod
    def parse(cls, body: bytes) -> "AssociateAc":
        called = body[4:20].decode("ascii").strip()
        calling = body[20:36].decode("ascii").strip()
        offset = 68
        app_ctx = ""
        contexts: dict[int, ContextResult] = {}
        max_pdu = impl_uid = impl_version = None
        while offset + 4 <= len(body):
            item_type, _, length = struct.unpack_from(">BBH", body, offset)
            value = body[offset + 4 : offset + 4 + length]
            offset += 4 + length
            if item_type == 0x10:
                app_ctx = value.decode("ascii")
            elif item_type == 0x21:
                ctx_id, result = value[0], value[2]
                ts = ""
                sub = 4
                while sub + 4 <= len(value):
                    sub_type, _, sub_len = struct.unpack_from(">BBH", value, sub)
                    if sub_type == 0x40:
                        ts = value[sub + 4 : sub + 4 + sub_len].decode("ascii").rstrip("\0 ")
                    sub += 4 + sub_len
                contexts[ctx_id] = ContextResult(ctx_id, result, ts)
            elif item_type == 0x50:
                sub = 0
                while sub + 4 <= len(value):
                    sub_type, _, sub_len = struct.unpack_from(">BBH", value, sub)
                    sub_value = value[sub + 4 : sub + 4 + sub_len]
                    if sub_type == 0x51:
                        max_pdu = struct.unpack(">I", sub_value)[0]
                    elif sub_type == 0x52:
                        impl_uid = sub_value.decode("ascii").rstrip("\0 ")
                    elif sub_type == 0x55:
                        impl_version = sub_value.decode("ascii").rstrip(" ")
                    sub += 4 + sub_len
        return cls(called, calling, app_ctx, contexts, max_pdu, impl_uid, impl_version)


@dataclass
class AssociateRj:
    result: int
    source: int
    reason: int

    @classmethod
    def parse(cls, body: bytes) -> "AssociateRj":
        return cls(result=body[1], source=body[2], reason=body[3])


class ConnectionClosed(Exception):
    """The server closed the connection (EOF or reset)."""


class RawClient:
    """One TCP connection to the server, speaking PDUs by hand. Every wait has a timeout."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.peer_max_pdu = 0
        self.closed = False

    # context manager: always close the socket
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, count: int, deadline: float) -> bytes:
        while len(self._buffer) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete PDU within {self.timeout} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"no complete PDU within {self.timeout} s") from None
            except (ConnectionResetError, BrokenPipeError):
                raise ConnectionClosed("connection reset by the server") from None
            if not chunk:
                raise ConnectionClosed(
                    f"connection closed by the server ({len(self._buffer)} bytes pending)"
                )
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def recv_pdu(self, timeout: float | None = None) -> Pdu:
        """The next PDU; raises ConnectionClosed on EOF/reset, TimeoutError after
        ``timeout`` (default: the client's)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        header = self._recv_exact(6, deadline)
        pdu_type, _, length = struct.unpack(">BBI", header)
        if length > 64 * 1024 * 1024:
            raise AssertionError(f"server sent a PDU claiming {length} bytes")
        return Pdu(pdu_type, self._recv_exact(length, deadline))

    def expect_closed(self, timeout: float) -> list[Pdu]:
        """Reads until the server closes the connection; returns the PDUs received before
        that. Fails if the connection is still open after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        received: list[Pdu] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"connection still open after {timeout} s; received {received}"
                )
            try:
                received.append(self.recv_pdu(remaining))
            except ConnectionClosed:
                return received
            except TimeoutError:
                raise AssertionError(
                    f"connection still open after {timeout} s; received {received}"
                ) from None

    # --- association level -------------------------------------------------------------

    def associate(self, **kwargs: object) -> AssociateAc | AssociateRj:
        """Sends an A-ASSOCIATE-RQ (see ``associate_rq``) and returns the parsed AC or RJ."""
        self.send(associate_rq(**kwargs))  # type: ignore[arg-type]
        reply = self.recv_pdu()
        if reply.type == ASSOCIATE_AC:
            ac = AssociateAc.parse(reply.body)
            self.peer_max_pdu = ac.max_pdu or 0
            return ac
        if reply.type == ASSOCIATE_RJ:
            return AssociateRj.parse(reply.body)
        raise AssertionError(f"expected A-ASSOCIATE-AC or -RJ, got {reply!r}")

    def associate_ok(self, **kwargs: object) -> AssociateAc:
        reply = self.associate(**kwargs)
        assert isinstance(reply, AssociateAc), f"association rejected: {reply}"
        return reply

    def release(self) -> None:
        """A-RELEASE-RQ, expects A-RELEASE-RP, then closes."""
        self.send(release_rq())
        reply = self.recv_pdu()
        assert reply.type == RELEASE_RP, f"expected A-RELEASE-RP, got {reply!r}"
        self.close()

    def abort(self) -> None:
        try:
            self.send(abort())
        finally:
            self.close()

    # --- DIMSE level -------------------------------------------------------------------

    def max_fragment(self) -> int:
        """Largest PDV data length the server accepts in one P-DATA-TF."""
        limit = self.peer_max_pdu or 65536
        return max(limit - 6, 1)

    def send_message(self, context_id: int, command: bytes, dataset: bytes | None) -> None:
        self.send(p_data(pdv(context_id, command, command=True, last=True)))
        if dataset is None:
            return
        size = self.max_fragment()
        chunks = [dataset[i : i + size] for i in range(0, len(dataset), size)] or [b""]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            self.send(p_data(pdv(context_id, chunk, command=False, last=last)))

    def read_response(self, timeout: float | None = None) -> DimseResponse:
        """Reassembles the command fragments of the next DIMSE message."""
        command = b""
        while True:
            reply = self.recv_pdu(timeout)
            if reply.type != P_DATA_TF:
                raise AssertionError(f"expected P-DATA-TF with a response, got {reply!r}")
            offset = 0
            while offset + 6 <= len(reply.body):
                length, _ctx, control = struct.unpack_from(">IBB", reply.body, offset)
                data = reply.body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                assert control & 0x01, "server sent a dataset fragment in a response"
                command += data
                if control & 0x02:
                    return DimseResponse.parse(command)

    def c_store(
        self,
        context_id: int,
        sop_class: str,
        sop_instance: str,
        dataset: bytes,
        *,
        message_id: int = 1,
    ) -> DimseResponse:
        self.send_message(context_id, c_store_rq(message_id, sop_class, sop_instance), dataset)
        rsp = self.read_response()
        assert rsp.command_field == C_STORE_RSP, rsp
        return rsp

    def c_echo(self, context_id: int, *, message_id: int = 1) -> DimseResponse:
        self.send_message(context_id, c_echo_rq(message_id), None)
        rsp = self.read_response()
        assert rsp.command_field == C_ECHO_RSP, rsp
        return rsp
