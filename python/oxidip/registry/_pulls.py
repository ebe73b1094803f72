"""Pull jobs (issue 12): what ``oxidip pull`` asked of a PACS and where each series stands,
in the registry's own database, for both backends (the SQL written once, as the forwarding
queue's, with a ``Dialect``).

Tables (schema version 4)
    - ``pulls``: one per pull: its queries (canonical JSON, so that running the same query
      file again finds it), the PACS's AE title, the method (move or get), state (running,
      or finished once every series reached an end state), times.
    - ``pull_series``: one per (pull, Series Instance UID): study UID and descriptions and
      the expected count from the C-FIND (None when the PACS gave none), state, attempts,
      when the next attempt is due, the last error in words, the last sub-operation counts
      and the registered count when it ended, a lease (owner process and until when).

Series states (``PullSeriesState``)
    pending -> running (claimed: attempts + 1, a lease) -> complete / incomplete / unknown
    (retrieved; compared with what the registry registered from the PACS's AE title), failed
    (nothing usable after the attempts, or a permanent refusal), or pending again with a
    ``next_attempt_at`` (a retry after backoff). A running series whose lease expired (its
    process died) is claimable again. Running the pull again puts every series not complete
    back to pending (attempts reset); complete ones are skipped.

Two pulls never retrieve one series at once: a claim skips a series that any pull holds
under a lease not expired (same Series Instance UID and PACS). Claims take turns: SQLite's
write lock, PostgreSQL's transaction-level advisory lock ``_CLAIM_LOCK``.
"""

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from oxidip.registry._queue import Dialect, Tx

__all__ = [
    "END_STATES",
    "FoundSeries",
    "PullMethods",
    "PullRow",
    "PullSeriesRow",
    "PullSeriesState",
    "PullState",
    "Received",
    "schema_v4",
]

T = TypeVar("T")

#: pg_advisory_xact_lock key of pull claims ("oxpl").
_CLAIM_LOCK = 0x6F78_706C


class PullState(enum.StrEnum):
    RUNNING = "running"
    #: Every series reached an end state (complete or not).
    FINISHED = "finished"


class PullSeriesState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    #: Registered as many instances as the C-FIND said (or more).
    COMPLETE = "complete"
    #: Fewer than the C-FIND said.
    INCOMPLETE = "incomplete"
    #: Retrieved, but the PACS gave no NumberOfSeriesRelatedInstances to compare with.
    UNKNOWN = "unknown"
    #: The retrieval failed (out of attempts, or refused for good).
    FAILED = "failed"


#: States a pull's series stays in (a rerun starts the last three again).
END_STATES = frozenset(
    {
        PullSeriesState.COMPLETE,
        PullSeriesState.INCOMPLETE,
        PullSeriesState.UNKNOWN,
        PullSeriesState.FAILED,
    }
)


class FoundSeries(msgspec.Struct, frozen=True):
    """A series the C-FIND walk found (also a ``--find-only`` row)."""

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    accession_number: str = ""
    study_description: str = ""
    series_description: str = ""
    modality: str = ""
    series_number: str = ""
    #: NumberOfSeriesRelatedInstances; None when the PACS left it out or it is no count.
    expected: int | None = None


class PullRow(msgspec.Struct, frozen=True):
    id: int
    queries: str
    pacs: str
    method: str
    state: PullState
    created_at: float
    updated_at: float


class PullSeriesRow(msgspec.Struct, frozen=True):
    pull_id: int
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    modality: str
    series_description: str
    expected: int | None
    state: PullSeriesState
    attempts: int
    next_attempt_at: float | None
    last_error: str
    completed: int | None
    failed: int | None
    warning: int | None
    received: int | None
    lease_owner: str | None
    lease_until: float | None


class Received(msgspec.Struct, frozen=True):
    """What the registry holds of a series from one sender."""

    #: Distinct instances registered.
    count: int
    #: The registry's series state ("" when it has no such series).
    state: str
    #: The path of one of its files (the series' directory with the default template).
    path: str | None


