"""The registry: every stored instance registered in a database, and the state of every series.

Backends
    ``open_registry(None, files_root)`` opens the embedded SQLite database
    ``files_root/.oxidip/registry.sqlite3`` (WAL, synchronous=NORMAL; several processes may
    open it, their writes take turns). ``open_registry("postgresql://...", files_root)`` uses
    PostgreSQL through a ``psycopg_pool.ConnectionPool``; any number of oxidip processes may
    share the database. The tables have plain names (below): give oxidip its own database, or
    its own schema with ``?options=-csearch_path%3Dname`` in the URL.

Schema (version 4; ``oxidip_schema_version`` lists the migrations applied)
    - ``patients(patient_id PK, patient_name, patient_birth_date, patient_sex)``
    - ``studies(study_instance_uid PK, patient_id -> patients, study_date, study_time,
      accession_number, study_description)``
    - ``series(series_instance_uid, calling_aet, study_instance_uid -> studies, modality,
      series_description, series_number, expected, expected_status, expected_detail, received,
      state, first_received_at, last_received_at, finalized_at, called_aet)``, primary key
      (series_instance_uid, calling_aet); ``called_aet`` (version 3) is the called AE title
      of the first association that delivered it
    - ``instances(sop_instance_uid, calling_aet, series_instance_uid, sop_class_uid,
      instance_number, transfer_syntax, path, size, node, association_id, received_at,
      stored_at)``, primary key (sop_instance_uid, calling_aet), (series_instance_uid,
      calling_aet) -> series
    - ``series_activity(series_instance_uid, calling_aet, node, association_id)``: the
      associations currently delivering each series (primary key the four columns).
    - ``forward_jobs``, ``forward_items``, ``forward_held``: the forwarding queue
      (``oxidip.registry._queue`` describes them and the jobs' states).
    - ``pulls``, ``pull_series`` (version 4): the pull jobs of ``oxidip pull``
      (``oxidip.registry._pulls`` describes them and the series' states).

    Series and instances are keyed by their UID *and the calling AE title that sent them*:
    the same series sent by two AEs is two series rows, each with its own count, expected
    count (asked of that AE's PACS) and state, and the same instance is one row per sender,
    each pointing to that sender's file (the default path template keeps them apart under
    ``{CallingAET}/``). Why: a research gateway's user retrieves a series *from* a PACS and
    waits for that retrieval to complete (NATS subjects, C-FIND counts and ChRIS's PACS files
    are all per sender); a second sender's copy must neither complete nor hide the first, and
    every file on disk has its row (README: Duplicates). Version 1 keyed them by UID alone;
    its rows are kept, attributed to the sender of their series. DICOM UIDs are globally
    unique, so they (with the AE) are the primary keys (no surrogate ids to look up when
    inserting a batch); secondary indexes cover studies by patient, series by study, state
    (with last_received_at) and calling AE, instances by series and activity by association.
    Patient and study attributes are those of the first instance registered (PatientID is
    taken as the patient's key, whatever its issuer). Times are unix seconds in the API
    (``REAL`` in SQLite, ``timestamptz`` in PostgreSQL).

Registration (``register``: one transaction per batch, the group commit)
    Patients, studies and series are created when first seen; a series starts with
    ``expected_status`` "pending" and is returned in ``new_series`` so the caller can start
    its C-FIND. Instances are keyed by SOP Instance UID and sender: an instance sent again
    never counts twice. With the duplicates policy "overwrite" its row is updated (path, size, transfer
    syntax, times, node and association); with "keep-first" (and "reject", whose duplicates
    the receiver refuses before they get here) the existing row stays as it is. An instance
    stays in the series it was first registered in, even if sent again with another Series
    Instance UID. Instances without a Study, Series or SOP Instance UID cannot be registered;
    they are logged and skipped. Each (series, node, association) of the batch is recorded as
    activity. ``received`` is then recounted (distinct instances of the series) and the state
    rule applied, in the same transaction.

    ``process_id`` identifies one oxidip process (a random id per start; the columns that
    hold it are named ``node``): association ids are per process, so (process_id,
    association_id) is the global key of an association. Register an
    association's instances before calling ``association_ended`` for it.

State rule (applied to every series a call affects, inside its transaction)
    1. expected known and received == expected -> ``complete``
    2. expected known and received > expected -> ``overfull``
    3. otherwise, an association is delivering the series (activity) -> ``receiving``
    4. otherwise ``incomplete`` when expected is known, ``finalized-unknown`` when it is not
       (status pending, unknown or error).

    "Expected known" means status "known", the only status that comes with a count.
    ``finalized_at`` is when the series reached its current state other than ``receiving``:
    set whenever the state changes to another one (leaving ``receiving``, but also
    incomplete -> complete, complete -> overfull), cleared when it returns to ``receiving``. A series is never frozen: an aborted series (incomplete) that is later re-sent
    becomes receiving, then complete; a count that arrives late (``set_expected``) turns a
    finalized-unknown series into complete, incomplete or overfull.

    - ``association_ended(process_id, id)`` removes that association's activity and recomputes its
      series (expected 10, 6 received, association ended -> incomplete).
    - ``process_ended(process_id)`` does so for every association of a process that died (another
      process, adopting its journal, says so; see ``oxidip.reconcile``).
    - ``finalize_idle(idle_seconds, now)`` removes the activity of series that received nothing
      since ``now - idle_seconds`` (an idle association, or a process that crashed and whose
      journal no running process has adopted yet) and recomputes them.
    - ``set_expected(uid, expected, status, detail, calling_aet)`` stores what the C-FIND
      said (for that sender's series; every sender's when None) and recomputes; a count must
      come with status "known" and only with it (ValueError).

    Every call returns the state changes it made (``Transition``: the series after the change
    and its previous state, None for a series created by the call). All calls are idempotent
    (registering a batch again changes nothing more), but a series is in ``new_series`` of
    the one call that committed its creation only: a caller that retries a batch after an
    error whose outcome it cannot know (connection lost during the commit) should also treat
    touched series still "pending" that it never asked about as new.

Forwarding (issue 11)
    Given a ``Router`` (``open_registry(..., router=...)``), every call that changes series
    states creates the forwarding jobs of those changes in its own transaction (a crash cannot
    separate "series complete" from "job queued"): ``series-complete`` rules when a series
    becomes complete, ``series-finalized`` rules when it reaches any final state, and
    ``instance`` rules for each registration batch. A job holds the instances of its series not
    yet queued for its rule and destination: an instance is queued at most once per rule and
    destination (a re-send, a second sender, a restart or a second process queues nothing
    again; instances arriving after a series was forwarded make a job of their own). The
    sending side claims jobs with leases (``claim_jobs``), records outcomes (``record_items``)
    and ends its attempts (``end_job``: done, retried with backoff, or dead); ``oxidip queue``
    lists, retries and cancels them.

Concurrency
    The state lives in the database only. PostgreSQL: a write locks the series rows it changes
    in Series Instance UID order (``FOR UPDATE``, or the series upsert of ``register``), so two
    processes registering parts of the same series take turns and the last one sees every
    instance; deadlocks and serialization failures are retried. SQLite: every write is
    ``BEGIN IMMEDIATE``. Migrations run under a lock (``pg_advisory_xact_lock``, or SQLite's
    write lock), so processes starting together migrate once. Pooled PostgreSQL connections
    are checked before each transaction, so a server restart costs no failed call.
"""

