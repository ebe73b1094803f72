"""The embedded registry: one SQLite file (WAL, synchronous=NORMAL), every write transaction
``BEGIN IMMEDIATE`` so that writers, threads or processes, take turns."""

import contextlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from oxidip._boundary import InstanceStored
from oxidip.registry._model import (
    ExpectedStatus,
    InstanceRow,
    RegisterResult,
    SeriesKey,
    SeriesRow,
    Transition,
    check_expected,
    check_schema_version,
    prepare,
    result_of,
    schema_v1,
    schema_v2,
    series_row,
    state_sql,
    transitions_of,
)
from oxidip.registry._pulls import PullMethods, schema_v4
from oxidip.registry._queue import Dialect, QueueMethods, Tx, schema_v3
from oxidip.routing import Router

__all__ = ["DIALECT", "MIGRATIONS", "SqliteRegistry"]

T = TypeVar("T")

#: How the forwarding queue's SQL is written here: instants as REAL unix seconds, lists as
#: JSON arrays; no row locks (a write transaction holds the whole database).
DIALECT = Dialect(
    timestamp="REAL",
    identity="INTEGER PRIMARY KEY",
    skip_locked="",
    for_update="",
    postgres=False,
)

#: (version, statements): applied in order, each version once, in one transaction.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, schema_v1(timestamp="REAL")),
    (2, schema_v2(timestamp="REAL")),
    (3, schema_v3(DIALECT)),
    (4, schema_v4(DIALECT)),
)

LATEST = MIGRATIONS[-1][0]

#: The (UID, calling AE) pairs given as one JSON array of pairs.
_PAIRS = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)"
#: The series whose keys are given so.
_IN_KEYS = f"(series_instance_uid, calling_aet) IN ({_PAIRS})"

_SERIES_COLUMNS = """s.series_instance_uid, s.study_instance_uid, s.calling_aet, st.patient_id,
    s.modality, s.series_description, s.series_number, s.expected, s.expected_status,
    s.expected_detail, s.received, s.state, s.first_received_at, s.last_received_at,
    s.finalized_at"""

_SELECT_SERIES = f"""SELECT {_SERIES_COLUMNS} FROM series s
    JOIN studies st ON st.study_instance_uid = s.study_instance_uid"""

_ACTIVE = (
    "EXISTS (SELECT 1 FROM series_activity a"
    " WHERE a.series_instance_uid = series.series_instance_uid"
    " AND a.calling_aet = series.calling_aet)"
)
_RULE = state_sql(expected="expected", received="received", active=_ACTIVE)

# By SOP Instance UID alone (the primary key's first column; cheaper than pairs), the caller
# keeps the (UID, AE) pairs of its batch.
_EXISTING = """SELECT sop_instance_uid, calling_aet FROM instances
    WHERE sop_instance_uid IN (SELECT value FROM json_each(?))"""

_ADD_RECEIVED = """UPDATE series SET received = received + ?
    WHERE series_instance_uid = ? AND calling_aet = ?"""

_DECIDE = f"""UPDATE series SET state = d.state,
    finalized_at = CASE WHEN d.state = 'receiving' THEN NULL
        WHEN series.state <> d.state OR series.finalized_at IS NULL THEN ?
        ELSE series.finalized_at END
    FROM (SELECT series_instance_uid AS uid, calling_aet AS aet, {_RULE} AS state
        FROM series WHERE {_IN_KEYS}) d
    WHERE series.series_instance_uid = d.uid AND series.calling_aet = d.aet"""

_PATIENT = """INSERT INTO patients (patient_id, patient_name, patient_birth_date, patient_sex)
    VALUES (?, ?, ?, ?) ON CONFLICT (patient_id) DO NOTHING"""

_STUDY = """INSERT INTO studies (study_instance_uid, patient_id, study_date, study_time,
    accession_number, study_description) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (study_instance_uid) DO NOTHING"""