def schema_v4(dialect: Dialect) -> tuple[str, ...]:
    """Version 4: pull jobs (the module docstring)."""
    ts, identity = dialect.timestamp, dialect.identity
    pull_states = ", ".join(f"'{state.value}'" for state in PullState)
    series_states = ", ".join(f"'{state.value}'" for state in PullSeriesState)
    return (
        f"""CREATE TABLE pulls (
            id {identity},
            queries text NOT NULL,
            pacs text NOT NULL,
            method text NOT NULL CHECK (method IN ('move', 'get')),
            state text NOT NULL CHECK (state IN ({pull_states})),
            created_at {ts} NOT NULL,
            updated_at {ts} NOT NULL
        )""",
        "CREATE INDEX pulls_queries ON pulls (pacs, queries)",
        f"""CREATE TABLE pull_series (
            pull_id bigint NOT NULL REFERENCES pulls (id),
            series_instance_uid text NOT NULL,
            study_instance_uid text NOT NULL,
            pacs text NOT NULL,
            patient_id text NOT NULL,
            modality text NOT NULL,
            series_description text NOT NULL,
            expected integer,
            state text NOT NULL CHECK (state IN ({series_states})),
            attempts integer NOT NULL,
            next_attempt_at {ts},
            last_error text NOT NULL,
            completed integer,
            failed integer,
            warning integer,
            received integer,
            lease_owner text,
            lease_until {ts},
            updated_at {ts} NOT NULL,
            PRIMARY KEY (pull_id, series_instance_uid)
        )""",
        # What a claim checks: another pull holding the same series.
        "CREATE INDEX pull_series_uid ON pull_series (series_instance_uid, pacs)",
    )


_PULL_COLUMNS = "id, queries, pacs, method, state, {created}, {updated}"
_SERIES_COLUMNS = """pull_id, series_instance_uid, study_instance_uid, patient_id, modality,
    series_description, expected, state, attempts, {next}, last_error, completed,
    failed, warning, received, lease_owner, {until}"""