import contextlib
import os
import sqlite3
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

from oxidip.registry._model import (
    DUPLICATES,
    ExpectedStatus,
    RegisterResult,
    Registry,
    SeriesKey,
    SeriesRow,
    SeriesState,
    Transition,
)
from oxidip.registry._pulls import (
    FoundSeries,
    PullRow,
    PullSeriesRow,
    PullSeriesState,
    PullState,
    Received,
)
from oxidip.registry._queue import (
    MAX_PAIRS,
    ClaimedJob,
    ForwardSummary,
    ItemState,
    JobRow,
    JobState,
    RetryPolicy,
)
from oxidip.routing import Router

__all__ = [
    "MAX_PAIRS",
    "ClaimedJob",
    "ExpectedStatus",
    "ForwardSummary",
    "FoundSeries",
    "ItemState",
    "JobRow",
    "JobState",
    "PullRow",
    "PullSeriesRow",
    "PullSeriesState",
    "PullState",
    "Received",
    "RegisterResult",
    "Registry",
    "RetryPolicy",
    "SeriesKey",
    "SeriesRow",
    "SeriesState",
    "Transition",
    "database_errors",
    "open_registry",
    "postgres_errors",
    "sqlite_path",
    "unreachable",
]

_POSTGRES_SCHEMES = ("postgresql", "postgres")


#: SQLSTATE classes (PostgreSQL, appendix A) of errors that go away with time: 08 connection
#: exception, 53 insufficient resources (disk full, too many connections), 57 operator
#: intervention (server shutting down or starting, query canceled), 58 system error (I/O).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "58")
#: ... and single codes: 40001 serialization failure, 40P01 deadlock, 55P03 lock not available.
_TRANSIENT_SQLSTATES = ("40001", "40P01", "55P03")
#: SQLite result codes (and their extended codes) of a database that is busy or unreachable.
_TRANSIENT_SQLITE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
)


