"""A TCP proxy on 127.0.0.1 in front of a real server (PostgreSQL), for outages on demand:

- ``cut()``: every connection through it is closed and its port refuses connections (the
  database host went away);
- ``black_hole()``: connections already made keep flowing, new ones are accepted and never
  answered (a host that drops packets, seen from a new client);
- ``restore()``: forwards again, on the same port.

Threads: one accepting (polling a stop flag, so that closing never races a blocked
``accept``), two per forwarded connection.
"""

import socket
import threading
import time
from typing import Self

#: How often the accepting thread looks at its stop flag (seconds).
_ACCEPT_POLL = 0.05


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._black_hole = False
        self._stop: threading.Event | None = None
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(_ACCEPT_POLL)
        self.port = listener.getsockname()[1]
        stop = self._stop = threading.Event()
        threading.Thread(target=self._accept, args=(listener, stop), daemon=True).start()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                if stop.is_set():  # cut while this one was being accepted
                    client.close()
                    return
                client.settimeout(None)
                with self._lock:
                    self._connections.append(client)
                    if self._black_hole:
                        continue  # held open, never forwarded nor answered
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._connections.append(upstream)
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def url(self, database_url: str) -> str:
        """``database_url`` (postgresql://user@host:port/name) pointed at the proxy."""
        scheme, rest = database_url.split("://", 1)
        authority, _, path = rest.partition("/")
        user, _, _ = authority.rpartition("@")
        return f"{scheme}://{user + '@' if user else ''}127.0.0.1:{self.port}/{path}"

    def cut(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        with self._lock:
            connections, self._connections = self._connections, []
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def black_hole(self) -> None:
        with self._lock:
            self._black_hole = True

    def restore(self) -> None:
        with self._lock:
            self._black_hole = False
        if self._stop is None:
            deadline = time.monotonic() + 5
            while True:  # the old listener closes within one poll of the accepting thread
                try:
                    self._listen()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(_ACCEPT_POLL)

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
