"""The forwarding queue (issue 11): jobs and their items in the registry's own database, for
both backends. The SQL is written once, with named parameters (``:name``) and the few places
where SQLite and PostgreSQL differ (how an instant is stored, how a list is passed, row
locks) left to a ``Dialect``; each backend only provides its transactions (``Tx``).

Tables (schema version 3)
    - ``forward_jobs``: one per (series, rule, destination) and trigger event: state,
      attempts, next attempt, last error, lease (owner process and until when).
    - ``forward_items``: one per SOP instance of a job, UNIQUE (sop_instance_uid, rule,
      destination): an instance is queued at most once per rule and destination, whatever
      re-sends, restarts, second senders (AEs) or second processes do.
    - ``forward_held``: destinations whose circuit is open (name, reason, since).
    - ``series.called_aet``: the called AE title of the association that first delivered
      the series (rules may test ``CalledAET``).

Job states (``JobState``)
    pending -> running (claimed: attempts + 1, a lease) -> done (no item pending; items
    that failed for good are counted and named in last_error), or failed (transient: waits
    ``RetryPolicy.delay``) -> running ..., or dead (permanent, or out of attempts), or back
    to pending (the rest of a job split over claims, a shutdown). A running job whose lease
    expired (its process died) is claimable again. held: its destination's circuit is
    open (``hold_destination``), pending again on release. cancelled: by hand. Retried by hand
    (``retry_jobs``): dead, failed, cancelled, and done jobs with failed items go back to
    pending with their undelivered items, attempts reset.
"""

import enum
import logging
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import msgspec

from oxidip._boundary import DeliveryResult, ForwardItem, ItemOutcome, JobEndKind
from oxidip.registry._model import SeriesKey, SeriesState, Transition, series_key
from oxidip.routing import Router, SeriesFacts, Target, Trigger

__all__ = [
    "MAX_PAIRS",
    "ClaimedJob",
    "Dialect",
    "ForwardSummary",
    "ItemState",
    "JobRow",
    "JobState",
    "QueueMethods",
    "RetryPolicy",
    "Rows",
    "Tx",
    "schema_v3",
]

log = logging.getLogger("oxidip.registry")

T = TypeVar("T")

#: At most this many distinct (SOP class, transfer syntax) pairs in one claimed job: one
#: presentation context each, and an association has at most 128 (odd ids 1-255, PS3.8 9.3.2.2).
MAX_PAIRS = 128


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    #: Waiting for its next attempt (``next_attempt_at``).
    FAILED = "failed"
    DEAD = "dead"
    #: Its destination's circuit is open.
    HELD = "held"
    CANCELLED = "cancelled"


class ItemState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    WARNING = "warning"
    FAILED = "failed"


#: States a claim may take a job from (running: when its lease expired).
_CLAIMABLE = "('pending', 'failed', 'running')"


