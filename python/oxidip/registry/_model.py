"""The registry's types, its interface, the state rule and what both backends share."""

import enum
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, LiteralString, Protocol

import msgspec

from oxidip._boundary import InstanceStored, ItemOutcome, JobEndKind

if TYPE_CHECKING:
    # The queue's types; its module builds on this one.
    from oxidip.registry._pulls import (
        FoundSeries,
        PullRow,
        PullSeriesRow,
        PullSeriesState,
        Received,
    )
    from oxidip.registry._queue import ClaimedJob, ForwardSummary, JobRow, JobState, RetryPolicy

__all__ = [
    "DUPLICATES",
    "ExpectedStatus",
    "InstanceRow",
    "RegisterResult",
    "Registry",
    "SeriesKey",
    "SeriesRow",
    "SeriesState",
    "Transition",
    "check_expected",
    "prepare",
    "schema_v1",
    "schema_v2",
    "series_key",
    "series_row",
    "state_sql",
]

log = logging.getLogger("oxidip.registry")


class SeriesState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    OVERFULL = "overfull"
    FINALIZED_UNKNOWN = "finalized-unknown"


class ExpectedStatus(enum.StrEnum):
    #: The C-FIND has not answered yet.
    PENDING = "pending"
    #: The PACS answered with a count.
    KNOWN = "known"
    #: The PACS answered without a count, the calling AE is unknown, or no PACS is configured.
    UNKNOWN = "unknown"
    #: The C-FIND failed (timeout, refused, failure status) after its retries.
    ERROR = "error"


class SeriesRow(msgspec.Struct, frozen=True):
    """One series as stored; times are unix seconds. Also the ``oxidip series --json`` line."""

    series_instance_uid: str
    study_instance_uid: str
    calling_aet: str
    patient_id: str | None
    modality: str | None
    series_description: str | None
    series_number: str | None
    #: The count the PACS gave; None unless ``expected_status`` is "known".
    expected: int | None
    expected_status: ExpectedStatus
    #: Why the count is what it is (e.g. the C-FIND error); "" when there is nothing to say.
    expected_detail: str
    #: Distinct SOP instances registered for the series.
    received: int
    state: SeriesState
    first_received_at: float
    last_received_at: float
    #: When the series last left "receiving"; None while receiving.
    finalized_at: float | None


_STATUS = SeriesRow.__struct_fields__.index("expected_status")
_STATE = SeriesRow.__struct_fields__.index("state")


def series_row(values: Sequence[Any]) -> SeriesRow:
    """A series as a backend reads it (the columns in ``SeriesRow``'s order), its status and
    state made enums."""
    row = list(values)
    row[_STATUS] = ExpectedStatus(row[_STATUS])
    row[_STATE] = SeriesState(row[_STATE])
    return SeriesRow(*row)


#: What identifies a series in the registry: (Series Instance UID, calling AE title). Each
#: sender's delivery of a series is tracked on its own (see the package docstring).
SeriesKey = tuple[str, str]


def series_key(row: SeriesRow) -> SeriesKey:
    return (row.series_instance_uid, row.calling_aet)


class Transition(msgspec.Struct, frozen=True):
    #: The series after the change.
    series: SeriesRow
    #: Its previous state; None for a series first seen in this call.
    previous: SeriesState | None


class RegisterResult(msgspec.Struct, frozen=True):
    #: Series this call created (their first instance anywhere): the caller starts their C-FIND.
    new_series: list[SeriesRow]
    #: Every series whose state changed, new ones included (``previous`` None).
    transitions: list[Transition]
    #: Every series this batch added instances to (duplicates included), after the change.
    touched: list[SeriesRow]