_SERIES = """INSERT INTO series (series_instance_uid, study_instance_uid, calling_aet, called_aet,
    modality, series_description, series_number, expected, expected_status, expected_detail,
    received, state, first_received_at, last_received_at, finalized_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 'pending', '', 0, 'receiving', ?, ?, NULL)
    ON CONFLICT (series_instance_uid, calling_aet) DO UPDATE SET
        called_aet = coalesce(series.called_aet, excluded.called_aet),
        modality = coalesce(series.modality, excluded.modality),
        series_description = coalesce(series.series_description, excluded.series_description),
        series_number = coalesce(series.series_number, excluded.series_number),
        first_received_at = min(series.first_received_at, excluded.first_received_at),
        last_received_at = max(series.last_received_at, excluded.last_received_at)"""

_INSTANCE = """INSERT INTO instances (sop_instance_uid, calling_aet, series_instance_uid,
    sop_class_uid, instance_number, transfer_syntax, path, size, node, association_id,
    received_at, stored_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (sop_instance_uid, calling_aet) DO """

_ON_DUPLICATE = {
    "overwrite": """UPDATE SET sop_class_uid = excluded.sop_class_uid,
        instance_number = excluded.instance_number, transfer_syntax = excluded.transfer_syntax,
        path = excluded.path, size = excluded.size, node = excluded.node,
        association_id = excluded.association_id, received_at = excluded.received_at,
        stored_at = excluded.stored_at""",
    "keep-first": "NOTHING",
}

_ACTIVITY = """INSERT INTO series_activity (series_instance_uid, calling_aet, node,
    association_id) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"""


def _keys(keys: Sequence[tuple[str, str]]) -> bytes:
    return msgspec.json.encode(list(keys))