class PullMethods(ABC):
    """The pull side of a registry; a backend provides ``_dialect``, ``_transact`` and
    ``_read`` (as for ``QueueMethods``)."""

    _dialect: Dialect

    @abstractmethod
    def _transact(self, work: Callable[[Tx], T]) -> T: ...

    @abstractmethod
    def _read(self, work: Callable[[Tx], T]) -> T: ...

    # --- SQL ------------------------------------------------------------------------------

    def _pull_select(self) -> str:
        d = self._dialect
        columns = _PULL_COLUMNS.format(created=d.epoch("created_at"), updated=d.epoch("updated_at"))
        return f"SELECT {columns} FROM pulls"

    def _series_select(self) -> str:
        d = self._dialect
        columns = _SERIES_COLUMNS.format(
            next=d.epoch("next_attempt_at"), until=d.epoch("lease_until")
        )
        return f"SELECT {columns} FROM pull_series"

    # --- pulls ----------------------------------------------------------------------------

    def create_pull(self, queries: str, pacs: str, method: str, now: float) -> PullRow:
        """A new pull (running, no series yet)."""
        d = self._dialect
        sql = d.sql(
            f"""INSERT INTO pulls (queries, pacs, method, state, created_at, updated_at)
            VALUES (:queries, :pacs, :method, 'running', {d.ts(":now")}, {d.ts(":now")})
            RETURNING id"""
        )
        params = {"queries": queries, "pacs": pacs, "method": method, "now": now}

        def work(tx: Tx) -> PullRow:
            (pull_id,) = tx.execute(sql, params).fetchone()
            return self._pull(tx, int(pull_id))

        return self._transact(work)

    def find_pull(self, queries: str, pacs: str) -> PullRow | None:
        """The latest pull of these queries (canonical JSON) from ``pacs``."""
        sql = self._dialect.sql(
            f"{self._pull_select()} WHERE pacs = :pacs AND queries = :queries"
            " ORDER BY id DESC LIMIT 1"
        )
        row = self._read(lambda tx: tx.execute(sql, {"pacs": pacs, "queries": queries}).fetchone())
        return None if row is None else _pull_row(row)

    def get_pull(self, pull_id: int) -> PullRow | None:
        return self._read(lambda tx: self._pull_or_none(tx, pull_id))

    def _pull_or_none(self, tx: Tx, pull_id: int) -> PullRow | None:
        sql = self._dialect.sql(f"{self._pull_select()} WHERE id = :id")
        row = tx.execute(sql, {"id": pull_id}).fetchone()
        return None if row is None else _pull_row(row)

    def _pull(self, tx: Tx, pull_id: int) -> PullRow:
        row = self._pull_or_none(tx, pull_id)
        if row is None:
            raise KeyError(f"no pull {pull_id}")
        return row

    def restart_pull(
        self, pull_id: int, method: str, found: Sequence[FoundSeries], now: float
    ) -> list[PullSeriesRow]:
        """Starts a pull (again) with what the C-FIND found: new series pending; series
        found before take the new expected count and, unless complete or running under a
        live lease, are pending again from their first attempt. Series no longer found are
        left as they are. The pull is running, or finished when nothing is left to retrieve.
        Returns its series."""
        d = self._dialect
        upsert = d.sql(
            f"""INSERT INTO pull_series (pull_id, series_instance_uid, study_instance_uid,
                pacs, patient_id, modality, series_description, expected, state,
                attempts, next_attempt_at, last_error, updated_at)
            VALUES (:pull, :uid, :study, :pacs, :patient, :modality, :description,
                :expected, 'pending', 0, NULL, '', {d.ts(":now")})
            ON CONFLICT (pull_id, series_instance_uid) DO UPDATE SET
                expected = excluded.expected,
                modality = excluded.modality, series_description = excluded.series_description,
                state = CASE WHEN pull_series.state IN ('complete', 'running')
                    THEN pull_series.state ELSE 'pending' END,
                attempts = CASE WHEN pull_series.state IN ('complete', 'running')
                    THEN pull_series.attempts ELSE 0 END,
                next_attempt_at = NULL,
                updated_at = excluded.updated_at"""
        )
        touch = d.sql(
            f"""UPDATE pulls SET method = :method, updated_at = {d.ts(":now")},
                state = CASE WHEN EXISTS (SELECT 1 FROM pull_series
                    WHERE pull_id = :pull AND state IN ('pending', 'running'))
                    THEN 'running' ELSE 'finished' END
            WHERE id = :pull"""
        )

        def work(tx: Tx) -> list[PullSeriesRow]:
            pacs = self._pull(tx, pull_id).pacs
            tx.executemany(
                upsert,
                [
                    {
                        "pull": pull_id,
                        "uid": s.series_instance_uid,
                        "study": s.study_instance_uid,
                        "pacs": pacs,
                        "patient": s.patient_id,
                        "modality": s.modality,
                        "description": s.series_description,
                        "expected": s.expected,
                        "now": now,
                    }
                    for s in found
                ],
            )
            tx.execute(touch, {"pull": pull_id, "method": method, "now": now})
            return self._series_of(tx, pull_id)

        return self._transact(work)

    def pull_series(self, pull_id: int) -> list[PullSeriesRow]:
        """The series of a pull, by Study then Series Instance UID."""
        return self._read(lambda tx: self._series_of(tx, pull_id))

    def _series_of(self, tx: Tx, pull_id: int) -> list[PullSeriesRow]:
        sql = self._dialect.sql(
            f"{self._series_select()} WHERE pull_id = :pull"
            " ORDER BY study_instance_uid, series_instance_uid"
        )
        return [_series_row(row) for row in tx.execute(sql, {"pull": pull_id}).fetchall()]

    # --- claims ---------------------------------------------------------------------------

    def claim_pull_series(
        self, pull_id: int, owner: str, lease: float, now: float
    ) -> PullSeriesRow | None:
        """Claims the next series of a pull to retrieve: pending and due, or running under
        an expired lease; never one that a pull (this one or another) holds under a live
        lease. It becomes running, leased to ``owner`` until ``now + lease``, its attempts
        one more. None when no series can be claimed now."""
        d = self._dialect
        pick = d.sql(
            f"""SELECT s.series_instance_uid FROM pull_series s
            WHERE s.pull_id = :pull
                AND ((s.state = 'pending'
                        AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= {d.ts(":now")}))
                    OR (s.state = 'running' AND s.lease_until < {d.ts(":now")}))
                AND NOT EXISTS (SELECT 1 FROM pull_series o
                    WHERE o.series_instance_uid = s.series_instance_uid AND o.pacs = s.pacs
                        AND o.state = 'running' AND o.lease_until >= {d.ts(":now")})
            ORDER BY s.attempts, s.study_instance_uid, s.series_instance_uid LIMIT 1"""
        )
        claim = d.sql(
            f"""UPDATE pull_series SET state = 'running', attempts = attempts + 1,
                next_attempt_at = NULL, lease_owner = :owner, lease_until = {d.ts(":until")},
                updated_at = {d.ts(":now")}
            WHERE pull_id = :pull AND series_instance_uid = :uid"""
        )
        one = d.sql(f"{self._series_select()} WHERE pull_id = :pull AND series_instance_uid = :uid")

        def work(tx: Tx) -> PullSeriesRow | None:
            if d.postgres:
                tx.execute(d.sql("SELECT pg_advisory_xact_lock(:key)"), {"key": _CLAIM_LOCK})
            found = tx.execute(pick, {"pull": pull_id, "now": now}).fetchone()
            if found is None:
                return None
            params = {
                "pull": pull_id,
                "uid": found[0],
                "owner": owner,
                "until": now + lease,
                "now": now,
            }
            tx.execute(claim, params)
            return _series_row(tx.execute(one, params).fetchone())

        return self._transact(work)

    def renew_pull_leases(
        self, pull_id: int, owner: str, uids: Sequence[str], lease: float, now: float
    ) -> set[str]:
        """Extends the leases of ``owner``'s running series ``uids`` to ``now + lease``;
        returns those still held (not those another process claimed after the lease
        expired)."""
        if not uids:
            return set()
        d = self._dialect
        sql = d.sql(
            f"""UPDATE pull_series SET lease_until = {d.ts(":until")}
            WHERE pull_id = :pull AND series_instance_uid {d.in_list("uids")}
                AND state = 'running' AND lease_owner = :owner
                AND NOT EXISTS (SELECT 1 FROM pull_series o
                    WHERE o.series_instance_uid = pull_series.series_instance_uid
                        AND o.pacs = pull_series.pacs AND o.state = 'running'
                        AND o.lease_owner <> :owner AND o.lease_until >= {d.ts(":now")})
            RETURNING series_instance_uid"""
        )
        params = {
            "pull": pull_id,
            "uids": d.values(uids),
            "owner": owner,
            "until": now + lease,
            "now": now,
        }
        return self._transact(lambda tx: {row[0] for row in tx.execute(sql, params).fetchall()})

    def end_pull_series(
        self,
        pull_id: int,
        uid: str,
        owner: str,
        state: PullSeriesState,
        *,
        error: str,
        counts: tuple[int | None, int | None, int | None],
        received: int | None,
        next_attempt_at: float | None,
        now: float,
    ) -> bool:
        """Ends ``owner``'s attempt at a series: its ``state`` (pending with
        ``next_attempt_at`` for a retry), the last error in words, the sub-operation counts
        (completed, failed, warning) and the registered count. The pull is finished when no
        series is left pending or running. False when ``owner`` no longer held it."""
        d = self._dialect
        end = d.sql(
            f"""UPDATE pull_series SET state = :state, last_error = :error,
                next_attempt_at = {d.ts(":next")}, completed = :completed, failed = :failed,
                warning = :warning, received = :received, lease_owner = NULL,
                lease_until = NULL, updated_at = {d.ts(":now")}
            WHERE pull_id = :pull AND series_instance_uid = :uid AND state = 'running'
                AND lease_owner = :owner"""
        )
        finish = d.sql(
            f"""UPDATE pulls SET state = 'finished', updated_at = {d.ts(":now")}
            WHERE id = :pull AND NOT EXISTS (SELECT 1 FROM pull_series
                WHERE pull_id = :pull AND state IN ('pending', 'running'))"""
        )
        completed, failed, warning = counts
        params: dict[str, Any] = {
            "pull": pull_id,
            "uid": uid,
            "owner": owner,
            "state": PullSeriesState(state).value,
            "error": error,
            "next": next_attempt_at,
            "completed": completed,
            "failed": failed,
            "warning": warning,
            "received": received,
            "now": now,
        }

        def work(tx: Tx) -> bool:
            ended = tx.execute(end, params).rowcount > 0
            tx.execute(finish, {"pull": pull_id, "now": now})
            return ended

        return self._transact(work)

    # --- what the registry holds ----------------------------------------------------------

    def received(self, uids: Sequence[str], calling_aet: str) -> dict[str, Received]:
        """The registered count, state and one file of each series ``uids`` as sent by
        ``calling_aet``; series the registry does not have are left out."""
        if not uids:
            return {}
        d = self._dialect
        sql = d.sql(
            f"""SELECT s.series_instance_uid, s.received, s.state,
                (SELECT min(i.path) FROM instances i
                    WHERE i.series_instance_uid = s.series_instance_uid
                        AND i.calling_aet = s.calling_aet)
            FROM series s
            WHERE s.series_instance_uid {d.in_list("uids")} AND s.calling_aet = :aet"""
        )
        params = {"uids": d.values(uids), "aet": calling_aet}
        rows = self._read(lambda tx: tx.execute(sql, params).fetchall())
        return {uid: Received(int(count), state, path) for uid, count, state, path in rows}


def _pull_row(values: Sequence[Any]) -> PullRow:
    pull_id, queries, pacs, method, state, created, updated = values
    return PullRow(int(pull_id), queries, pacs, method, PullState(state), created, updated)


def _series_row(values: Sequence[Any]) -> PullSeriesRow:
    fields = list(values)
    fields[7] = PullSeriesState(fields[7])
    return PullSeriesRow(*fields)