class Registry(Protocol):
    """Where instances are registered and series states kept (see the package docstring).
    Every method is one transaction and may be called from any thread."""

    def migrate(self) -> None:
        """Creates or upgrades the schema; idempotent, safe when two processes do it at once."""
        ...

    def register(self, instances: Sequence[InstanceStored], process_id: str) -> RegisterResult:
        """Registers a batch of stored instances in one transaction (group commit)."""
        ...

    def set_expected(
        self,
        series_instance_uid: str,
        expected: int | None,
        status: ExpectedStatus,
        detail: str,
        calling_aet: str | None = None,
    ) -> list[Transition]:
        """Stores the expected count of a series as sent by ``calling_aet`` (None: by every
        sender) and what the C-FIND said, recomputes."""
        ...

    def association_ended(self, process_id: str, association_id: int) -> list[Transition]:
        """The association no longer delivers anything: its series are recomputed."""
        ...

    def process_ended(self, process_id: str) -> list[Transition]:
        """The process ``process_id`` is gone (its journal was adopted by another): every
        association of it has ended; their series are recomputed."""
        ...

    def finalize_idle(self, idle_seconds: float, now: float) -> list[Transition]:
        """Series receiving nothing since ``now - idle_seconds`` lose their activity and are
        recomputed."""
        ...

    def list_series(
        self,
        *,
        state: str | None = None,
        calling_aet: str | None = None,
        study_instance_uid: str | None = None,
        expected_status: str | None = None,
    ) -> list[SeriesRow]:
        """Series matching every filter given, oldest first."""
        ...

    def instance_paths(self) -> Iterator[tuple[str, str]]:
        """(SOP Instance UID, path) of every registered instance."""
        ...

    # --- the forwarding queue (``oxidip.registry._queue`` says how it works) ---------------

    def claim_jobs(
        self, process_id: str, room: Mapping[str, int], lease: float, now: float
    ) -> "list[ClaimedJob]":
        """Claims jobs to send, at most ``room[destination]`` per destination."""
        ...

    def renew_leases(
        self, process_id: str, job_ids: Sequence[int], lease: float, now: float
    ) -> set[int]:
        """Extends leases; returns the jobs still ours."""
        ...

    def record_items(self, process_id: str, outcomes: Sequence[ItemOutcome], now: float) -> None:
        """Records items' outcomes (a batch, one transaction)."""
        ...

    def end_job(
        self,
        process_id: str,
        job_id: int,
        end: JobEndKind,
        error: str,
        retry: "RetryPolicy",
        now: float,
        rng: random.Random,
    ) -> "JobRow":
        """Ends an attempt at a job: done, pending, failed (retry later), dead..."""
        ...

    def hold_destination(self, name: str, reason: str, now: float) -> None:
        """Opens a destination's circuit (its jobs held)."""
        ...

    def release_destination(self, name: str, now: float | None = None) -> None:
        """Closes a destination's circuit (its held jobs pending)."""
        ...

    def held_destinations(self) -> dict[str, str]:
        """Held destination -> why."""
        ...

    def list_jobs(
        self,
        states: "Sequence[JobState | str] | None" = None,
        series: str | None = None,
        limit: int | None = None,
    ) -> "list[JobRow]":
        """Jobs, oldest first (with ``limit``: the newest ones)."""
        ...

    def retry_jobs(
        self,
        ids: Sequence[int] | None = None,
        state: "JobState | str | None" = None,
        *,
        now: float,
    ) -> int:
        """Dead, failed, cancelled (or done with failures) jobs sent again; how many."""
        ...

    def cancel_jobs(
        self, ids: Sequence[int] | None = None, state: "JobState | str | None" = None
    ) -> int:
        """Jobs not done cancelled; how many."""
        ...

    def forwarded(self, keys: Sequence[SeriesKey]) -> "dict[SeriesKey, list[ForwardSummary]]":
        """The forwarding jobs of each series."""
        ...

    # --- pull jobs (``oxidip.registry._pulls`` says how they work) --------------------------

    def create_pull(self, queries: str, pacs: str, method: str, now: float) -> "PullRow":
        """A new pull of ``queries`` (canonical JSON) from ``pacs``."""
        ...

    def find_pull(self, queries: str, pacs: str) -> "PullRow | None":
        """The latest pull of these queries from ``pacs``."""
        ...

    def get_pull(self, pull_id: int) -> "PullRow | None": ...

    def restart_pull(
        self, pull_id: int, method: str, found: "Sequence[FoundSeries]", now: float
    ) -> "list[PullSeriesRow]":
        """Starts a pull (again) with the series the C-FIND found."""
        ...

    def pull_series(self, pull_id: int) -> "list[PullSeriesRow]":
        """The series of a pull."""
        ...

    def claim_pull_series(
        self, pull_id: int, owner: str, lease: float, now: float
    ) -> "PullSeriesRow | None":
        """Claims the next series of a pull to retrieve, leased to ``owner``."""
        ...

    def renew_pull_leases(
        self, pull_id: int, owner: str, uids: Sequence[str], lease: float, now: float
    ) -> set[str]:
        """Extends ``owner``'s leases; returns the series still held."""
        ...

    def end_pull_series(
        self,
        pull_id: int,
        uid: str,
        owner: str,
        state: "PullSeriesState",
        *,
        error: str,
        counts: tuple[int | None, int | None, int | None],
        received: int | None,
        next_attempt_at: float | None,
        now: float,
    ) -> bool:
        """Ends ``owner``'s attempt at a series."""
        ...

    def received(self, uids: Sequence[str], calling_aet: str) -> "dict[str, Received]":
        """What the registry holds of each series from ``calling_aet``."""
        ...

    def close(self) -> None: ...


