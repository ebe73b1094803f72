"""End to end: ``oxidip serve`` processes with their registry, a PostgreSQL database of the
test's own, series of small instances and a sender that records what oxidip answered to
every instance.

- ``postgres_database()``: creates ``oxidip_e2e_<random>`` (``TEST_POSTGRES_URL`` is the
  admin URL, default ``postgresql://postgres@127.0.0.1:5432/postgres``), yields its URL and
  drops it (``WITH (FORCE)``: a killed oxidip may leave sessions behind). Without a server
  the test is skipped, except in CI, where it fails.
- ``Oxidip``: one ``oxidip serve`` subprocess (``tests.helpers.process.ServerProcess``) on
  127.0.0.1 and a free port, with the exact-path template, ready once it logs ``listening``
  (unless ``wait=False``);
  ``kill`` is SIGKILL (and waits for it, so that the next start sees a dead process, not a
  zombie whose journal it must not replay).
- ``RegistryView``: the registry the server uses, opened by the test to read series states
  and registered instances; ``wait_series`` polls it with a deadline. ``series_json`` is
  what ``oxidip series --json`` says, ``reconcile`` runs ``oxidip reconcile``.
- ``registration_stalled``: the test holds the registry's write lock, so the server stores
  and acknowledges but cannot register.
- ``send``: one association, every dataset C-STOREd, the status of each recorded,
  optionally aborted after some.
"""

import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psycopg
import pytest
from psycopg import sql
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from oxidip.registry import Registry, SeriesRow, open_registry, sqlite_path
from tests.helpers.dicom import (
    SIMPLE_TEMPLATE,
    encode_dataset,
    make_dataset,
    simple_path,
    stored_files,
)
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, Context, RawClient
from tests.helpers.process import ServerProcess
from tests.helpers.tools import in_ci

HOST = "127.0.0.1"
ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
JOURNAL_DIR_NAME = ".oxidip-journal"

# --- PostgreSQL ----------------------------------------------------------------------------


def _database_url(name: str) -> str:
    parts = urllib.parse.urlsplit(ADMIN_URL)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database ``oxidip_e2e_<random>``; yields its URL, drops it at the end."""
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        message = f"PostgreSQL unreachable at {ADMIN_URL}: {error}"
        if in_ci():
            pytest.fail(f"{message}; CI must run every test", pytrace=False)
        pytest.skip(f"{message} (apt-get install postgresql, trust for user postgres)")
    name = f"oxidip_e2e_{secrets.token_hex(6)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield _database_url(name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# --- oxidip serve -------------------------------------------------------------------------


class Oxidip:
    """One ``oxidip serve`` on ``root`` (and ``db``: None for SQLite under ``root``)."""

    def __init__(
        self,
        root: Path,
        *,
        db: str | None = None,
        pacs: Mapping[str, tuple[str, int]] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        wait: bool = True,
    ) -> None:
        self.root = root
        self.db = db
        full_env = {
            "OXIDIP_FILES_ROOT": str(root),
            "OXIDIP_LISTENER_HOST": HOST,
            "OXIDIP_LISTENER_PORT": "0",
            "OXIDIP_PATH_TEMPLATE": SIMPLE_TEMPLATE,
            "OXIDIP_SHUTDOWN_TIMEOUT": "10",
            "OXIDIP_LOG_FORMAT": "json",
            "OXIDIP_LOG_LEVEL": "INFO",
            "OXIDIP_CFIND_TIMEOUT": "10",
        }
        if db is not None:
            full_env["OXIDIP_DB_CONNECTION"] = db
        if pacs:
            full_env["OXIDIP_PACS_ADDRESS"] = ",".join(
                f"{aet}={host}:{port}" for aet, (host, port) in pacs.items()
            )
        full_env.update(env or {})
        self.process = ServerProcess(full_env)
        self.port = 0
        if not wait:
            return
        try:
            self.port = self.process.wait_listening(startup_timeout)
        except BaseException:
            self.process.kill()
            raise

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def kill(self) -> None:
        """SIGKILL, waited for (reaped)."""
        self.process.kill()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM; the exit status must be 0."""
        status = self.process.terminate(timeout)
        try:
            assert status == 0, f"oxidip serve exited with {status}:\n{self.process.output()}"
        finally:
            self.process.kill()

    def errors(self) -> list[dict[str, object]]:
        """JSON records logged at ERROR or above (exceptions included)."""
        return [
            r
            for r in self.process.records()
            if str(r.get("level", "")).upper() in {"ERROR", "CRITICAL"}
        ]

    def output(self) -> str:
        return self.process.output()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()


# --- the registry, read by the test ---------------------------------------------------------


