"""Sending instances: dcmtk ``storescu`` proposing each file's own transfer syntax, pynetdicom
sending files byte for byte, and a pynetdicom capture SCP that records exactly what a sender
put on the wire (the ground truth for ``storescu``, which re-encodes datasets)."""

import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt

from oxidip.bench.tools import keep_pynetdicom_responses
from tests.helpers.tools import dcmtk_env, require_tool

# oxidip answers within microseconds on loopback, fast enough to meet a race in pynetdicom's
# requestor that drops the response (see keep_pynetdicom_responses).
keep_pynetdicom_responses()

# --- dcmtk storescu ------------------------------------------------------------------------


def storescu_config(pairs: Iterable[tuple[str, str]], path: Path, profile: str = "Corpus") -> str:
    """Writes a storescu association profile (``-xf path profile``) proposing one presentation
    context per (SOP class, transfer syntax) pair with that transfer syntax only, so that
    storescu sends every file in its own transfer syntax. Returns the profile name."""
    unique: list[tuple[str, str]] = []
    for pair in pairs:
        if pair not in unique:
            unique.append(pair)
    if len(unique) > 128:
        raise ValueError(f"{len(unique)} presentation contexts, at most 128 fit an association")
    syntaxes = sorted({ts for _, ts in unique})
    lines = ["[[TransferSyntaxes]]"]
    for index, ts in enumerate(syntaxes):
        lines += [f"[TS{index}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", f"[{profile}Contexts]"]
    for index, (sop_class, ts) in enumerate(unique, start=1):
        lines.append(f"PresentationContext{index} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", f"[{profile}]", f"PresentationContexts = {profile}Contexts"]
    path.write_text("\n".join(lines) + "\n")
    return profile


def storescu(
    host: str,
    port: int,
    files: Sequence[Path | str],
    *,
    calling_aet: str = "STORESCU",
    called_aet: str = "OXIDIP",
    config: tuple[Path, str] | None = None,
    extra: Sequence[str] = (),
    timeout: float = 180.0,
) -> subprocess.CompletedProcess[str]:
    """Runs storescu once (one association) for ``files``; does not halt on a failed store."""
    args = [require_tool("storescu"), "-nh", "-aet", calling_aet, "-aec", called_aet]
    if config is not None:
        args += ["-xf", str(config[0]), config[1]]
    args += [*extra, host, str(port), *map(str, files)]
    return subprocess.run(
        args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


# --- pynetdicom ----------------------------------------------------------------------------


@contextmanager
def chunked_file_sending() -> Iterator[None]:
    """pynetdicom sends a file path's dataset bytes as they are in the file (no decoding and
    re-encoding) only with STORE_SEND_CHUNKED_DATASET; restored afterwards."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def scu(calling_aet: str = "PYNETDICOM") -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    return ae


def status_of(result: Dataset) -> int | None:
    """The Status of a C-STORE/C-ECHO response (None when no response arrived)."""
    return int(result.Status) if result is not None and "Status" in result else None


# --- capture SCP ---------------------------------------------------------------------------


@dataclass
class Captured:
    calling_aet: str
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data: bytes


@dataclass
class CaptureScp:
    """A pynetdicom Storage SCP on a free port that answers 0000 and keeps the raw dataset
    bytes of every C-STORE."""

    sop_classes: Sequence[str]
    received: list[Captured] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.ae = AE(ae_title="CAPTURE")
        self.ae.maximum_pdu_size = 0
        for sop_class in dict.fromkeys(self.sop_classes):
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = self.server.server_address[1]

    def _on_store(self, event: evt.Event) -> int:
        req = event.request
        captured = Captured(
            calling_aet=event.assoc.requestor.ae_title.strip(),
            sop_class=str(req.AffectedSOPClassUID),
            sop_instance=str(req.AffectedSOPInstanceUID),
            transfer_syntax=str(event.context.transfer_syntax),
            data=req.DataSet.getvalue(),
        )
        with self._lock:
            self.received.append(captured)
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
