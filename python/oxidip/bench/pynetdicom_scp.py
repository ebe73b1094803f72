"""The pynetdicom Storage SCP the receive benchmark compares against: pynetdicom's fastest
store handler, writing each data set as received (``event.encoded_dataset()``, file meta
included, no decoding), one file per instance named by its SOP Instance UID.

Accepts every storage SOP class in every transfer syntax pynetdicom knows, with pynetdicom's
default maximum PDU length, up to 1000 associations at once (pynetdicom's default is 10) with
no network timeout (so idle associations stay open, as with the other receivers). Prints
``listening <port>`` on stdout once bound (``--port 0`` picks a free port); stops on
SIGTERM/SIGINT.

    python -m oxidip.bench.pynetdicom_scp --port 0 --out /tmp/store [--aet PYNETDICOM]
"""

import argparse
import signal
import sys
import threading
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)  # the handler of EVT_C_STORE only
        uid = request.AffectedSOPInstanceUID
        with (out / f"{uid}.dcm").open("wb") as f:
            f.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=args.aet)
    ae.maximum_associations = 1000
    ae.network_timeout = None
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:  # always set in pynetdicom's list
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        (args.host, args.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None  # block=False returns the server
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"listening {server.server_address[1]}", flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
