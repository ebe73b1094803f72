"""A real Orthanc (Debian's ``orthanc`` package) playing the hospital PACS, for the tests
(``tests/helpers/orthanc.py``, which fails or skips when it is missing) and for ``oxidip bench
pull``.

``OrthancServer(work_dir, modalities={...})`` is a context manager: it writes a config under
``work_dir`` (own storage and index directories, free HTTP and DICOM ports on 127.0.0.1, AE
title ORTHANC, no plugins, no authentication, no remote access, called AE title not checked,
a short StableAge), starts ``Orthanc config.json``, waits until its REST API answers and its
DICOM port accepts connections, and stops it on exit (SIGTERM, wait, SIGKILL). Its output
goes to ``work_dir/orthanc.log`` and is quoted when something fails.

Orthanc 1.10.1 starts in about 0.1 s but takes about 3.5 s to stop (its HTTP server and
DICOM server poll for the stop every 2 s and 1 s), so tests that can share one Orthanc
should (a module-scoped fixture; fresh UIDs keep tests apart).

Orthanc answers C-FIND (and accepts pushes to ``/modalities/{name}/store``) only for AE
titles listed in ``DicomModalities``: an unknown calling AE title gets its association
accepted and then aborted at the C-FIND ("DICOM authorization rejected ... This AET is not
listed in configuration option DicomModalities"). AE titles are compared case-insensitively.
So the receiver's AE title must be a modality, from the config (``modalities=``) or added
later with ``add_modality`` (e.g. once the receiver's port is known).
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from oxidip.bench.tools import tool
from oxidip.nodes import RemoteNode

HOST = "127.0.0.1"
INSTALL_HINT = "apt-get install orthanc"

#: Debian installs Orthanc in /usr/sbin, which is not on every user's PATH.
_FALLBACK_PATHS = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")


def find_orthanc() -> str | None:
    path = tool("Orthanc")
    if path is not None:
        return path
    for candidate in _FALLBACK_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def need_orthanc() -> str:
    """The Orthanc binary, or a RuntimeError saying how to install it."""
    path = find_orthanc()
    if path is None:
        raise RuntimeError(f"Orthanc not found on PATH nor in /usr/sbin ({INSTALL_HINT})")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class OrthancError(AssertionError):
    """Orthanc did not start, or a REST call failed; carries Orthanc's log tail."""