class _Tx:
    """A write transaction's connection, as the queue's shared code uses it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> sqlite3.Cursor:
        return self._conn.execute(sql, params or {})

    def executemany(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        self._conn.executemany(sql, params)


class SqliteRegistry(QueueMethods, PullMethods):
    """``Registry`` on one SQLite file. One connection, used by one thread at a time; other
    processes may open the same file (SQLite's locking makes their writes take turns)."""

    def __init__(self, path: Path, duplicates: str, router: Router | None = None) -> None:
        super().__init__(DIALECT, router)
        self.path = path
        self._duplicates = duplicates
        self._instance_sql = _INSTANCE + _ON_DUPLICATE[duplicates]
        self._lock = threading.Lock()
        self._conn = self._connect()
        # Persistent for the file; needs a moment without other writers, hence the busy timeout.
        self._conn.execute("PRAGMA journal_mode = WAL")

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        if read_only:
            conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=60
            )
        else:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=60
            )
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking SQLite's write lock at once (BEGIN IMMEDIATE)."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _transact(self, work: Callable[[Tx], T]) -> T:
        with self._write() as conn:
            return work(_Tx(conn))

    def _read(self, work: Callable[[Tx], T]) -> T:
        # A statement outside BEGIN is its own read transaction: no write lock to wait for.
        with self._lock:
            return work(_Tx(self._conn))

    # --- schema -------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS oxidip_schema_version"
                " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            (current,) = conn.execute(
                "SELECT coalesce(max(version), 0) FROM oxidip_schema_version"
            ).fetchone()
            check_schema_version(current, LATEST, f"registry {self.path}")
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO oxidip_schema_version (version, applied_at) VALUES (?, ?)",
                        (version, time.time()),
                    )

    # --- state --------------------------------------------------------------------------

    def _recompute(
        self, conn: sqlite3.Connection, keys: Sequence[SeriesKey], now: float
    ) -> list[SeriesRow]:
        """Re-decides the state of the series ``keys`` (already write-locked); returns them
        sorted by key."""
        if not keys:
            return []
        encoded = _keys(keys)
        conn.execute(_DECIDE, (now, encoded))
        rows = conn.execute(
            f"{_SELECT_SERIES} WHERE (s.series_instance_uid, s.calling_aet) IN ({_PAIRS})"
            " ORDER BY s.series_instance_uid, s.calling_aet",
            (encoded,),
        )
        return [series_row(row) for row in rows]

    def _transitions(
        self,
        conn: sqlite3.Connection,
        keys: Sequence[SeriesKey],
        previous: dict[SeriesKey, str | None],
        now: float,
    ) -> list[Transition]:
        """Recomputes the series ``keys`` and creates the forwarding jobs of their state
        changes, in the caller's transaction."""
        transitions = transitions_of(self._recompute(conn, keys, now), previous)
        self._create_jobs(_Tx(conn), transitions, None, now)
        return transitions

    def _states(self, conn: sqlite3.Connection, keys: Sequence[SeriesKey]) -> dict[SeriesKey, str]:
        rows = conn.execute(
            f"SELECT series_instance_uid, calling_aet, state FROM series WHERE {_IN_KEYS}",
            (_keys(keys),),
        )
        return {(uid, aet): state for uid, aet, state in rows}

    def register(self, instances: Sequence[InstanceStored], process_id: str) -> RegisterResult:
        rows = prepare(instances, process_id, self._duplicates)
        if not rows:
            return RegisterResult([], [], [])
        patients: dict[str, InstanceRow] = {}
        studies: dict[str, InstanceRow] = {}
        series: dict[SeriesKey, tuple[InstanceRow, float, float]] = {}
        activity: set[tuple[str, str, str, int]] = set()
        for row in rows:
            if row.patient_id is not None:
                patients.setdefault(row.patient_id, row)
            studies.setdefault(row.study_instance_uid, row)
            key = (row.series_instance_uid, row.calling_aet)
            first, earliest, latest = series.get(key, (row, row.received_at, row.stored_at))
            series[key] = (first, min(earliest, row.received_at), max(latest, row.stored_at))
            activity.add((*key, row.process_id, row.association_id))
        keys = sorted(series)
        now = time.time()
        with self._write() as conn:
            previous: dict[SeriesKey, str | None] = dict.fromkeys(keys)
            previous.update(self._states(conn, keys))
            conn.executemany(
                _PATIENT,
                [
                    (r.patient_id, r.patient_name, r.patient_birth_date, r.patient_sex)
                    for r in patients.values()
                ],
            )
            conn.executemany(
                _STUDY,
                [
                    (
                        r.study_instance_uid,
                        r.patient_id,
                        r.study_date,
                        r.study_time,
                        r.accession_number,
                        r.study_description,
                    )
                    for r in studies.values()
                ],
            )
            conn.executemany(
                _SERIES,
                [
                    (
                        uid,
                        r.study_instance_uid,
                        aet,
                        r.called_aet,
                        r.modality,
                        r.series_description,
                        r.series_number,
                        earliest,
                        latest,
                    )
                    for (uid, aet), (r, earliest, latest) in series.items()
                ],
            )
            # ``received`` grows by the instances new to the registry, counted here rather
            # than recounted per batch (a recount reads the whole series: quadratic in its
            # size over a series' batches). The write lock makes check and insert one step.
            sops = msgspec.json.encode([r.sop_instance_uid for r in rows])
            existing = {(uid, aet) for uid, aet in conn.execute(_EXISTING, (sops,))}
            added = Counter(
                (r.series_instance_uid, r.calling_aet)
                for r in rows
                if (r.sop_instance_uid, r.calling_aet) not in existing
            )
            conn.executemany(
                self._instance_sql,
                [
                    (
                        r.sop_instance_uid,
                        r.calling_aet,
                        r.series_instance_uid,
                        r.sop_class_uid,
                        r.instance_number,
                        r.transfer_syntax,
                        r.path,
                        r.size,
                        r.process_id,
                        r.association_id,
                        r.received_at,
                        r.stored_at,
                    )
                    for r in rows
                ],
            )
            conn.executemany(
                _ADD_RECEIVED, [(n, uid, aet) for (uid, aet), n in sorted(added.items())]
            )
            conn.executemany(_ACTIVITY, sorted(activity))
            result = result_of(self._recompute(conn, keys, now), previous, set(keys))
            if self._router is not None:
                batch: dict[SeriesKey, list[str]] = {}
                for r in rows:
                    batch.setdefault((r.series_instance_uid, r.calling_aet), []).append(
                        r.sop_instance_uid
                    )
                self._create_jobs(_Tx(conn), result.transitions, batch, now)
        return result

    def set_expected(
        self,
        series_instance_uid: str,
        expected: int | None,
        status: ExpectedStatus,
        detail: str,
        calling_aet: str | None = None,
    ) -> list[Transition]:
        checked = check_expected(expected, status)
        now = time.time()
        with self._write() as conn:
            previous = {
                (uid, aet): state
                for uid, aet, state in conn.execute(
                    "SELECT series_instance_uid, calling_aet, state FROM series"
                    " WHERE series_instance_uid = ? AND coalesce(?, calling_aet) = calling_aet",
                    (series_instance_uid, calling_aet),
                )
            }
            if not previous:
                return []
            conn.execute(
                f"UPDATE series SET expected = ?, expected_status = ?, expected_detail = ?"
                f" WHERE {_IN_KEYS}",
                (expected, checked.value, detail, _keys(list(previous))),
            )
            return self._transitions(conn, list(previous), dict(previous), now)

    def association_ended(self, process_id: str, association_id: int) -> list[Transition]:
        return self._end_activity("node = ? AND association_id = ?", (process_id, association_id))

    def process_ended(self, process_id: str) -> list[Transition]:
        return self._end_activity("node = ?", (process_id,))

    def _end_activity(self, where: str, params: tuple[str | int, ...]) -> list[Transition]:
        """Removes the activity rows matching ``where`` and recomputes their series."""
        now = time.time()
        with self._write() as conn:
            keys: list[SeriesKey] = conn.execute(
                "SELECT DISTINCT series_instance_uid, calling_aet FROM series_activity"
                f" WHERE {where} ORDER BY series_instance_uid, calling_aet",
                params,
            ).fetchall()
            if not keys:
                return []
            previous = self._states(conn, keys)
            conn.execute(f"DELETE FROM series_activity WHERE {where}", params)
            return self._transitions(conn, keys, dict(previous), now)

    def finalize_idle(self, idle_seconds: float, now: float) -> list[Transition]:
        cutoff = now - idle_seconds
        with self._write() as conn:
            keys: list[SeriesKey] = conn.execute(
                """SELECT series_instance_uid, calling_aet FROM series
                WHERE last_received_at < ? AND (series_instance_uid, calling_aet) IN (
                    SELECT series_instance_uid, calling_aet FROM series
                        WHERE state = 'receiving' AND last_received_at < ?
                    UNION SELECT series_instance_uid, calling_aet FROM series_activity)
                ORDER BY series_instance_uid, calling_aet""",
                (cutoff, cutoff),
            ).fetchall()
            if not keys:
                return []
            previous = self._states(conn, keys)
            conn.execute(f"DELETE FROM series_activity WHERE {_IN_KEYS}", (_keys(keys),))
            return self._transitions(conn, keys, dict(previous), now)

    # --- reading ------------------------------------------------------------------------

    def list_series(
        self,
        *,
        state: str | None = None,
        calling_aet: str | None = None,
        study_instance_uid: str | None = None,
        expected_status: str | None = None,
    ) -> list[SeriesRow]:
        conditions: list[str] = []
        params: list[str] = []
        for column, value in (
            ("s.state", state),
            ("s.calling_aet", calling_aet),
            ("s.study_instance_uid", study_instance_uid),
            ("s.expected_status", expected_status),
        ):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        query = (
            f"{_SELECT_SERIES}{where}"
            " ORDER BY s.first_received_at, s.series_instance_uid, s.calling_aet"
        )
        with self._lock:
            rows = self._conn.execute(query, params).fetchall()
        return [series_row(row) for row in rows]

    def instance_paths(self) -> Iterator[tuple[str, str]]:
        # Its own read-only connection: the caller may register while it iterates.
        conn = self._connect(read_only=True)
        try:
            cursor = conn.execute("SELECT sop_instance_uid, path FROM instances")
            while chunk := cursor.fetchmany(10000):
                yield from ((uid, path) for uid, path in chunk)
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
