"""The PostgreSQL registry: psycopg 3 with a ``psycopg_pool.ConnectionPool``; a batch is
COPied into a per-connection temporary table, then upserted from it set-wise.

Locking: every write locks the series rows it changes, always in Series Instance UID order,
before touching their instances or activity (``register`` takes them with its series upsert,
whose rows are sorted; the others with ``SELECT ... ORDER BY ... FOR UPDATE``). Patients and
studies are inserted in key order with ``ON CONFLICT DO NOTHING`` (no lock on existing rows,
so series of one study received by two processes do not wait for each other), and instances
in SOP Instance UID order. A deadlock, should one still happen, is retried.
"""

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, LiteralString, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from oxidip._boundary import InstanceStored
from oxidip.registry._model import (
    INSTANCE_ROW_COLUMNS,
    ExpectedStatus,
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

__all__ = ["MIGRATIONS", "PostgresRegistry"]

log = logging.getLogger("oxidip.registry")

T = TypeVar("T")

#: pg_advisory_xact_lock key serialising migrations ("oxidip" + 1).
_MIGRATION_LOCK = 0x6F7869646970_01

#: Attempts of a transaction that hit a deadlock or a serialization failure.
_ATTEMPTS = 5

#: Seconds a call waits for a pooled connection, and the pool keeps trying to replace a lost
#: one before giving up until the next call asks (psycopg_pool's defaults, 30 s and 5 min,
#: would hold a call 30 s while the server is away and let the pool's reconnection backoff
#: grow to minutes, so that registration would resume minutes after the server is back).
#: Retrying during an outage is the caller's business (``oxidip.registration``).
POOL_TIMEOUT = 5.0
#: Seconds to connect, unless the URL says otherwise (libpq waits for ever by default: a
#: server whose packets are dropped would hold a connection attempt for minutes).
CONNECT_TIMEOUT = 5

#: (version, statements): applied in order, each version once, in one transaction.
MIGRATIONS: tuple[tuple[int, tuple[LiteralString, ...]], ...] = (
    (1, schema_v1(timestamp="timestamptz")),
    (2, schema_v2(timestamp="timestamptz")),
)

LATEST = MIGRATIONS[-1][0]

_INCOMING_TABLE = """CREATE TEMPORARY TABLE IF NOT EXISTS oxidip_incoming (
    sop_instance_uid text NOT NULL,
    series_instance_uid text NOT NULL,
    study_instance_uid text NOT NULL,
    patient_id text,
    patient_name text,
    patient_birth_date text,
    patient_sex text,
    study_date text,
    study_time text,
    accession_number text,
    study_description text,
    modality text,
    series_description text,
    series_number text,
    calling_aet text NOT NULL,
    sop_class_uid text,
    instance_number text,
    transfer_syntax text NOT NULL,
    path text NOT NULL,
    size bigint NOT NULL,
    node text NOT NULL,
    association_id bigint NOT NULL,
    received_at float8 NOT NULL,
    stored_at float8 NOT NULL
) ON COMMIT DELETE ROWS"""

_COPY = f"COPY oxidip_incoming ({', '.join(INSTANCE_ROW_COLUMNS)}) FROM STDIN"

_PATIENTS = """INSERT INTO patients (patient_id, patient_name, patient_birth_date, patient_sex)
    SELECT DISTINCT ON (patient_id) patient_id, patient_name, patient_birth_date, patient_sex
    FROM oxidip_incoming WHERE patient_id IS NOT NULL ORDER BY patient_id, stored_at
    ON CONFLICT (patient_id) DO NOTHING"""

_STUDIES = """INSERT INTO studies (study_instance_uid, patient_id, study_date, study_time,
        accession_number, study_description)
    SELECT DISTINCT ON (study_instance_uid) study_instance_uid, patient_id, study_date,
        study_time, accession_number, study_description
    FROM oxidip_incoming ORDER BY study_instance_uid, stored_at
    ON CONFLICT (study_instance_uid) DO NOTHING"""

# Creates the new series and locks the existing ones, in UID order; RETURNING says which were
# created (xmax = 0: no updater, so inserted) and the state before this call.
_SERIES = """INSERT INTO series (series_instance_uid, study_instance_uid, calling_aet, modality,
        series_description, series_number, expected, expected_status, expected_detail,
        received, state, first_received_at, last_received_at, finalized_at)
    SELECT DISTINCT ON (series_instance_uid, calling_aet) series_instance_uid,
        study_instance_uid, calling_aet, modality, series_description, series_number, NULL,
        'pending', '', 0, 'receiving', to_timestamp(min(received_at) OVER w),
        to_timestamp(max(stored_at) OVER w), NULL
    FROM oxidip_incoming WINDOW w AS (PARTITION BY series_instance_uid, calling_aet)
    ORDER BY series_instance_uid, calling_aet, stored_at
    ON CONFLICT (series_instance_uid, calling_aet) DO UPDATE SET
        modality = coalesce(series.modality, excluded.modality),
        series_description = coalesce(series.series_description, excluded.series_description),
        series_number = coalesce(series.series_number, excluded.series_number),
        first_received_at = least(series.first_received_at, excluded.first_received_at),
        last_received_at = greatest(series.last_received_at, excluded.last_received_at)
    RETURNING series_instance_uid, calling_aet, state, xmax = 0"""

# Instances, then ``received`` grown by those new to the registry (xmax = 0: inserted, not
# updated), counted rather than recounted per batch (a recount reads the whole series:
# quadratic in its size over a series' batches). The series rows are locked already.
_INSTANCES = """WITH ins AS (INSERT INTO instances (sop_instance_uid, calling_aet,
        series_instance_uid, sop_class_uid, instance_number, transfer_syntax, path, size, node,
        association_id, received_at, stored_at)
    SELECT sop_instance_uid, calling_aet, series_instance_uid, sop_class_uid, instance_number,
        transfer_syntax, path, size, node, association_id, to_timestamp(received_at),
        to_timestamp(stored_at)
    FROM oxidip_incoming ORDER BY sop_instance_uid, calling_aet
    ON CONFLICT (sop_instance_uid, calling_aet) DO {on_duplicate}
    RETURNING series_instance_uid, calling_aet, xmax = 0 AS inserted
), added AS (
    SELECT series_instance_uid, calling_aet, count(*) AS n FROM ins WHERE inserted
    GROUP BY 1, 2
)
UPDATE series s SET received = s.received + added.n FROM added
    WHERE s.series_instance_uid = added.series_instance_uid
        AND s.calling_aet = added.calling_aet"""

_ON_DUPLICATE: dict[str, LiteralString] = {
    "overwrite": """UPDATE SET sop_class_uid = excluded.sop_class_uid,
        instance_number = excluded.instance_number, transfer_syntax = excluded.transfer_syntax,
        path = excluded.path, size = excluded.size, node = excluded.node,
        association_id = excluded.association_id, received_at = excluded.received_at,
        stored_at = excluded.stored_at""",
    "keep-first": "NOTHING",
}

_ACTIVITY = """INSERT INTO series_activity (series_instance_uid, calling_aet, node,
        association_id)
    SELECT DISTINCT series_instance_uid, calling_aet, node, association_id FROM oxidip_incoming
    ORDER BY 1, 2, 3, 4 ON CONFLICT DO NOTHING"""

#: The series whose keys are given as two arrays, ``uids`` and ``aets``.
_IN_KEYS = """(series_instance_uid, calling_aet) IN
    (SELECT * FROM unnest(%(uids)s::text[], %(aets)s::text[]))"""

_RULE = state_sql(expected="c.expected", received="c.received", active="c.active")

_SERIES_COLUMNS = """u.series_instance_uid, u.study_instance_uid, u.calling_aet, st.patient_id,
    u.modality, u.series_description, u.series_number, u.expected, u.expected_status,
    u.expected_detail, u.received, u.state, extract(epoch FROM u.first_received_at)::float8,
    extract(epoch FROM u.last_received_at)::float8, extract(epoch FROM u.finalized_at)::float8"""

_SELECT_SERIES = f"""SELECT {_SERIES_COLUMNS} FROM series u
    JOIN studies st ON st.study_instance_uid = u.study_instance_uid"""

# Applies the state rule to the given (locked) series, in one statement.
_RECOMPUTE = f"""WITH c AS (
        SELECT s.series_instance_uid, s.calling_aet, s.expected, s.received,
            EXISTS (SELECT 1 FROM series_activity a
                WHERE a.series_instance_uid = s.series_instance_uid
                    AND a.calling_aet = s.calling_aet) AS active
        FROM series s WHERE {_IN_KEYS}
    ), decided AS (
        SELECT c.series_instance_uid, c.calling_aet, c.received, {_RULE} AS state FROM c
    ), u AS (
        UPDATE series s SET received = d.received, state = d.state,
            finalized_at = CASE WHEN d.state = 'receiving' THEN NULL
                WHEN s.state <> d.state OR s.finalized_at IS NULL THEN to_timestamp(%(now)s)
                ELSE s.finalized_at END
        FROM decided d WHERE s.series_instance_uid = d.series_instance_uid
            AND s.calling_aet = d.calling_aet
        RETURNING s.*
    )
    SELECT {_SERIES_COLUMNS} FROM u JOIN studies st ON st.study_instance_uid = u.study_instance_uid
    ORDER BY u.series_instance_uid, u.calling_aet"""

Connection = psycopg.Connection[tuple[Any, ...]]


def _configure(conn: Connection) -> None:
    """Run by the pool on every new connection."""
    conn.execute(_INCOMING_TABLE)
    conn.commit()


def _series_rows(cursor: psycopg.Cursor[tuple[Any, ...]]) -> list[SeriesRow]:
    return [series_row(row) for row in cursor.fetchall()]


def _key_params(keys: Sequence[SeriesKey]) -> dict[str, list[str]]:
    """The parameters of ``_IN_KEYS``."""
    return {"uids": [uid for uid, _ in keys], "aets": [aet for _, aet in keys]}


class PostgresRegistry:
    """``Registry`` on PostgreSQL; any number of processes may share the database."""

    def __init__(self, conninfo: str, pool_size: int, duplicates: str) -> None:
        self._duplicates = duplicates
        self._instances_sql: LiteralString = _INSTANCES.format(
            on_duplicate=_ON_DUPLICATE[duplicates]
        )
        options: dict[str, Any] = {}
        if "connect_timeout" not in conninfo_to_dict(conninfo):
            options["connect_timeout"] = CONNECT_TIMEOUT
        # One plain connection first: its error says why (the pool's would only time out).
        psycopg.connect(conninfo, **options).close()
        self._pool: psycopg_pool.ConnectionPool[Connection] = psycopg_pool.ConnectionPool(
            conninfo,
            kwargs=options,
            min_size=pool_size,
            max_size=pool_size,
            open=False,
            configure=_configure,
            # One round trip per transaction (not per instance): a connection broken by a
            # server restart is replaced instead of failing a batch.
            check=psycopg_pool.ConnectionPool.check_connection,
            name="oxidip-registry",
            timeout=POOL_TIMEOUT,
            reconnect_timeout=POOL_TIMEOUT,
        )
        self._pool.open(wait=True, timeout=30)

    def _run(self, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` in one transaction on a pooled connection (committed when it returns,
        rolled back when it raises); retried on deadlock or serialization failure."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except (errors.DeadlockDetected, errors.SerializationFailure) as error:
                if attempt == _ATTEMPTS:
                    raise
                log.warning(
                    "registry transaction retried",
                    extra={"attempt": attempt, "error": str(error).strip()},
                )
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    # --- schema -------------------------------------------------------------------------

    def _version(self, conn: Connection) -> int:
        row = conn.execute("SELECT to_regclass('oxidip_schema_version') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM oxidip_schema_version").fetchone()
        return int(row[0]) if row else 0

    def migrate(self) -> None:
        # Up to date: nothing to lock or create (also works with a user without CREATE rights).
        if self._run(self._version) == LATEST:
            return

        def work(conn: Connection) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS oxidip_schema_version"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = self._version(conn)
            check_schema_version(current, LATEST, "the registry database")
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO oxidip_schema_version (version) VALUES (%s)", (version,)
                    )
                    log.info("registry schema migrated", extra={"version": version})

        self._run(work)

    # --- state --------------------------------------------------------------------------

    @staticmethod
    def _recompute(conn: Connection, keys: Sequence[SeriesKey], now: float) -> list[SeriesRow]:
        if not keys:
            return []
        return _series_rows(conn.execute(_RECOMPUTE, {**_key_params(keys), "now": now}))

    def register(self, instances: Sequence[InstanceStored], process_id: str) -> RegisterResult:
        rows = prepare(instances, process_id, self._duplicates)
        if not rows:
            return RegisterResult([], [], [])
        now = time.time()

        def work(conn: Connection) -> RegisterResult:
            with conn.cursor() as cursor:
                with cursor.copy(_COPY) as copy:
                    for row in rows:
                        copy.write_row(
                            (
                                row.sop_instance_uid,
                                row.series_instance_uid,
                                row.study_instance_uid,
                                row.patient_id,
                                row.patient_name,
                                row.patient_birth_date,
                                row.patient_sex,
                                row.study_date,
                                row.study_time,
                                row.accession_number,
                                row.study_description,
                                row.modality,
                                row.series_description,
                                row.series_number,
                                row.calling_aet,
                                row.sop_class_uid,
                                row.instance_number,
                                row.transfer_syntax,
                                row.path,
                                row.size,
                                row.process_id,
                                row.association_id,
                                row.received_at,
                                row.stored_at,
                            )
                        )
                cursor.execute(_PATIENTS)
                cursor.execute(_STUDIES)
                cursor.execute(_SERIES)
                previous: dict[SeriesKey, str | None] = {
                    (uid, aet): None if inserted else state
                    for uid, aet, state, inserted in cursor.fetchall()
                }
                cursor.execute(self._instances_sql)
                cursor.execute(_ACTIVITY)
            keys = sorted(previous)
            return result_of(self._recompute(conn, keys, now), previous, set(keys))

        return self._run(work)

    def set_expected(
        self,
        series_instance_uid: str,
        expected: int | None,
        status: ExpectedStatus,
        detail: str,
        calling_aet: str | None = None,
    ) -> list[Transition]:
        checked = check_expected(expected, status)

        def work(conn: Connection) -> list[Transition]:
            previous: dict[SeriesKey, str | None] = {
                (uid, aet): state
                for uid, aet, state in conn.execute(
                    """SELECT series_instance_uid, calling_aet, state FROM series
                    WHERE series_instance_uid = %(uid)s
                        AND calling_aet = coalesce(%(aet)s, calling_aet)
                    ORDER BY series_instance_uid, calling_aet FOR UPDATE""",
                    {"uid": series_instance_uid, "aet": calling_aet},
                )
            }
            if not previous:
                return []
            keys = list(previous)
            conn.execute(
                "UPDATE series SET expected = %(expected)s, expected_status = %(status)s,"
                f" expected_detail = %(detail)s WHERE {_IN_KEYS}",
                {
                    "expected": expected,
                    "status": checked.value,
                    "detail": detail,
                    **_key_params(keys),
                },
            )
            return transitions_of(self._recompute(conn, keys, time.time()), previous)

        return self._run(work)

    def association_ended(self, process_id: str, association_id: int) -> list[Transition]:
        return self._end_activity(
            "node = %(node)s AND association_id = %(association_id)s",
            {"node": process_id, "association_id": association_id},
        )

    def process_ended(self, process_id: str) -> list[Transition]:
        return self._end_activity("node = %(node)s", {"node": process_id})

    def _end_activity(self, where: LiteralString, params: dict[str, Any]) -> list[Transition]:
        """Removes the activity rows matching ``where`` and recomputes their series (locked
        first, in UID order)."""

        def work(conn: Connection) -> list[Transition]:
            previous: dict[SeriesKey, str | None] = {
                (uid, aet): state
                for uid, aet, state in conn.execute(
                    f"""SELECT series_instance_uid, calling_aet, state FROM series
                    WHERE (series_instance_uid, calling_aet) IN (
                        SELECT series_instance_uid, calling_aet
                        FROM series_activity WHERE {where})
                    ORDER BY series_instance_uid, calling_aet FOR UPDATE""",
                    params,
                )
            }
            if not previous:
                return []
            keys = list(previous)
            conn.execute(
                f"DELETE FROM series_activity WHERE {where} AND {_IN_KEYS}",
                {**params, **_key_params(keys)},
            )
            return transitions_of(self._recompute(conn, keys, time.time()), previous)

        return self._run(work)

    def finalize_idle(self, idle_seconds: float, now: float) -> list[Transition]:
        cutoff = now - idle_seconds

        def work(conn: Connection) -> list[Transition]:
            # SKIP LOCKED: a series locked right now is being registered, so it is not idle.
            previous: dict[SeriesKey, str | None] = {
                (uid, aet): state
                for uid, aet, state in conn.execute(
                    """SELECT series_instance_uid, calling_aet, state FROM series
                    WHERE last_received_at < to_timestamp(%(cutoff)s)
                        AND (series_instance_uid, calling_aet) IN (
                            SELECT series_instance_uid, calling_aet FROM series
                                WHERE state = 'receiving'
                                    AND last_received_at < to_timestamp(%(cutoff)s)
                            UNION SELECT series_instance_uid, calling_aet FROM series_activity)
                    ORDER BY series_instance_uid, calling_aet FOR UPDATE SKIP LOCKED""",
                    {"cutoff": cutoff},
                )
            }
            if not previous:
                return []
            keys = list(previous)
            conn.execute(f"DELETE FROM series_activity WHERE {_IN_KEYS}", _key_params(keys))
            return transitions_of(self._recompute(conn, keys, now), previous)

        return self._run(work)

    # --- reading ------------------------------------------------------------------------

    def list_series(
        self,
        *,
        state: str | None = None,
        calling_aet: str | None = None,
        study_instance_uid: str | None = None,
        expected_status: str | None = None,
    ) -> list[SeriesRow]:
        conditions: list[LiteralString] = []
        params: list[str] = []
        if state is not None:
            conditions.append("u.state = %s")
            params.append(state)
        if calling_aet is not None:
            conditions.append("u.calling_aet = %s")
            params.append(calling_aet)
        if study_instance_uid is not None:
            conditions.append("u.study_instance_uid = %s")
            params.append(study_instance_uid)
        if expected_status is not None:
            conditions.append("u.expected_status = %s")
            params.append(expected_status)
        where: LiteralString = " WHERE " + " AND ".join(conditions) if conditions else ""
        query = (
            f"{_SELECT_SERIES}{where}"
            " ORDER BY u.first_received_at, u.series_instance_uid, u.calling_aet"
        )
        return self._run(lambda conn: _series_rows(conn.execute(query, params)))

    def instance_paths(self) -> Iterator[tuple[str, str]]:
        with (
            self._pool.connection() as conn,
            conn.cursor(name="oxidip_instance_paths") as cursor,
        ):
            cursor.itersize = 10000
            cursor.execute("SELECT sop_instance_uid, path FROM instances")
            yield from ((uid, path) for uid, path in cursor)

    def close(self) -> None:
        self._pool.close()