class OrthancServer:
    """One Orthanc process; see the module docstring. ``modalities`` maps modality names to
    ``(aet, host, port)``: who may query it and where it can push."""

    def __init__(
        self,
        work_dir: Path,
        *,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        aet: str = "ORTHANC",
        stable_age: int = 2,
        startup_timeout: float = 30.0,
        extra_config: Mapping[str, Any] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """``environment``: Orthanc's environment variables (default: this process's), e.g.
        with or without ``TCP_NODELAY=1``, which the dcmtk inside Orthanc reads."""
        self.work_dir = Path(work_dir)
        self.modalities = dict(modalities or {})
        self.aet = aet
        self.stable_age = stable_age
        self.startup_timeout = startup_timeout
        self.extra_config = dict(extra_config or {})
        self.environment = None if environment is None else dict(environment)
        self.host = HOST
        self.http_port = 0
        self.dicom_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.work_dir / "orthanc.log"
        self.config_path = self.work_dir / "config.json"
        self.version = ""

    # --- lifecycle ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        storage = self.work_dir / "storage"
        index = self.work_dir / "index"
        storage.mkdir(parents=True, exist_ok=True)
        index.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "oxidip-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(index),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "StableAge": self.stable_age,
            "Plugins": [],
            "SaveJobs": False,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
        }
        config.update(self.extra_config)
        return config

    def start(self) -> None:
        binary = need_orthanc()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        last = ""
        # The free ports are only free when looked at: another process may take one before
        # Orthanc binds it. Orthanc then exits, and we try again with other ports.
        for _ in range(3):
            self.http_port, self.dicom_port = free_port(), free_port()
            while self.dicom_port == self.http_port:
                self.dicom_port = free_port()
            self.config_path.write_text(json.dumps(self.config(), indent=2))
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [binary, str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.work_dir,
                    env=self.environment,
                )
            if self._wait_ready():
                return
            last = self.log_tail()
            self.stop()
        raise OrthancError(f"Orthanc did not start within {self.startup_timeout} s:\n{last}")

    def _wait_ready(self) -> bool:
        """True once GET /system answers and the DICOM port accepts; False if Orthanc
        exited."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                system = self.get("/system", timeout=2)
            except (OSError, OrthancError):
                time.sleep(0.05)
                continue
            self.version = str(system.get("Version", ""))
            try:
                with socket.create_connection((self.host, self.dicom_port), timeout=2):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        """Everything Orthanc logged so far (warnings and errors: its default verbosity)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"

    # --- addresses -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def address(self) -> RemoteNode:
        """Where its C-FIND SCP answers, for ``ExpectedCountLookup``."""
        return RemoteNode(aet=self.aet, host=self.host, port=self.dicom_port)

    # --- REST ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Mapping[str, Any] | list[Any] | str | None = None,
        *,
        content_type: str | None = None,
        timeout: float = 60.0,
    ) -> Any:
        """One REST call; returns the decoded JSON answer (or the text when it is not JSON).
        A JSON body is sent for mappings and lists. Raises OrthancError on HTTP errors."""
        data: bytes | None
        if isinstance(body, Mapping | list):
            data = json.dumps(body).encode()
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            data = body.encode()
            content_type = content_type or "text/plain"
        else:
            data = body
            if data is not None:
                content_type = content_type or "application/octet-stream"
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise OrthancError(
                f"{method} {path}: HTTP {error.code} {detail}\nOrthanc log:\n{self.log_tail()}"
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get(self, path: str, *, timeout: float = 60.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def upload(self, data: Path | str | bytes) -> str:
        """Loads one Part 10 file (a path or its bytes) with ``POST /instances``; returns the
        instance's Orthanc id."""
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
        answer = self.request("POST", "/instances", data, content_type="application/dicom")
        if not isinstance(answer, dict) or answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"POST /instances answered {answer!r}")
        return str(answer["ID"])

    def series(self) -> list[dict[str, Any]]:
        """Every series, expanded (``GET /series?expand``): ``ID``, ``ParentStudy``,
        ``Instances`` (Orthanc ids), ``MainDicomTags`` (``SeriesInstanceUID``, ...)."""
        answer = self.get("/series?expand")
        assert isinstance(answer, list), answer
        return answer

    def series_by_uid(self) -> dict[str, dict[str, Any]]:
        """``series()`` by SeriesInstanceUID."""
        return {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in self.series()}

    def store_series(
        self, modality_name: str, series_orthanc_id: str, synchronous: bool = True
    ) -> dict[str, Any]:
        """Pushes a series to a modality (``POST /modalities/{name}/store``): Orthanc opens
        one association, C-STOREs every instance and releases. Synchronous: returns when done
        (``InstancesCount``, ``FailedInstancesCount``, ...; raises OrthancError when the push
        failed). Otherwise returns the job (``ID``, ``Path``), see ``wait_job``."""
        answer = self.request(
            "POST",
            f"/modalities/{urllib.parse.quote(modality_name, safe='')}/store",
            {"Resources": [series_orthanc_id], "Synchronous": synchronous},
        )
        assert isinstance(answer, dict), answer
        return answer

    def wait_job(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Waits for a job to end; returns it (``State`` is "Success" or "Failure")."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/jobs/{job_id}")
            assert isinstance(job, dict), job
            if job.get("State") in ("Success", "Failure"):
                return job
            if time.monotonic() > deadline:
                raise OrthancError(f"job {job_id} still {job.get('State')} after {timeout} s")
            time.sleep(0.1)

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Adds (or replaces) a modality (``PUT /modalities/{name}``): from now on Orthanc
        answers C-FINDs from ``aet`` and can push to ``host:port``."""
        self.request(
            "PUT",
            f"/modalities/{urllib.parse.quote(name, safe='')}",
            {"AET": aet, "Host": host, "Port": port},
        )
        self.modalities[name] = (aet, host, port)

    def echo(self, modality_name: str) -> bool:
        """C-ECHO from Orthanc to a modality (``POST /modalities/{name}/echo``)."""
        try:
            self.request(
                "POST", f"/modalities/{urllib.parse.quote(modality_name, safe='')}/echo", {}
            )
        except OrthancError:
            return False
        return True