class RetryPolicy(msgspec.Struct, frozen=True):
    """When a job that failed for a transient reason is tried again."""

    #: Seconds before the second attempt; doubled for each further one.
    base: float
    #: Longest wait between attempts, in seconds.
    maximum: float
    #: Attempts in all; the job is dead after that many transient failures.
    attempts: int

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after attempt number ``attempt`` (1 for the first) failed:
        ``base * 2**(attempt - 1)`` capped at ``maximum``, with "equal jitter" (half of it
        fixed, half random) so that jobs failing together do not retry together, yet never
        sooner than half the backoff."""
        ceiling = min(self.maximum, self.base * 2.0 ** min(max(attempt - 1, 0), 62))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


class ClaimedJob(msgspec.Struct):
    """A job claimed for sending (``claim_jobs``)."""

    job_id: int
    rule: str
    destination: str
    series_instance_uid: str
    calling_aet: str
    #: Including this one.
    attempts: int
    #: Only items not yet delivered or failed, in the order they arrived; absolute paths.
    items: list[ForwardItem]


class JobRow(msgspec.Struct):
    """A job as stored, with its item counts; also the ``oxidip queue --json`` line."""

    id: int
    series_instance_uid: str
    study_instance_uid: str
    calling_aet: str
    rule: str
    destination: str
    #: What created it: a ``Trigger`` value.
    trigger: str
    priority: int
    state: JobState
    #: Items the destination took, with a warning or not.
    delivered: int
    #: Items that failed for good (the destination refused them).
    failed: int
    #: Delivered items whose status was a warning (counted in ``delivered`` too).
    warnings: int
    total: int
    attempts: int
    next_attempt_at: float | None
    last_error: str
    created_at: float
    updated_at: float
    lease_owner: str | None
    lease_until: float | None


class ForwardSummary(msgspec.Struct):
    """One job of a series, as ``oxidip series --json`` lists it under ``forwarded``."""

    id: int
    destination: str
    rule: str
    state: JobState
    delivered: int
    total: int


# --- the two dialects ------------------------------------------------------------------------


class Rows(Protocol):
    """What both backends' cursors give."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """One transaction of a backend; statements come from ``Dialect.sql``."""

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Rows: ...

    def executemany(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None: ...


#: A named parameter, not a PostgreSQL cast (``::``).
_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")


class Dialect(msgspec.Struct, frozen=True):
    """What differs between the backends in the queue's SQL."""

    #: The column type of instants.
    timestamp: str
    #: An integer primary key the database numbers.
    identity: str
    #: After a claim's SELECT: row locks skipping rows another transaction holds.
    skip_locked: str
    #: After a SELECT of rows about to be changed.
    for_update: str
    postgres: bool

    def sql(self, text: str) -> str:
        """``text`` with its ``:name`` parameters in the driver's style."""
        return _PARAMETER.sub(r"%(\1)s", text) if self.postgres else text

    def ts(self, expression: str) -> str:
        """An instant stored from unix seconds."""
        return f"to_timestamp({expression})" if self.postgres else expression

    def epoch(self, expression: str) -> str:
        """Unix seconds of a stored instant."""
        return f"extract(epoch FROM {expression})::float8" if self.postgres else expression

    def in_list(self, parameter: str) -> str:
        """``IN`` a list passed as one parameter (``values``)."""
        if self.postgres:
            return f"= ANY(:{parameter})"
        return f"IN (SELECT value FROM json_each(:{parameter}))"

    def each(self, parameter: str) -> str:
        """A list passed as one parameter (``values``) as a table ``b`` of one column
        ``value``, to join from (the planner then starts from the list)."""
        if self.postgres:
            return f"unnest(:{parameter}::text[]) AS b(value)"
        return f"json_each(:{parameter}) AS b"

    def values(self, items: Iterable[Any]) -> Any:
        """A list as ``in_list`` takes it."""
        listed = list(items)
        return listed if self.postgres else msgspec.json.encode(listed).decode()


def schema_v3(dialect: Dialect) -> tuple[str, ...]:
    """Version 3: the forwarding queue (see the module docstring) and the called AE title of
    each series."""
    ts, identity = dialect.timestamp, dialect.identity
    jobs_states = ", ".join(f"'{state.value}'" for state in JobState)
    item_states = ", ".join(f"'{state.value}'" for state in ItemState)
    triggers = ", ".join(f"'{trigger.value}'" for trigger in Trigger)
    return (
        "ALTER TABLE series ADD COLUMN called_aet text",
        f"""CREATE TABLE forward_jobs (
            id {identity},
            series_instance_uid text NOT NULL,
            calling_aet text NOT NULL,
            study_instance_uid text NOT NULL,
            rule text NOT NULL,
            destination text NOT NULL,
            triggered_by text NOT NULL CHECK (triggered_by IN ({triggers})),
            priority integer NOT NULL,
            state text NOT NULL CHECK (state IN ({jobs_states})),
            attempts integer NOT NULL,
            next_attempt_at {ts},
            last_error text NOT NULL,
            lease_owner text,
            lease_until {ts},
            created_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            FOREIGN KEY (series_instance_uid, calling_aet)
                REFERENCES series (series_instance_uid, calling_aet)
        )""",
        # What a claim reads: the claimable jobs of one destination, by priority and age.
        f"""CREATE INDEX forward_jobs_claim ON forward_jobs (destination, priority DESC, id)
            WHERE state IN {_CLAIMABLE}""",
        "CREATE INDEX forward_jobs_series ON forward_jobs (series_instance_uid, calling_aet)",
        "CREATE INDEX forward_jobs_state ON forward_jobs (state, destination)",
        # No foreign keys: items are only ever inserted from instances rows by a join, into
        # a job created or locked in the same transaction (instances and jobs holding items
        # are never deleted), and the checks (a trigger per row in PostgreSQL) cost a fifth
        # of queuing an instance. Indexed by job alone: recording an outcome changes an
        # item's state, which then touches no index (PostgreSQL can update it in place).
        f"""CREATE TABLE forward_items (
            id {identity},
            job_id bigint NOT NULL,
            sop_instance_uid text NOT NULL,
            calling_aet text NOT NULL,
            rule text NOT NULL,
            destination text NOT NULL,
            state text NOT NULL CHECK (state IN ({item_states})),
            status integer,
            comment text NOT NULL,
            updated_at {ts} NOT NULL,
            CONSTRAINT forward_items_once UNIQUE (sop_instance_uid, rule, destination)
        )""",
        "CREATE INDEX forward_items_job ON forward_items (job_id)",
        f"""CREATE TABLE forward_held (
            name text PRIMARY KEY,
            reason text NOT NULL,
            since {ts} NOT NULL
        )""",
    )


# --- the statements ------------------------------------------------------------------------


class _Statements(msgspec.Struct, frozen=True):
    facts: str
    held_names: str
    held: str
    pending_instance_job: str
    insert_job: str
    touch_job: str
    delete_job: str
    insert_items: str
    insert_batch_items: str
    claimable: str
    claim: str
    claim_items: str
    renew: str
    record: str
    touch_owned: str
    job_for_end: str
    item_counts: str
    first_failure: str
    end: str
    hold: str
    hold_jobs: str
    release: str
    release_jobs: str
    job_rows: str
    retry: str
    retry_items: str
    cancel: str
    forwarded: str


def _statements(d: Dialect) -> _Statements:
    now = d.ts(":now")

    def count(states: str) -> str:
        return (
            f"(SELECT count(*) FROM forward_items f WHERE f.job_id = j.id AND f.state IN {states})"
        )

    job_columns = f"""j.id, j.series_instance_uid, j.study_instance_uid, j.calling_aet, j.rule,
        j.destination, j.triggered_by, j.priority, j.state,
        {count("('delivered', 'warning')")}, {count("('failed')")}, {count("('warning')")},
        (SELECT count(*) FROM forward_items f WHERE f.job_id = j.id),
        j.attempts, {d.epoch("j.next_attempt_at")}, j.last_error, {d.epoch("j.created_at")},
        {d.epoch("j.updated_at")}, j.lease_owner, {d.epoch("j.lease_until")}"""
    # Jobs chosen by id (a list) or by state, for retry and cancel.
    chosen = f"(id {d.in_list('ids')} OR state = :state)"
    insert_items = f"""INSERT INTO forward_items (job_id, sop_instance_uid, calling_aet, rule,
            destination, state, comment, updated_at)
        SELECT :job, i.sop_instance_uid, i.calling_aet, :rule, :destination, 'pending', '',
            {now}"""
    of_series = "i.series_instance_uid = :uid AND i.calling_aet = :aet"
    # Sorted by UID: two transactions inserting items of one instance (two AEs' series
    # completing at once) take the unique index's locks in one order.
    conflict = " ORDER BY i.sop_instance_uid ON CONFLICT DO NOTHING"
    statements = _Statements(
        facts="""SELECT p.patient_id, p.patient_name, p.patient_birth_date, p.patient_sex,
                st.study_instance_uid, st.study_date, st.study_time, st.accession_number,
                st.study_description, s.series_instance_uid, s.modality,
                s.series_description, s.series_number, s.calling_aet, s.called_aet
            FROM series s JOIN studies st ON st.study_instance_uid = s.study_instance_uid
            LEFT JOIN patients p ON p.patient_id = st.patient_id
            WHERE s.series_instance_uid = :uid AND s.calling_aet = :aet""",
        held_names="SELECT name, reason FROM forward_held ORDER BY name",
        held="SELECT 1 FROM forward_held WHERE name = :destination",
        # Locked (PostgreSQL), so that no claim takes the job, and no end decides it is
        # done, before the items added here are committed; a job being claimed is skipped
        # (a new one is made).
        pending_instance_job=f"""SELECT id FROM forward_jobs
            WHERE series_instance_uid = :uid AND calling_aet = :aet AND rule = :rule
                AND destination = :destination AND triggered_by = 'instance'
                AND state IN ('pending', 'held')
            ORDER BY id DESC LIMIT 1{d.skip_locked}""",
        insert_job=f"""INSERT INTO forward_jobs (series_instance_uid, calling_aet,
                study_instance_uid, rule, destination, triggered_by, priority, state, attempts,
                next_attempt_at, last_error, lease_owner, lease_until, created_at, updated_at)
            VALUES (:uid, :aet, :study, :rule, :destination, :trigger, :priority, :state, 0,
                NULL, '', NULL, NULL, {now}, {now})
            RETURNING id""",
        touch_job=f"UPDATE forward_jobs SET updated_at = {now} WHERE id = :job",
        delete_job="DELETE FROM forward_jobs WHERE id = :job",
        insert_items=f"{insert_items} FROM instances i WHERE {of_series}{conflict}",
        # From the batch's UIDs (by the primary key), not the whole series (which grows).
        insert_batch_items=f"""{insert_items} FROM {d.each("sops")} CROSS JOIN instances i
            WHERE i.sop_instance_uid = b.value AND {of_series}{conflict}""",
        claimable=f"""SELECT id FROM forward_jobs
            WHERE destination = :destination AND state IN {_CLAIMABLE}
                AND (state = 'pending'
                    OR (state = 'failed' AND next_attempt_at <= {now})
                    OR (state = 'running' AND lease_until < {now}))
            ORDER BY priority DESC, id LIMIT :room{d.skip_locked}""",
        claim=f"""UPDATE forward_jobs SET state = 'running', attempts = attempts + 1,
                next_attempt_at = NULL, lease_owner = :owner, lease_until = {d.ts(":until")},
                updated_at = {now}
            WHERE id = :job
            RETURNING id, rule, destination, series_instance_uid, calling_aet, attempts""",
        claim_items="""SELECT f.id, i.path, coalesce(i.sop_class_uid, ''), f.sop_instance_uid,
                i.transfer_syntax
            FROM forward_items f JOIN instances i ON i.sop_instance_uid = f.sop_instance_uid
                AND i.calling_aet = f.calling_aet
            WHERE f.job_id = :job AND f.state = 'pending'
            ORDER BY i.received_at, f.id""",
        renew=f"""UPDATE forward_jobs SET lease_until = {d.ts(":until")}
            WHERE id {d.in_list("ids")} AND state = 'running' AND lease_owner = :owner
            RETURNING id""",
        record=f"""UPDATE forward_items SET state = :state, status = :status, comment = :comment,
                updated_at = {now}
            WHERE id = :item AND job_id = :job AND state = 'pending'""",
        touch_owned=f"""UPDATE forward_jobs SET updated_at = {now}
            WHERE id {d.in_list("ids")} AND lease_owner = :owner""",
        job_for_end=f"""SELECT state, lease_owner, attempts, destination
            FROM forward_jobs WHERE id = :job{d.for_update}""",
        item_counts="""SELECT state, count(*) FROM forward_items WHERE job_id = :job
            GROUP BY state""",
        first_failure="""SELECT sop_instance_uid, status, comment FROM forward_items
            WHERE job_id = :job AND state = 'failed' ORDER BY id LIMIT 1""",
        end=f"""UPDATE forward_jobs SET state = :state, attempts = :attempts,
                next_attempt_at = {d.ts(":next")}, last_error = :error, lease_owner = NULL,
                lease_until = NULL, updated_at = {now}
            WHERE id = :job""",
        hold=f"""INSERT INTO forward_held (name, reason, since) VALUES (:destination, :reason,
                {now})
            ON CONFLICT (name) DO UPDATE SET reason = excluded.reason""",
        hold_jobs=f"""UPDATE forward_jobs SET state = 'held', updated_at = {now}
            WHERE destination = :destination AND state IN ('pending', 'failed')""",
        release="DELETE FROM forward_held WHERE name = :destination",
        release_jobs=f"""UPDATE forward_jobs SET state = 'pending', next_attempt_at = NULL,
                updated_at = {now}
            WHERE destination = :destination AND state = 'held'""",
        job_rows=f"SELECT {job_columns} FROM forward_jobs j",
        retry=f"""UPDATE forward_jobs SET state = CASE WHEN destination IN
                    (SELECT name FROM forward_held) THEN 'held' ELSE 'pending' END,
                attempts = 0, next_attempt_at = NULL, last_error = '', lease_owner = NULL,
                lease_until = NULL, updated_at = {now}
            WHERE {chosen} AND (state IN ('dead', 'failed', 'cancelled')
                OR (state = 'done' AND EXISTS (SELECT 1 FROM forward_items f
                    WHERE f.job_id = forward_jobs.id AND f.state = 'failed')))
            RETURNING id""",
        retry_items=f"""UPDATE forward_items SET state = 'pending', status = NULL, comment = '',
                updated_at = {now}
            WHERE job_id {d.in_list("ids")} AND state = 'failed'""",
        cancel=f"""UPDATE forward_jobs SET state = 'cancelled', next_attempt_at = NULL,
                lease_owner = NULL, lease_until = NULL, updated_at = {now}
            WHERE {chosen} AND state IN ('pending', 'running', 'failed', 'held', 'dead')""",
        forwarded=f"""SELECT j.series_instance_uid, j.calling_aet, j.id, j.destination, j.rule,
                j.state, {count("('delivered', 'warning')")},
                (SELECT count(*) FROM forward_items f WHERE f.job_id = j.id)
            FROM forward_jobs j WHERE j.series_instance_uid {d.in_list("uids")}
            ORDER BY j.id""",
    )
    return _Statements(
        **{name: d.sql(getattr(statements, name)) for name in _Statements.__struct_fields__}
    )


def _job_row(values: Sequence[Any]) -> JobRow:
    fields = list(values)
    fields[8] = JobState(fields[8])
    return JobRow(*fields)


_FACT_COLUMNS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "CallingAET",
    "CalledAET",
)


