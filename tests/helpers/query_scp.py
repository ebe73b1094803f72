"""PACS stand-ins for the expected-count lookup: pynetdicom Query/Retrieve FIND SCPs that
answer right, empty, wrongly, with a failure or slowly, a TCP server that accepts and never
says a word, and a port where nothing listens. Each listens on 127.0.0.1 and a free port,
counts what it was asked, and is a context manager (stopped on exit)."""

import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Literal, Self

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from oxidip.nodes import RemoteNode

HOST = "127.0.0.1"

Mode = Literal["count", "empty", "absent", "no-match", "failure", "garbage", "several"]

_NUMBER_OF_SERIES_RELATED_INSTANCES = 0x0020_1209


class QueryScp:
    """A Study Root C-FIND SCP answering SERIES-level queries according to ``mode``:

    - ``count``: one match with ``counts[SeriesInstanceUID]`` (no match for other series);
    - ``empty``: one match whose NumberOfSeriesRelatedInstances is empty;
    - ``absent``: one match without NumberOfSeriesRelatedInstances;
    - ``no-match``: success at once, no match;
    - ``failure``: the final status ``status`` (e.g. 0xA700, 0xC000) with an ErrorComment;
    - ``garbage``: one match whose NumberOfSeriesRelatedInstances is ``value`` (e.g. "abc",
      sent as it is: pydicom would refuse it as IS, so the element is built as LO, which
      implicit VR transfer syntaxes do not put on the wire);
    - ``several``: two matches, counts ``counts[uid]`` then ``counts[uid] + 1``.

    It listens on ``host`` (``"::1"`` for IPv6). ``delay`` seconds are slept before answering each C-FIND (a slow PACS; ``close`` cuts
    the sleep short). ``associations`` counts A-ASSOCIATE-RQs received, ``finds`` the C-FIND
    requests (``queries`` keeps their identifiers, ``calling_aets`` who sent them).
    """

    def __init__(
        self,
        counts: Mapping[str, int] | None = None,
        *,
        mode: Mode = "count",
        status: int = 0xA700,
        value: str = "abc",
        delay: float = 0.0,
        aet: str = "PACS",
        host: str = HOST,
    ) -> None:
        self.counts = dict(counts or {})
        self.mode = mode
        self.status = status
        self.value = value
        self.delay = delay
        self.aet = aet
        self.host = host
        self.associations = 0
        self.finds = 0
        self.queries: list[Dataset] = []
        self.calling_aets: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.ae = AE(ae_title=aet)
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        server = self.ae.start_server(
            (host, 0),
            block=False,
            evt_handlers=[
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_C_FIND, self._on_find),
            ],
        )
        assert server is not None  # block=False returns the running server
        self.server = server
        self.port: int = server.server_address[1]

    @property
    def address(self) -> RemoteNode:
        return RemoteNode(aet=self.aet, host=self.host, port=self.port)

    def _on_requested(self, event: evt.Event) -> None:
        with self._lock:
            self.associations += 1

    def _match(self, query: Dataset, count: object) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = query.get("StudyInstanceUID", "")
        ds.SeriesInstanceUID = query.get("SeriesInstanceUID", "")
        if count is not None:
            ds.add(DataElement(_NUMBER_OF_SERIES_RELATED_INSTANCES, "LO", count))
        return ds

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        query = event.identifier
        with self._lock:
            self.finds += 1
            self.queries.append(query)
            self.calling_aets.append(event.assoc.requestor.ae_title.strip())
        if self.delay and self._stop.wait(self.delay):
            return
        series = str(query.get("SeriesInstanceUID", ""))
        if self.mode == "count":
            if series in self.counts:
                yield 0xFF00, self._match(query, str(self.counts[series]))
        elif self.mode == "several":
            count = self.counts.get(series, 1)
            yield 0xFF00, self._match(query, str(count))
            yield 0xFF00, self._match(query, str(count + 1))
        elif self.mode == "empty":
            yield 0xFF00, self._match(query, "")
        elif self.mode == "absent":
            yield 0xFF00, self._match(query, None)
        elif self.mode == "garbage":
            yield 0xFF00, self._match(query, self.value)
        elif self.mode == "failure":
            status = Dataset()
            status.Status = self.status
            status.ErrorComment = "query SCP told to fail"
            yield status, None
            return
        yield 0x0000, None

    def close(self) -> None:
        self._stop.set()
        self.ae.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SilentServer:
    """Accepts TCP connections, reads whatever comes and never answers: an association
    request to it waits for an A-ASSOCIATE-AC that never comes. ``connections`` counts the
    connections accepted."""

    def __init__(self, aet: str = "SILENT") -> None:
        self.aet = aet
        self.host = HOST
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._peers: list[socket.socket] = []
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="silent-accept", daemon=True)
        self._thread.start()

    @property
    def address(self) -> RemoteNode:
        return RemoteNode(aet=self.aet, host=self.host, port=self.port)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                peer, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._peers.append(peer)
            threading.Thread(target=self._swallow, args=(peer,), daemon=True).start()

    def _swallow(self, peer: socket.socket) -> None:
        peer.settimeout(0.1)
        while not self._stop.is_set():
            try:
                if not peer.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            for peer in self._peers:
                peer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClosedPort:
    """A port where nothing listens: the socket is bound (so no one else takes the port)
    but never listens, and Linux refuses connections to it at once."""

    def __init__(self, aet: str = "NOBODY") -> None:
        self.aet = aet
        self.host = HOST
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((HOST, 0))
        self.port: int = self._socket.getsockname()[1]

    @property
    def address(self) -> RemoteNode:
        return RemoteNode(aet=self.aet, host=self.host, port=self.port)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
