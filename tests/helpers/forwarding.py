"""Forwarding end to end: routes files, ``oxidip queue --json`` polled with a deadline, and
the destinations oxidip forwards to.

- ``write_routes``: a routes file (TOML) from destinations and rules.
- ``forward_env``: the ``OXIDIP_*`` variables of a fast test (short retries and lease).
- ``queue_jobs`` / ``wait_jobs``: ``python -m oxidip queue --json`` (one object per job),
  polled until a predicate holds.
- ``Storescp``: dcmtk ``storescp +B`` (bit-preserving: the data set written as received) on a
  free port (or a given one, to start it late), logging at debug level so that each
  association's SOP Instance UIDs can be read back (``associations``).
- ``DestinationScp``: a pynetdicom Storage SCP that records every arrival (per association)
  and answers what the test says: a status, an abort after some instances, a rejection of
  the association, or a response held until the test releases it.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

from tests.helpers.dicom import SECONDARY_CAPTURE, read_part10
from tests.helpers.nats import free_port
from tests.helpers.tools import dcmtk_env, require_tool, wait_listening

HOST = "127.0.0.1"

Job = dict[str, Any]

# --- configuration ---------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def write_routes(
    path: Path,
    destinations: Mapping[str, Mapping[str, object]],
    rules: Sequence[Mapping[str, object]],
) -> Path:
    """Writes a routes file: ``[destinations.NAME]`` tables and ``[[rules]]``."""
    lines: list[str] = []
    for name, keys in destinations.items():
        lines.append(f"[destinations.{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        lines.append("")
    for rule in rules:
        lines.append("[[rules]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in rule.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def destination(aet: str, port: int, **more: object) -> dict[str, object]:
    return {"aet": aet, "host": HOST, "port": port, **more}


def forward_env(routes: Path, **overrides: str) -> dict[str, str]:
    """A fast test's forwarding variables: retries after 0.2 s (up to 1 s), a 3 s lease, 5 s
    network timeout, a breaker that does not open unless asked; ``overrides`` take the
    ``OXIDIP_FORWARD_`` suffix (``RETRY_BASE="1"``)."""
    env = {
        "OXIDIP_ROUTES": str(routes),
        "OXIDIP_FORWARD_RETRY_BASE": "0.2",
        "OXIDIP_FORWARD_RETRY_MAX": "1",
        "OXIDIP_FORWARD_LEASE": "3",
        "OXIDIP_FORWARD_TIMEOUT": "5",
        "OXIDIP_FORWARD_BREAKER_FAILURES": "1000",
    }
    env.update({f"OXIDIP_FORWARD_{key}": value for key, value in overrides.items()})
    return env


# --- oxidip queue --json ----------------------------------------------------------------------


def queue_jobs(root: Path, db: str | None, *args: str) -> list[Job]:
    """``python -m oxidip queue --json [args]`` on the server's storage root and database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDIP_")}
    env["OXIDIP_FILES_ROOT"] = str(root)
    if db is not None:
        env["OXIDIP_DB_CONNECTION"] = db
    result = subprocess.run(
        [sys.executable, "-m", "oxidip", "queue", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"oxidip queue --json: {result.returncode}\n{result.stderr}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def describe_jobs(jobs: Sequence[Job]) -> str:
    return (
        "\n".join(
            f"job {j['id']} {j['rule']} -> {j['destination']}: {j['state']}, delivered"
            f" {j['delivered']}/{j['total']}, attempts {j['attempts']},"
            f" next {j.get('next_attempt_at')}, last error {j['last_error']!r}"
            for j in jobs
        )
        or "(no jobs)"
    )


def wait_jobs(
    root: Path,
    db: str | None,
    predicate: Callable[[list[Job]], bool],
    *,
    timeout: float = 60.0,
    what: str = "jobs",
    log: Callable[[], str] | None = None,
) -> list[Job]:
    """Polls ``oxidip queue --json`` until ``predicate(jobs)`` holds; fails with the last
    listing (and ``log()``, e.g. the server's log tail) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = queue_jobs(root, db)
        if predicate(jobs):
            return jobs
        if time.monotonic() > deadline:
            tail = f"\nserver log:\n{log()}" if log is not None else ""
            raise AssertionError(
                f"no {what} within {timeout} s; queue:\n{describe_jobs(jobs)}{tail}"
            )
        time.sleep(0.1)  # each call is a process start (~0.3 s): the poll's own pace


def all_done(count: int) -> Callable[[list[Job]], bool]:
    """Predicate: ``count`` jobs, every one done with every item delivered."""

    def check(jobs: list[Job]) -> bool:
        return len(jobs) == count and all(
            j["state"] == "done" and j["delivered"] == j["total"] for j in jobs
        )

    return check


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, poll: float = 0.02
) -> None:
    """Polls ``condition`` until true; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(poll)


# --- dcmtk storescp +B -------------------------------------------------------------------------


_ASSOCIATION = re.compile(r"^I: Association Received")
_SOP_INSTANCE = re.compile(r"^D: Affected SOP Instance UID\s*: (\S+)")


class Storescp:
    """``storescp -d +B -aet AET -od DIR PORT`` (one association at a time)."""

    def __init__(self, out: Path, *, aet: str = "STORESCP", port: int | None = None) -> None:
        self.out = out
        self.aet = aet
        self.port = port or free_port()
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out.parent / f"{out.name}.log"
        self._log = self.log_path.open("w")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            [require_tool("storescp"), "-d", "+B", "-aet", aet, "-od", str(out), str(self.port)],
            env=dcmtk_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_listening(HOST, self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def files(self) -> dict[str, Path]:
        """SOP Instance UID (from each file's meta) -> file, for every complete file."""
        found: dict[str, Path] = {}
        for path in sorted(self.out.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                uid = read_part10(path).text(0x00020003)
            except AssertionError:
                continue  # being written
            if uid:
                found[uid] = path
        return found

    def associations(self) -> list[list[str]]:
        """The SOP Instance UIDs of each association that stored something, in order (from
        the debug log; the readiness check's bare connection is one without)."""
        result: list[list[str]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if _ASSOCIATION.match(line):
                result.append([])
            elif (match := _SOP_INSTANCE.match(line)) and result:
                result[-1].append(match.group(1))
        return [uids for uids in result if uids]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a pynetdicom destination -------------------------------------------------------------------


@dataclass
class Arrival:
    association: int
    sop_instance_uid: str


@dataclass
class DestinationScp:
    """A pynetdicom Storage SCP on a free port (AE title ``aet``; with ``reject``, it rejects
    every association: called AE title not recognised, rejected-permanent). For each
    C-STORE it records the arrival, then:

    - the first ``abort_after`` arrivals of its first association answered, the next one
      aborts that association (A-ABORT); later associations are answered;
    - with ``hold_after``, the next arrival after that many waits for ``release`` before it
      is answered (``holding`` is set meanwhile);
    - otherwise answers ``status``.
    """

    aet: str = "DEST"
    status: int = 0x0000
    reject: bool = False
    abort_after: int | None = None
    hold_after: int | None = None
    sop_classes: Sequence[str] = (SECONDARY_CAPTURE,)
    arrivals: list[Arrival] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        # Keyed by the association itself (kept alive here: an id() could be reused).
        self._associations: dict[object, int] = {}
        self.holding = threading.Event()
        self.release = threading.Event()
        self.ae = AE(ae_title=self.aet)
        self.ae.maximum_pdu_size = 0
        self.ae.require_called_aet = self.reject  # called with another AE title: rejected
        if self.reject:
            self.ae.ae_title = "NOT-CALLED"
        for sop_class in dict.fromkeys(self.sop_classes):
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.server = self.ae.start_server(
            (HOST, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port: int = self.server.server_address[1]

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            association = self._associations.setdefault(event.assoc, len(self._associations))
            self.arrivals.append(Arrival(association, str(event.request.AffectedSOPInstanceUID)))
            in_association = sum(1 for a in self.arrivals if a.association == association)
            total = len(self.arrivals)
        if (
            self.abort_after is not None
            and association == 0
            and in_association == self.abort_after + 1
        ):
            event.assoc.abort()
            return 0x0000
        if self.hold_after is not None and total == self.hold_after + 1:
            self.holding.set()
            self.release.wait(60)
        return self.status

    def counts(self) -> Counter[str]:
        """Arrivals per SOP Instance UID."""
        with self._lock:
            return Counter(a.sop_instance_uid for a in self.arrivals)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
