"""A pynetdicom Study Root C-GET SCP for the retrieve tests: it sends its instances as
C-STOREs on the requestor's association (PS3.4 C.4.3), the requestor being SCP of storage
(role selection, PS3.7 D.3.3.4), or refuses that role. Listens on 127.0.0.1 and a free
port; a context manager (stopped on exit)."""

import threading
import time
from collections.abc import Iterator
from typing import Literal, Self

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

HOST = "127.0.0.1"

#: ``wait-for-cancel``: the first instance, then nothing until the requestor's C-CANCEL-RQ
#: (at most ``patience`` seconds), then Cancel (FE00). ``no-storage-role``: storage accepted
#: without the requestor's SCP role, so that it could send nothing.
Mode = Literal["wait-for-cancel", "no-storage-role"]


class GetScp:
    """``gets`` counts the C-GET requests; ``cancelled`` is set once the C-CANCEL-RQ of the
    one waiting came (pynetdicom matches it to the request by its Message ID Being Responded
    To, PS3.7 §9.3.2.3)."""

    def __init__(self, instances: list[Dataset], *, mode: Mode, patience: float = 10.0) -> None:
        self.instances = instances
        self.mode = mode
        self.patience = patience
        self.aet = "PACS"
        self.host = HOST
        self.gets = 0
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self.ae = AE(ae_title=self.aet)
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        if mode == "no-storage-role":
            self.ae.add_supported_context(SecondaryCaptureImageStorage)
        else:
            self.ae.add_supported_context(
                SecondaryCaptureImageStorage, scu_role=False, scp_role=True
            )
        server = self.ae.start_server(
            (HOST, 0), block=False, evt_handlers=[(evt.EVT_C_GET, self._on_get)]
        )
        assert server is not None  # block=False returns the running server
        self.server = server
        self.port: int = server.server_address[1]

    def _on_get(self, event: evt.Event) -> Iterator[object]:
        self.gets += 1
        yield len(self.instances)
        for n, ds in enumerate(self.instances):
            # pynetdicom's ``is_cancelled`` is true once: it takes the C-CANCEL it reports.
            if n == 1 and self.mode == "wait-for-cancel":
                deadline = time.monotonic() + self.patience
                while time.monotonic() < deadline and not self._stop.wait(0.02):
                    if event.is_cancelled:
                        self.cancelled.set()
                        yield 0xFE00, None
                        return
            yield 0xFF00, ds

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