def pick_items(rows: Iterable[Sequence[Any]]) -> list[ForwardItem]:
    """The items of one claim, in order, stopping before the one that would bring a
    129th (SOP class, transfer syntax) pair: the rest waits for the next claim."""
    pairs: set[tuple[str, str]] = set()
    items: list[ForwardItem] = []
    for item_id, path, sop_class, sop_instance, syntax in rows:
        pair = (sop_class, syntax)
        if pair not in pairs:
            if len(pairs) == MAX_PAIRS:
                break
            pairs.add(pair)
        items.append(ForwardItem(item_id, path, sop_class, sop_instance, syntax))
    return items


class _Ending(msgspec.Struct, frozen=True):
    state: JobState
    attempts: int
    next_attempt_at: float | None
    error: str


def _ending(
    *,
    end: JobEndKind,
    error: str,
    attempts: int,
    counts: Mapping[str, int],
    failure: str,
    held: bool,
    retry: RetryPolicy,
    now: float,
    rng: random.Random,
) -> _Ending:
    """Where a job goes when its association is over (the module docstring's state machine).
    ``counts``: its items per state; ``failure``: the first failed item in words."""
    if counts.get(ItemState.PENDING, 0) == 0:  # whatever the end: nothing left to send
        failed = counts.get(ItemState.FAILED, 0)
        total = sum(counts.values())
        summary = f"{failed} of {total} instances failed; first: {failure}" if failed else ""
        return _Ending(JobState.DONE, attempts, None, summary)
    if end is JobEndKind.CANCELLED:
        # Stopped by us (shutdown, a lease given up), not by a person (cancel_jobs made it
        # cancelled already): not an attempt; its delivered items stay delivered.
        state = JobState.HELD if held else JobState.PENDING
        return _Ending(state, max(attempts - 1, 0), None, error)
    if end is JobEndKind.OK:
        # The rest of a job split over claims (too many presentation contexts for one
        # association), or instances added to it since it was claimed.
        return _Ending(JobState.HELD if held else JobState.PENDING, attempts, None, "")
    if end is JobEndKind.PERMANENT:
        return _Ending(JobState.DEAD, attempts, None, error)
    if attempts >= retry.attempts:
        return _Ending(
            JobState.DEAD, attempts, None, f"{error} (gave up after {attempts} attempts)"
        )
    if held:
        return _Ending(JobState.HELD, attempts, None, error)
    return _Ending(JobState.FAILED, attempts, now + retry.delay(attempts, rng), error)