#: Accepted duplicates policies -> what happens to an existing instance row.
DUPLICATES: dict[str, str] = {
    "overwrite": "overwrite",
    "keep-first": "keep-first",
    # The receiver refuses duplicates (0111) and reports them failed, so they never get here;
    # one that does (a race, a replay) finds the first file kept, as with keep-first.
    "reject": "keep-first",
}


def state_sql(*, expected: str, received: str, active: str) -> str:
    """The state rule as an SQL CASE expression over the given expressions (valid in SQLite and
    PostgreSQL). The package docstring explains it."""
    return (
        f"CASE WHEN {expected} IS NOT NULL AND {received} = {expected} THEN 'complete'"
        f" WHEN {expected} IS NOT NULL AND {received} > {expected} THEN 'overfull'"
        f" WHEN {active} THEN 'receiving'"
        f" WHEN {expected} IS NOT NULL THEN 'incomplete'"
        " ELSE 'finalized-unknown' END"
    )


def check_expected(expected: int | None, status: ExpectedStatus | str) -> ExpectedStatus:
    """Validates the arguments of ``set_expected``: a count goes with "known" and only with it."""
    checked = ExpectedStatus(status)
    if checked is ExpectedStatus.KNOWN:
        if expected is None or expected < 0:
            raise ValueError(f"expected status 'known' needs a count >= 0, got {expected!r}")
    elif expected is not None:
        raise ValueError(f"expected status {checked.value!r} cannot have a count ({expected!r})")
    return checked