class RegistryView:
    """The registry of ``root``/``db``, opened by the test (read only by convention). Open
    it once the server has started (the server creates and migrates it)."""

    def __init__(self, root: Path, db: str | None) -> None:
        self.registry: Registry = open_registry(db, root, pool_size=1)

    def series(self) -> dict[str, SeriesRow]:
        return {row.series_instance_uid: row for row in self.registry.list_series()}

    def instance_paths(self) -> dict[str, str]:
        """SOP Instance UID -> registered path."""
        return dict(self.registry.instance_paths())

    def wait_series(
        self,
        predicate: Callable[[dict[str, SeriesRow]], bool],
        *,
        timeout: float = 60.0,
        what: str = "series states",
        server: Oxidip | None = None,
    ) -> dict[str, SeriesRow]:
        """Polls ``series()`` until ``predicate`` holds; fails with the last rows (and the
        server's log tail) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            rows = self.series()
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                listing = "\n".join(describe(row) for row in rows.values()) or "(no series)"
                log = f"\nserver log:\n{server.output()}" if server is not None else ""
                raise AssertionError(f"no {what} within {timeout} s; series:\n{listing}{log}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def close(self) -> None:
        self.registry.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def series_json(root: Path, db: str | None, *args: str) -> list[dict[str, object]]:
    """``python -m oxidip series --json [args]`` with the server's storage root and database:
    one object per line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDIP_")}
    env["OXIDIP_FILES_ROOT"] = str(root)
    if db is not None:
        env["OXIDIP_DB_CONNECTION"] = db
    result = subprocess.run(
        [sys.executable, "-m", "oxidip", "series", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def reconcile(root: Path) -> subprocess.CompletedProcess[str]:
    """``python -m oxidip reconcile`` on ``root`` (its SQLite registry)."""
    return subprocess.run(
        [sys.executable, "-m", "oxidip", "reconcile"],
        env={"OXIDIP_FILES_ROOT": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def describe(row: SeriesRow) -> str:
    return (
        f"{row.series_instance_uid} from {row.calling_aet}: {row.state}, received"
        f" {row.received}, expected {row.expected} ({row.expected_status}"
        f"{': ' + row.expected_detail if row.expected_detail else ''})"
    )


def counts_are(
    expected: Mapping[str, int], state: str = "complete"
) -> Callable[[dict[str, SeriesRow]], bool]:
    """Predicate: each series of ``expected`` is in ``state`` with expected == received ==
    its count."""

    def check(rows: dict[str, SeriesRow]) -> bool:
        for uid, count in expected.items():
            row = rows.get(uid)
            if row is None or row.state != state or row.received != count:
                return False
            if state == "complete" and row.expected != count:
                return False
        return True

    return check


@contextlib.contextmanager
def registration_stalled(root: Path, db: str | None) -> Iterator[None]:
    """Holds the registry's write lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``LOCK TABLE
    series IN EXCLUSIVE MODE``, which lets plain reads through) until the end of the block:
    a server stores and acknowledges instances (``OXIDIP_ACK=stored``) but cannot register
    them, as with a database that stalls."""
    if db is None:
        conn = sqlite3.connect(sqlite_path(root), isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    with psycopg.connect(db, connect_timeout=5) as pg:
        pg.execute("LOCK TABLE series IN EXCLUSIVE MODE")
        yield
        pg.rollback()


# --- instances ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    study_instance_uid: str
    series_instance_uid: str
    datasets: tuple[Dataset, ...]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    def __len__(self) -> int:
        return len(self.datasets)


def make_series(count: int, *, patient_id: str = "E2E", pixel_bytes: int = 16) -> Series:
    """``count`` small instances of one new series (and study)."""
    study, series = generate_uid(), generate_uid()
    datasets = tuple(
        make_dataset(
            study_uid=study,
            series_uid=series,
            instance_number=number,
            patient_id=patient_id,
            pixel_bytes=pixel_bytes,
        )
        for number in range(1, count + 1)
    )
    return Series(study, series, datasets)


def final_path(root: Path, calling_aet: str, ds: Dataset) -> Path:
    """Where oxidip stores ``ds`` sent by ``calling_aet`` with ``SIMPLE_TEMPLATE``."""
    return root / simple_path(
        calling_aet,
        {
            "StudyInstanceUID": str(ds.StudyInstanceUID),
            "SeriesInstanceUID": str(ds.SeriesInstanceUID),
            "SOPInstanceUID": str(ds.SOPInstanceUID),
        },
    )


def journal_files(root: Path) -> list[Path]:
    directory = root / JOURNAL_DIR_NAME
    return sorted(directory.iterdir()) if directory.is_dir() else []


def instances_on_disk(root: Path) -> dict[str, Path]:
    """SOP Instance UID (the file name with ``SIMPLE_TEMPLATE``) -> path, for every stored
    file."""
    found: dict[str, Path] = {}
    for path in stored_files(root):
        assert path.suffix == ".dcm", path
        assert path.stem not in found, f"{path.stem} stored twice: {found[path.stem]}, {path}"
        found[path.stem] = path
    return found


# --- sending ------------------------------------------------------------------------------


def send(
    port: int,
    datasets: Sequence[Dataset],
    *,
    calling_aet: str,
    called_aet: str = "OXIDIP",
    abort_after: int | None = None,
    timeout: float = 30.0,
) -> dict[str, int]:
    """One association (``RawClient``: exact statuses, every wait bounded; pynetdicom's
    requestor sometimes misses a response under load, see ``tests/test_concurrency.py``):
    C-STOREs ``datasets`` in order, explicit VR little endian, and releases, or aborts after
    the first ``abort_after``. Returns the status of each, by SOP Instance UID."""
    statuses: dict[str, int] = {}
    with RawClient(HOST, port, timeout=timeout) as client:
        client.associate_ok(
            calling=calling_aet,
            called=called_aet,
            contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])],
        )
        for index, ds in enumerate(datasets):
            if abort_after is not None and index >= abort_after:
                break
            uid = str(ds.SOPInstanceUID)
            rsp = client.c_store(
                1, SECONDARY_CAPTURE, uid, encode_dataset(ds), message_id=index + 1
            )
            statuses[uid] = rsp.status
        if abort_after is None:
            client.release()
        else:
            client.abort()
    return statuses