def _psycopg() -> ModuleType | None:
    """psycopg if this process imported it (a PostgreSQL registry, ``_postgres``): it is
    imported only then (~80 ms of every start otherwise), and without it no psycopg error can
    have been raised."""
    return sys.modules.get("psycopg")


def postgres_errors() -> tuple[type[Exception], ...]:
    """``(psycopg.Error,)`` once psycopg is imported, else ``()`` (catching nothing): for
    ``except postgres_errors() as error:`` without importing psycopg."""
    psycopg = _psycopg()
    return () if psycopg is None else (psycopg.Error,)


def database_errors() -> tuple[type[Exception], ...]:
    """The errors a registry call raises when its database fails: ``sqlite3.Error`` and
    ``postgres_errors()``."""
    return (sqlite3.Error, *postgres_errors())


def unreachable(error: BaseException) -> bool:
    """True when ``error`` says the database cannot be reached or used for now (connection
    refused or lost, pool timeout, server shutting down, disk full, SQLite busy...), so that
    the same call is worth retrying later; False for errors the call itself causes. A hook's
    ``OSError`` (``ConnectionError``, ``TimeoutError``) counts as its backend being
    unreachable."""
    psycopg = _psycopg()
    if psycopg is not None and isinstance(error, psycopg.OperationalError):
        # No SQLSTATE: the client's own failure (connecting, a broken connection, the pool).
        code = error.sqlstate
        return (
            code is None or code[:2] in _TRANSIENT_SQLSTATE_CLASSES or code in _TRANSIENT_SQLSTATES
        )
    if psycopg is not None and isinstance(error, psycopg.InterfaceError):
        return True  # a connection closed under a call
    if isinstance(error, sqlite3.OperationalError):
        name = getattr(error, "sqlite_errorname", None) or ""
        return name.startswith(_TRANSIENT_SQLITE)
    return isinstance(error, OSError)


def sqlite_path(files_root: Path | str) -> Path:
    """Where the embedded SQLite registry of a storage root lives."""
    return Path(files_root).absolute() / ".oxidip" / "registry.sqlite3"


def _create_private(path: Path, *, root_mode: int) -> None:
    """Creates the SQLite file (0600) and its directory (0700), for the owner only (the umask
    can only take more away); SQLite gives its -wal and -shm files the database's mode. The
    storage root above, if missing, gets ``root_mode``."""
    root = path.parent.parent
    if not root.is_dir():
        root.mkdir(mode=root_mode, parents=True, exist_ok=True)
        root.chmod(root_mode)  # exactly, whatever the umask (as the receiver does)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    # Only when missing: a reader without write access (oxidip series) still opens it.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def open_registry(
    connection: str | None,
    files_root: Path | str,
    *,
    pool_size: int = 4,
    duplicates: str = "overwrite",
    dir_mode: int = 0o750,
    router: Router | None = None,
) -> Registry:
    """Opens the registry: SQLite under ``files_root`` when ``connection`` is None (created
    for the owner only: directory 0700, database 0600; a missing ``files_root`` is created
    with ``dir_mode``), PostgreSQL for a ``postgresql://`` (or ``postgres://``) URL with a
    pool of ``pool_size`` connections. ``duplicates`` is the receiver's policy ("overwrite",
    "keep-first" or "reject"). ``router`` decides which forwarding jobs each state change
    creates (in its transaction); None: nothing is forwarded. Call ``migrate`` before
    anything else. Raises ValueError for
    anything else, and psycopg's OperationalError when PostgreSQL cannot be reached."""
    if duplicates not in DUPLICATES:
        raise ValueError(
            f"unknown duplicates policy {duplicates!r}: expected one of {', '.join(DUPLICATES)}"
        )
    policy = DUPLICATES[duplicates]
    if connection is None:
        from oxidip.registry._sqlite import SqliteRegistry

        path = sqlite_path(files_root)
        _create_private(path, root_mode=dir_mode)
        return SqliteRegistry(path, policy, router)
    scheme = urlsplit(connection.strip()).scheme.lower() if "://" in connection else ""
    if scheme not in _POSTGRES_SCHEMES:
        # The value may hold a password: only its scheme is repeated.
        what = f"a {scheme}:// URL" if scheme else "not a URL"
        raise ValueError(
            f"unsupported database connection ({what}): expected a postgresql:// (or"
            " postgres://) URL, or none for the embedded SQLite database under the files root"
        )
    if pool_size < 1:
        raise ValueError(f"pool_size must be at least 1, got {pool_size}")
    from oxidip.registry._postgres import PostgresRegistry

    return PostgresRegistry(connection.strip(), pool_size, policy, router)