class InstanceRow(msgspec.Struct, array_like=True, gc=False):
    """One instance to register, flattened; the column order of the backends' inserts (text
    and numbers only: untracked by the cyclic collector, like ``oxidip._boundary``'s events)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_description: str | None
    modality: str | None
    series_description: str | None
    series_number: str | None
    calling_aet: str
    called_aet: str
    sop_class_uid: str | None
    instance_number: str | None
    transfer_syntax: str
    path: str
    size: int
    #: The process that stored it (``Registry.register``); its column is named ``node``.
    process_id: str = msgspec.field(name="node")
    association_id: int
    received_at: float
    stored_at: float


INSTANCE_ROW_COLUMNS: tuple[str, ...] = tuple(InstanceRow.__struct_encode_fields__)


def prepare(
    instances: Sequence[InstanceStored], process_id: str, duplicates: str
) -> list[InstanceRow]:
    """Flattens a batch, sorted by SOP Instance UID and calling AE (the order rows are locked
    in), with one row per SOP instance and sender: the last one with "overwrite", the first
    with "keep-first". Instances without a Study, Series or SOP Instance UID cannot be
    registered: logged and left out."""
    rows: dict[tuple[str, str], InstanceRow] = {}
    for instance in instances:
        a = instance.attributes
        if not (a.SOPInstanceUID and a.SeriesInstanceUID and a.StudyInstanceUID):
            missing = [
                name
                for name, value in (
                    ("StudyInstanceUID", a.StudyInstanceUID),
                    ("SeriesInstanceUID", a.SeriesInstanceUID),
                    ("SOPInstanceUID", a.SOPInstanceUID),
                )
                if not value
            ]
            log.warning(
                "instance not registered",
                extra={
                    "reason": "missing " + ",".join(missing),
                    "path": instance.path,
                    "calling_aet": instance.calling_aet,
                    "association_id": instance.association_id,
                },
            )
            continue
        key = (a.SOPInstanceUID, instance.calling_aet)
        if duplicates == "keep-first" and key in rows:
            continue
        # Positional, in the field order above: msgspec matches 25 keyword arguments at
        # ~2.5 us an instance (measured), five times the cost of the whole row otherwise.
        rows[key] = InstanceRow(
            a.SOPInstanceUID,
            a.SeriesInstanceUID,
            a.StudyInstanceUID,
            a.PatientID or None,
            a.PatientName or None,
            a.PatientBirthDate or None,
            a.PatientSex or None,
            a.StudyDate or None,
            a.StudyTime or None,
            a.AccessionNumber or None,
            a.StudyDescription or None,
            a.Modality or None,
            a.SeriesDescription or None,
            a.SeriesNumber or None,
            instance.calling_aet,
            instance.called_aet,
            a.SOPClassUID or None,
            a.InstanceNumber or None,
            instance.transfer_syntax,
            instance.path,
            instance.size,
            process_id,
            instance.association_id,
            instance.received_at,
            instance.stored_at,
        )
    return [rows[key] for key in sorted(rows)]


def result_of(
    rows: Sequence[SeriesRow],
    previous: dict[SeriesKey, str | None],
    touched: set[SeriesKey],
) -> RegisterResult:
    """Builds a ``RegisterResult`` from the series rows after the change and their states
    before it (None: created by this call)."""
    return RegisterResult(
        new_series=[row for row in rows if previous[series_key(row)] is None],
        transitions=transitions_of(rows, previous),
        touched=[row for row in rows if series_key(row) in touched],
    )


def transitions_of(
    rows: Sequence[SeriesRow], previous: dict[SeriesKey, str | None]
) -> list[Transition]:
    """The rows whose state differs from ``previous`` (missing from it: unchanged)."""
    return [
        Transition(row, None if before is None else SeriesState(before))
        for row in rows
        if series_key(row) in previous and (before := previous[series_key(row)]) != row.state
    ]


def _series_columns(timestamp: LiteralString) -> LiteralString:
    return f"""series_instance_uid text NOT NULL,
            study_instance_uid text NOT NULL REFERENCES studies (study_instance_uid),
            calling_aet text NOT NULL,
            modality text,
            series_description text,
            series_number text,
            expected integer CHECK (expected >= 0),
            expected_status text NOT NULL
                CHECK (expected_status IN ('pending', 'known', 'unknown', 'error')),
            expected_detail text NOT NULL,
            received integer NOT NULL,
            state text NOT NULL CHECK (state IN
                ('receiving', 'complete', 'incomplete', 'overfull', 'finalized-unknown')),
            first_received_at {timestamp} NOT NULL,
            last_received_at {timestamp} NOT NULL,
            finalized_at {timestamp}"""


def _instance_columns(timestamp: LiteralString) -> LiteralString:
    return f"""sop_instance_uid text NOT NULL,
            series_instance_uid text NOT NULL,
            sop_class_uid text,
            instance_number text,
            transfer_syntax text NOT NULL,
            path text NOT NULL,
            size bigint NOT NULL,
            node text NOT NULL,
            association_id bigint NOT NULL,
            received_at {timestamp} NOT NULL,
            stored_at {timestamp} NOT NULL"""


_SERIES_INDEXES: tuple[LiteralString, ...] = (
    "CREATE INDEX series_study_instance_uid ON series (study_instance_uid)",
    "CREATE INDEX series_state ON series (state, last_received_at)",
    "CREATE INDEX series_calling_aet ON series (calling_aet)",
)


def schema_v1(*, timestamp: LiteralString) -> tuple[LiteralString, ...]:
    """Version 1 of the schema, for both backends: they differ only in the type that holds
    instants (SQLite: ``REAL`` unix seconds; PostgreSQL: ``timestamptz``). ``BIGINT`` has
    INTEGER affinity in SQLite. Series and instances keyed by their UID alone."""
    return (
        """CREATE TABLE patients (
            patient_id text PRIMARY KEY,
            patient_name text,
            patient_birth_date text,
            patient_sex text
        )""",
        """CREATE TABLE studies (
            study_instance_uid text PRIMARY KEY,
            patient_id text REFERENCES patients (patient_id),
            study_date text,
            study_time text,
            accession_number text,
            study_description text
        )""",
        "CREATE INDEX studies_patient_id ON studies (patient_id)",
        f"""CREATE TABLE series ({_series_columns(timestamp)},
            PRIMARY KEY (series_instance_uid)
        )""",
        *_SERIES_INDEXES,
        f"""CREATE TABLE instances ({_instance_columns(timestamp)},
            PRIMARY KEY (sop_instance_uid),
            FOREIGN KEY (series_instance_uid) REFERENCES series (series_instance_uid)
        )""",
        "CREATE INDEX instances_series_instance_uid ON instances (series_instance_uid)",
        """CREATE TABLE series_activity (
            series_instance_uid text NOT NULL REFERENCES series (series_instance_uid),
            node text NOT NULL,
            association_id bigint NOT NULL,
            PRIMARY KEY (series_instance_uid, node, association_id)
        )""",
        "CREATE INDEX series_activity_association ON series_activity (node, association_id)",
    )


_SERIES_COPIED: LiteralString = """series_instance_uid, study_instance_uid, calling_aet,
    modality, series_description, series_number, expected, expected_status, expected_detail,
    received, state, first_received_at, last_received_at, finalized_at"""

_INSTANCES_COPIED: LiteralString = """sop_instance_uid, series_instance_uid, sop_class_uid,
    instance_number, transfer_syntax, path, size, node, association_id, received_at, stored_at"""


def schema_v2(*, timestamp: LiteralString) -> tuple[LiteralString, ...]:
    """Version 2: series, their instances and their activity keyed by (UID, calling AE
    title), each sender's delivery tracked on its own (see the package docstring). The
    tables are rebuilt (SQLite cannot change a primary key in place) and their rows copied:
    an instance of version 1 belongs to the sender its series was attributed to."""
    return (
        f"""CREATE TABLE series_v2 ({_series_columns(timestamp)},
            CONSTRAINT series_key PRIMARY KEY (series_instance_uid, calling_aet)
        )""",
        f"INSERT INTO series_v2 ({_SERIES_COPIED}) SELECT {_SERIES_COPIED} FROM series",
        f"""CREATE TABLE instances_v2 ({_instance_columns(timestamp)},
            calling_aet text NOT NULL,
            CONSTRAINT instances_key PRIMARY KEY (sop_instance_uid, calling_aet),
            FOREIGN KEY (series_instance_uid, calling_aet)
                REFERENCES series_v2 (series_instance_uid, calling_aet)
        )""",
        f"""INSERT INTO instances_v2 ({_INSTANCES_COPIED}, calling_aet)
            SELECT {_INSTANCES_COPIED}, (SELECT s.calling_aet FROM series s
                WHERE s.series_instance_uid = instances.series_instance_uid)
            FROM instances""",
        """CREATE TABLE series_activity_v2 (
            series_instance_uid text NOT NULL,
            calling_aet text NOT NULL,
            node text NOT NULL,
            association_id bigint NOT NULL,
            CONSTRAINT series_activity_key
                PRIMARY KEY (series_instance_uid, calling_aet, node, association_id),
            FOREIGN KEY (series_instance_uid, calling_aet)
                REFERENCES series_v2 (series_instance_uid, calling_aet)
        )""",
        """INSERT INTO series_activity_v2 (series_instance_uid, calling_aet, node, association_id)
            SELECT series_instance_uid, (SELECT s.calling_aet FROM series s
                WHERE s.series_instance_uid = series_activity.series_instance_uid),
                node, association_id
            FROM series_activity""",
        "DROP TABLE series_activity",
        "DROP TABLE instances",
        "DROP TABLE series",
        "ALTER TABLE series_v2 RENAME TO series",
        "ALTER TABLE instances_v2 RENAME TO instances",
        "ALTER TABLE series_activity_v2 RENAME TO series_activity",
        *_SERIES_INDEXES,
        "CREATE INDEX instances_series ON instances (series_instance_uid, calling_aet)",
        "CREATE INDEX series_activity_association ON series_activity (node, association_id)",
    )


def check_schema_version(current: int, latest: int, where: str) -> None:
    """Refuses a database migrated by a newer oxidip: its schema may mean things this one
    does not know."""
    if current > latest:
        raise RuntimeError(
            f"{where} has schema version {current}, newer than this oxidip knows ({latest}):"
            " upgrade oxidip"
        )