def _failure_words(row: Sequence[Any] | None) -> str:
    if row is None:
        return ""
    sop, status, comment = row
    said = f"SOP Instance {sop}"
    if status is not None:
        said += f" answered {status:04X}"
    return f"{said}: {comment}" if comment else said


# --- the methods both backends share ---------------------------------------------------------


class QueueMethods(ABC):
    """The queue's side of a registry: job creation inside the registry's own transactions
    (``_create_jobs``) and the queue methods of ``Registry``. A backend initialises it with
    its dialect and router, and provides ``_transact`` (and ``_read`` if it can do better)."""

    _router: Router | None

    def __init__(self, dialect: Dialect, router: Router | None) -> None:
        self._dialect = dialect
        self._sql = _statements(dialect)
        self._router = router

    @abstractmethod
    def _transact(self, work: Callable[[Tx], T]) -> T:
        """Runs ``work`` in one write transaction (committed when it returns)."""

    def _read(self, work: Callable[[Tx], T]) -> T:
        """Runs ``work``, which only reads, with one statement."""
        return self._transact(work)

    # --- jobs created with the transitions ---------------------------------------------------

    def _create_jobs(
        self,
        tx: Tx,
        transitions: Sequence[Transition],
        batch: Mapping[SeriesKey, Sequence[str]] | None,
        now: float,
    ) -> None:
        """Creates the jobs the router asks for, in the caller's transaction: for each
        transition to a final state (series-complete, series-finalized) and, with ``batch``
        (the SOP Instance UIDs of a registration batch per series), for its instances."""
        router = self._router
        if router is None:
            return
        triggers = router.triggers
        facts: dict[SeriesKey, SeriesFacts] = {}
        held: set[str] | None = None

        def route(key: SeriesKey, trigger: Trigger, state: SeriesState | None) -> None:
            nonlocal held
            if key not in facts:
                facts[key] = self._facts(tx, key)
            try:
                targets = router.targets(trigger, facts[key], state)
            except Exception:
                # Registration must go on: the series is not forwarded, and the log says so.
                log.exception(
                    "routing failed: no forwarding job created",
                    extra={
                        "series_instance_uid": key[0],
                        "calling_aet": key[1],
                        "trigger": trigger.value,
                    },
                )
                return
            if targets and held is None:
                held = {name for name, _ in tx.execute(self._sql.held_names).fetchall()}
            sops = batch.get(key) if trigger is Trigger.INSTANCE and batch else None
            for target in targets:
                held_now = held is not None and target.destination in held
                self._create_job(tx, key, trigger, target, sops, facts[key], held_now, now)

        if batch and Trigger.INSTANCE in triggers:
            for key in batch:
                route(key, Trigger.INSTANCE, None)
        for transition in transitions:
            state = transition.series.state
            if state is SeriesState.RECEIVING:
                continue
            key = series_key(transition.series)
            if state is SeriesState.COMPLETE and Trigger.SERIES_COMPLETE in triggers:
                route(key, Trigger.SERIES_COMPLETE, state)
            if Trigger.SERIES_FINALIZED in triggers:
                route(key, Trigger.SERIES_FINALIZED, state)

    def _facts(self, tx: Tx, key: SeriesKey) -> SeriesFacts:
        row = tx.execute(self._sql.facts, {"uid": key[0], "aet": key[1]}).fetchone()
        return dict(zip(_FACT_COLUMNS, row, strict=True)) if row else {}

    def _create_job(
        self,
        tx: Tx,
        key: SeriesKey,
        trigger: Trigger,
        target: Target,
        sops: Sequence[str] | None,
        series: SeriesFacts,
        held: bool,
        now: float,
    ) -> None:
        """One job for ``target`` with the instances of the series (or just ``sops``) not
        yet queued for its rule and destination; none when there are none. Instances
        streamed by an ``instance`` rule join its job still waiting to be claimed."""
        params: dict[str, Any] = {
            "uid": key[0],
            "aet": key[1],
            "rule": target.rule,
            "destination": target.destination,
            "now": now,
        }
        job: int | None = None
        if trigger is Trigger.INSTANCE:
            found = tx.execute(self._sql.pending_instance_job, params).fetchone()
            job = None if found is None else int(found[0])
        created = job is None
        if job is None:
            (job,) = tx.execute(
                self._sql.insert_job,
                {
                    **params,
                    "study": series.get("StudyInstanceUID") or "",
                    "trigger": trigger.value,
                    "priority": target.priority,
                    "state": JobState.HELD if held else JobState.PENDING,
                },
            ).fetchone()
        params["job"] = job
        if sops is None:
            added = tx.execute(self._sql.insert_items, params).rowcount
        else:
            params["sops"] = self._dialect.values(sops)
            added = tx.execute(self._sql.insert_batch_items, params).rowcount
        if added == 0 and created:
            tx.execute(self._sql.delete_job, {"job": job})
        elif added and not created:
            tx.execute(self._sql.touch_job, {"job": job, "now": now})

    # --- the queue ---------------------------------------------------------------------

    def claim_jobs(
        self, process_id: str, room: Mapping[str, int], lease: float, now: float
    ) -> list[ClaimedJob]:
        """Claims jobs to send: at most ``room[destination]`` per destination (none for held
        ones), pending, failed and due, or running with an expired lease; highest priority,
        oldest first. Each becomes running, leased to ``process_id`` until ``now + lease``,
        its attempts one more. A job with more than ``MAX_PAIRS`` (SOP class, transfer
        syntax) pairs gives the items of its first ``MAX_PAIRS`` pairs (the rest later)."""
        sql = self._sql

        def work(tx: Tx) -> list[ClaimedJob]:
            held = {name for name, _ in tx.execute(sql.held_names).fetchall()}
            claimed: list[ClaimedJob] = []
            for destination, free in sorted(room.items()):
                if free <= 0 or destination in held:
                    continue
                ids = [
                    row[0]
                    for row in tx.execute(
                        sql.claimable, {"destination": destination, "room": free, "now": now}
                    ).fetchall()
                ]
                for job in ids:
                    job_id, rule, dest, uid, aet, attempts = tx.execute(
                        sql.claim,
                        {"job": job, "owner": process_id, "until": now + lease, "now": now},
                    ).fetchone()
                    items = pick_items(tx.execute(sql.claim_items, {"job": job}).fetchall())
                    if items:
                        claimed.append(ClaimedJob(job_id, rule, dest, uid, aet, attempts, items))
                    else:  # nothing left to send (all recorded before a lease expired)
                        self._end(tx, job, dest, JobEndKind.OK, "", attempts, None, now, None)
            return claimed

        return self._transact(work)

    def renew_leases(
        self, process_id: str, job_ids: Sequence[int], lease: float, now: float
    ) -> set[int]:
        """Extends the leases of ``job_ids`` to ``now + lease``; returns those still running
        under ``process_id``'s lease (the others were cancelled, or expired and claimed by
        another process: stop sending them)."""
        if not job_ids:
            return set()
        params = {
            "ids": self._dialect.values(job_ids),
            "owner": process_id,
            "until": now + lease,
        }
        return self._transact(
            lambda tx: {row[0] for row in tx.execute(self._sql.renew, params).fetchall()}
        )

    def record_items(self, process_id: str, outcomes: Sequence[ItemOutcome], now: float) -> None:
        """Records what became of items, in one transaction. An outcome is a fact whoever
        holds the job's lease now; only items still pending change (a delivered item stays
        delivered)."""
        if not outcomes:
            return
        rows = [
            {
                "item": outcome.item_id,
                "job": outcome.job_id,
                "state": _ITEM_STATES[outcome.result],
                "status": outcome.status,
                "comment": outcome.comment,
                "now": now,
            }
            for outcome in outcomes
        ]
        jobs = sorted({outcome.job_id for outcome in outcomes})

        def work(tx: Tx) -> None:
            tx.executemany(self._sql.record, rows)
            tx.execute(
                self._sql.touch_owned,
                {"ids": self._dialect.values(jobs), "owner": process_id, "now": now},
            )

        self._transact(work)

    def end_job(
        self,
        process_id: str,
        job_id: int,
        end: JobEndKind,
        error: str,
        retry: RetryPolicy,
        now: float,
        rng: random.Random,
    ) -> JobRow:
        """Ends ``process_id``'s attempt at a job (its association is over): done when no
        item is pending; the rest of a split job pending again; transient -> failed until
        ``now + retry.delay`` (held if its destination is), or dead after ``retry.attempts``;
        permanent -> dead; cancelled (a shutdown, a lease given up) -> pending again, not
        counted as an attempt. A job no longer running under ``process_id`` (cancelled by
        hand, or claimed by another process after its lease expired) is left as it is.
        Returns the job after the change."""

        def work(tx: Tx) -> JobRow:
            row = tx.execute(self._sql.job_for_end, {"job": job_id}).fetchone()
            if row is None:
                raise KeyError(f"no forwarding job {job_id}")
            state, owner, attempts, destination = row
            if state == JobState.RUNNING and owner == process_id:
                self._end(tx, job_id, destination, end, error, attempts, retry, now, rng)
            return self._job(tx, job_id)

        return self._transact(work)

    def _end(
        self,
        tx: Tx,
        job_id: int,
        destination: str,
        end: JobEndKind,
        error: str,
        attempts: int,
        retry: RetryPolicy | None,
        now: float,
        rng: random.Random | None,
    ) -> None:
        sql = self._sql
        counts = {
            state: int(n) for state, n in tx.execute(sql.item_counts, {"job": job_id}).fetchall()
        }
        failure = ""
        if counts.get(ItemState.FAILED):
            failure = _failure_words(tx.execute(sql.first_failure, {"job": job_id}).fetchone())
        held = tx.execute(sql.held, {"destination": destination}).fetchone() is not None
        ending = _ending(
            end=end,
            error=error,
            attempts=attempts,
            counts=counts,
            failure=failure,
            held=held,
            retry=retry or _NO_RETRY,
            now=now,
            rng=rng or random.Random(),
        )
        tx.execute(
            sql.end,
            {
                "job": job_id,
                "state": ending.state.value,
                "attempts": ending.attempts,
                "next": ending.next_attempt_at,
                "error": ending.error,
                "now": now,
            },
        )

    def _job(self, tx: Tx, job_id: int) -> JobRow:
        sql = self._dialect.sql(f"{self._sql.job_rows} WHERE j.id = :job")
        return _job_row(tx.execute(sql, {"job": job_id}).fetchone())

    def hold_destination(self, name: str, reason: str, now: float) -> None:
        """Opens a destination's circuit: no claims for it, its waiting jobs held, until
        ``release_destination``."""
        params = {"destination": name, "reason": reason, "now": now}

        def work(tx: Tx) -> None:
            tx.execute(self._sql.hold, params)
            tx.execute(self._sql.hold_jobs, params)

        self._transact(work)

    def release_destination(self, name: str, now: float | None = None) -> None:
        """Closes a destination's circuit: its held jobs are pending (due) again."""
        params = {"destination": name, "now": time.time() if now is None else now}

        def work(tx: Tx) -> None:
            tx.execute(self._sql.release, params)
            tx.execute(self._sql.release_jobs, params)

        self._transact(work)

    def held_destinations(self) -> dict[str, str]:
        """Held destination -> why."""
        return self._read(
            lambda tx: {
                name: reason for name, reason in tx.execute(self._sql.held_names).fetchall()
            }
        )

    def list_jobs(
        self,
        states: Sequence[JobState | str] | None = None,
        series: str | None = None,
        limit: int | None = None,
    ) -> list[JobRow]:
        """Jobs in any of ``states``, of the Series Instance UID ``series`` (any sender),
        oldest first; with ``limit``, the newest ``limit`` of them."""
        conditions: list[str] = []
        params: dict[str, Any] = {}
        if states is not None:
            conditions.append(f"j.state {self._dialect.in_list('states')}")
            params["states"] = self._dialect.values(JobState(state).value for state in states)
        if series is not None:
            conditions.append("j.series_instance_uid = :series")
            params["series"] = series
        query = self._sql.job_rows
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += " ORDER BY j.id DESC"
        if limit is not None:
            query += " LIMIT :limit"
            params["limit"] = limit
        sql = self._dialect.sql(query)
        rows = self._read(lambda tx: tx.execute(sql, params).fetchall())
        return [_job_row(row) for row in reversed(rows)]

    def retry_jobs(
        self, ids: Sequence[int] | None = None, state: JobState | str | None = None, *, now: float
    ) -> int:
        """Sends again, from the first attempt, the jobs ``ids`` or in ``state`` that are
        dead, failed, cancelled, or done with failed items: their undelivered items only.
        Returns how many."""
        params = self._chosen(ids, state, now)

        def work(tx: Tx) -> int:
            retried = [row[0] for row in tx.execute(self._sql.retry, params).fetchall()]
            if retried:
                tx.execute(
                    self._sql.retry_items, {"ids": self._dialect.values(retried), "now": now}
                )
            return len(retried)

        return self._transact(work)

    def cancel_jobs(
        self, ids: Sequence[int] | None = None, state: JobState | str | None = None
    ) -> int:
        """Cancels the jobs ``ids`` or in ``state`` that are not done (nor cancelled);
        a running one loses its lease (its process stops it when renewing). Returns how
        many."""
        params = self._chosen(ids, state, time.time())
        return self._transact(lambda tx: tx.execute(self._sql.cancel, params).rowcount)

    def _chosen(
        self, ids: Sequence[int] | None, state: JobState | str | None, now: float
    ) -> dict[str, Any]:
        if ids is None and state is None:
            raise ValueError("say which jobs: ids or a state")
        return {
            "ids": self._dialect.values(ids or []),
            "state": None if state is None else JobState(state).value,
            "now": now,
        }

    def forwarded(self, keys: Sequence[SeriesKey]) -> dict[SeriesKey, list[ForwardSummary]]:
        """The jobs of each series (oldest first); series without any are left out."""
        if not keys:
            return {}
        wanted = set(keys)
        params = {"uids": self._dialect.values(sorted({uid for uid, _ in wanted}))}
        rows = self._read(lambda tx: tx.execute(self._sql.forwarded, params).fetchall())
        found: dict[SeriesKey, list[ForwardSummary]] = {}
        for uid, aet, job, destination, rule, state, delivered, total in rows:
            if (uid, aet) in wanted:
                found.setdefault((uid, aet), []).append(
                    ForwardSummary(job, destination, rule, JobState(state), delivered, total)
                )
        return found


_ITEM_STATES: dict[DeliveryResult, str] = {
    DeliveryResult.DELIVERED: ItemState.DELIVERED.value,
    DeliveryResult.WARNING: ItemState.WARNING.value,
    DeliveryResult.FAILED: ItemState.FAILED.value,
}

#: For a claim that finds nothing left to send: it ends OK, no retry is ever computed.
_NO_RETRY = RetryPolicy(base=0.0, maximum=0.0, attempts=1)
