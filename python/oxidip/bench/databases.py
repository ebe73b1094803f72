"""Databases for benchmark runs: a scratch PostgreSQL database with a fresh schema per run,
and counting the instances a receiver has registered so far."""

import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from oxidip.registry import sqlite_path

__all__ = ["DEFAULT_POSTGRES", "Postgres", "RegisteredCount", "wait_registered"]

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


class Postgres:
    """A database of our own (``oxidip_bench_<random>``) with one fresh schema per run;
    ``close`` drops it all."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"oxidip_bench_{secrets.token_hex(6)}"
        self._admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
        self._admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self._schemas = 0

    def url(self, schema: str | None = None) -> str:
        parts = urlsplit(self.admin_url)
        query = f"options=-csearch_path%3D{schema}" if schema else ""
        return urlunsplit((parts.scheme, parts.netloc, f"/{self.name}", query, ""))

    @contextmanager
    def schema(self) -> Iterator[str]:
        """A fresh, empty schema; yields the URL that puts oxidip's tables in it."""
        self._schemas += 1
        name = f"run{self._schemas}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        try:
            yield self.url(name)
        finally:
            with psycopg.connect(self.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))

    def close(self) -> None:
        try:
            self._admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )
        finally:
            self._admin.close()


class RegisteredCount:
    """Counts the instances registered so far (0 while the database is not there yet), on one
    connection kept open between calls (autocommit: every count sees the latest commits).
    ``connection`` None: the SQLite registry under ``storage``."""

    def __init__(self, connection: str | None, storage: Path) -> None:
        self.connection = connection
        self.storage = storage
        self._sqlite: sqlite3.Connection | None = None
        self._postgres: psycopg.Connection | None = None

    def __call__(self) -> int:
        try:
            if self.connection is None:
                if self._sqlite is None:
                    path = sqlite_path(self.storage)
                    if not path.exists():
                        return 0
                    self._sqlite = sqlite3.connect(
                        f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None
                    )
                row = self._sqlite.execute("SELECT count(*) FROM instances").fetchone()
            else:
                if self._postgres is None:
                    self._postgres = psycopg.connect(
                        self.connection, autocommit=True, connect_timeout=5
                    )
                row = self._postgres.execute("SELECT count(*) FROM instances").fetchone()
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
            return 0
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._postgres is not None:
            self._postgres.close()


def wait_registered(connection: str | None, storage: Path, count: int, timeout: float) -> float:
    """Polls the registry until it holds ``count`` instances; returns when
    (``time.perf_counter``). Raises RuntimeError after ``timeout`` seconds."""
    counter = RegisteredCount(connection, storage)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if counter() >= count:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{counter()} of {count} instances registered after {timeout:.0f} s"
                )
            time.sleep(0.002)
    finally:
        counter.close()
