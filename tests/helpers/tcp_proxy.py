"""A TCP proxy between oxidip and a server (PostgreSQL) that a test cuts and restores, as a
user does by stopping and starting ``socat TCP-LISTEN:6432,fork TCP:127.0.0.1:5432``.

``TcpProxy(host, port)`` listens on 127.0.0.1 and a free port (``port``, ``address``) and
forwards every connection to ``host:port``, a thread per direction. ``cut()`` resets every
forwarded connection and, until ``restore()``, resets new ones as soon as they are accepted,
so the client sees the server go away (connection lost, then refused at once, rather than
a silent network). ``close()`` (or the end of a ``with``) stops it all."""

import socket
import struct
import threading
from typing import Self

HOST = "127.0.0.1"


def _reset(sock: socket.socket) -> None:
    """Closes ``sock`` with a TCP RST (SO_LINGER 0), waking a thread blocked reading it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        #: Connections forwarded so far, and connections refused while cut.
        self.forwarded = 0
        self.refused = 0
        self._acceptor = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def cut(self) -> None:
        """Resets every forwarded connection; new ones are reset until ``restore``."""
        with self._lock:
            self._cut = True
            victims = list(self._open)
            self._open.clear()
        for sock in victims:
            _reset(sock)

    def restore(self) -> None:
        """Forwards new connections again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.cut()
        self._listener.close()
        self._acceptor.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refuse = self._cut or self._closed
                if refuse:
                    self.refused += 1
            if refuse:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._cut or self._closed:
                    _reset(client)
                    _reset(upstream)
                    continue
                self._open.update((client, upstream))
                self.forwarded += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        # One side ended: end the other (half-closes are not worth forwarding here).
        with self._lock:
            mine = src in self._open
            self._open.discard(src)
            self._open.discard(dst)
        if mine:
            _reset(src)
            _reset(dst)
