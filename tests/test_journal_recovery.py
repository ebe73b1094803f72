"""The journal against what hosts and operators do to a running receiver (issue 9, items 7, 11
and 12), with real ``oxidip serve`` processes, their registry (SQLite or a PostgreSQL
database of the test's own) and raw DICOM senders:

- the storage root removed and made again under a running receiver: storing goes on, the
  journal is made again with what it held, and a kill -9 afterwards replays it;
- a journal whose process died is adopted whatever the host name in its name, but not while
  a live process holds its lock; two processes on one PostgreSQL database: a killed one's
  acknowledged instances are registered by the other within seconds and its series leave
  "receiving" (long before the series idle timeout);
- a journal that cannot be written leaves no file at a final path (the state a kill between
  the rename and the journal append used to leave): the registry agrees with the disk after
  a restart, and with ``OXIDIP_DUPLICATES=reject`` the sender's retry is stored, not 0111.

What is left unregistered is visible: ``tests/test_journal_backlog.py``.
"""

import fcntl
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.dicom import encode_dataset
from tests.helpers.e2e import (
    HOST,
    Oxidip,
    RegistryView,
    counts_are,
    final_path,
    instances_on_disk,
    journal_files,
    make_series,
    postgres_database,
    registration_stalled,
    send,
)
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, Context, RawClient
from tests.helpers.query_scp import QueryScp

SENDER = "MODALITY"


@pytest.fixture
def pg() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def journal_entries(root: Path) -> list[str]:
    """The paths listed by every journal segment under ``root`` (headers left out)."""
    return [
        line
        for segment in journal_files(root)
        for line in segment.read_text().splitlines()
        if line and not line.startswith("#")
    ]


def assert_registered_where_stored(view: RegistryView, root: Path, datasets: list[object]) -> None:
    registered = view.instance_paths()
    for ds in datasets:
        path = final_path(root, SENDER, ds)  # type: ignore[arg-type]
        assert path.is_file(), path
        assert registered.get(str(ds.SOPInstanceUID)) == str(path)  # type: ignore[attr-defined]


# --- item 7: the storage root removed and made again ------------------------------------------


def test_a_root_removed_and_made_again_keeps_storing_and_journaling(
    pg: str, tmp_path: Path
) -> None:
    root = tmp_path / "storage"
    before, after = make_series(3), make_series(5)
    with Oxidip(root, db=pg) as server, RegistryView(root, pg) as view:
        assert set(send(server.port, before.datasets, calling_aet=SENDER).values()) == {0}
        view.wait_series(counts_are({before.series_instance_uid: 3}, "finalized-unknown"))
        shutil.rmtree(root)
        root.mkdir()
        with registration_stalled(root, pg):
            # Stored and acknowledged, not registered: only the journal knows them.
            statuses = send(server.port, after.datasets, calling_aet=SENDER)
            assert set(statuses.values()) == {0}, statuses
            expected = sorted(
                str(final_path(root, SENDER, ds).relative_to(root)) for ds in after.datasets
            )
            # The journal's watch replaces a deleted segment within its interval (100 ms).
            wait_for(lambda: sorted(journal_entries(root)) == expected, "the journal made again")
            server.kill()
    with Oxidip(root, db=pg) as server, RegistryView(root, pg) as view:
        # Replayed before "listening".
        assert_registered_where_stored(view, root, list(after.datasets))
        server.stop()
    assert journal_files(root) == []


# --- item 11: journals of dead processes, whatever their host --------------------------------


def test_a_journal_with_a_foreign_host_name_is_adopted_once_its_lock_is_free(
    tmp_path: Path,
) -> None:
    root = tmp_path / "storage"
    series = make_series(4)
    with Oxidip(root) as server, registration_stalled(root, None):
        assert set(send(server.port, series.datasets, calling_aet=SENDER).values()) == {0}
        server.kill()
    [segment] = journal_files(root)
    # What a container re-created under another name finds: the journal of its predecessor,
    # whose (pid-start-sequence.host) name is not its own host's.
    numbers, _ = segment.name.split(".", 1)
    foreign = segment.rename(segment.with_name(f"{numbers}.container-before-restart.journal"))
    with open(foreign, "rb") as held:
        # A live process holds it (as the other host's oxidip would, while it runs).
        fcntl.flock(held, fcntl.LOCK_EX)
        with Oxidip(root) as server, RegistryView(root, None) as view:
            # The start replayed what it could before "listening": not this one.
            assert view.instance_paths() == {}
            assert foreign.exists()
            fcntl.flock(held, fcntl.LOCK_UN)
            view.wait_series(
                counts_are({series.series_instance_uid: 4}, "finalized-unknown"),
                server=server,
                timeout=20,
                what="the journal adopted",
            )
            assert_registered_where_stored(view, root, list(series.datasets))
            assert not foreign.exists()
            server.stop()


def test_a_killed_process_is_covered_by_a_live_one_within_seconds(pg: str, tmp_path: Path) -> None:
    """Two processes on one storage root and one PostgreSQL database; one is killed while a
    sender is in the middle of a series, and is not restarted."""
    series = make_series(10)
    uid = series.series_instance_uid
    root = tmp_path / "storage"
    # Far beyond the test's deadline: only the adoption can end the series in time.
    env = {"OXIDIP_SERIES_IDLE_TIMEOUT": "600"}
    with QueryScp({uid: 10}, aet="PACS") as pacs:
        address = {SENDER: (pacs.host, pacs.port)}
        with (
            Oxidip(root, db=pg, pacs=address, env=env) as doomed,
            Oxidip(root, db=pg, pacs=address, env=env) as survivor,
            RegistryView(root, pg) as view,
        ):
            acknowledged = list(series.datasets[:6])
            with registration_stalled(root, pg), RawClient(HOST, doomed.port, timeout=20) as client:
                client.associate_ok(
                    calling=SENDER, contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])]
                )
                for message_id, ds in enumerate(acknowledged, start=1):
                    sop = str(ds.SOPInstanceUID)
                    rsp = client.c_store(
                        1, SECONDARY_CAPTURE, sop, encode_dataset(ds), message_id=message_id
                    )
                    assert rsp.status == 0, rsp
                doomed.kill()
            rows = view.wait_series(
                counts_are({uid: 6}, "incomplete"),
                server=survivor,
                timeout=20,
                what="the killed process's 6 instances registered and its series ended",
            )
            assert rows[uid].expected == 10
            assert_registered_where_stored(view, root, acknowledged)
            replayed = survivor.process.wait_for_record("journal replayed")
            assert replayed["registered"] == 6 and replayed["node"], replayed
            survivor.stop()
    assert journal_files(root) == []


# --- item 12: no file at a final path without a journal entry --------------------------------

#: Bytes a file of the server may grow to in the test below: a journal segment takes about a
#: dozen entries, an instance file (~0.5 KB) fits.
FILE_SIZE_LIMIT = 2048


@pytest.mark.parametrize("duplicates", ["overwrite", "reject"])
def test_a_journal_that_cannot_be_written_leaves_no_file_behind(
    pg: str, tmp_path: Path, duplicates: str
) -> None:
    """Writes past RLIMIT_FSIZE fail with EFBIG (Python ignores SIGXFSZ): the journal's
    appends fail, while the instance files, smaller, are written. Each such instance must be
    refused with nothing at its final path; before, it was renamed into place first, the
    state a kill between the rename and the journal append leaves: a file neither journaled
    nor registered, for ever."""
    root = tmp_path / "storage"
    series = make_series(40)
    env = {"OXIDIP_DUPLICATES": duplicates}
    with Oxidip(root, db=pg, env=env) as server:
        unlimited = resource.prlimit(server.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, unlimited[1]))
        statuses = send(server.port, series.datasets, calling_aet=SENDER)
        refused = [uid for uid, status in statuses.items() if status != 0]
        assert refused and len(refused) < len(statuses), statuses
        assert {statuses[uid] for uid in refused} == {0xA700}
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, unlimited)
        server.kill()
    with Oxidip(root, db=pg, env=env) as server, RegistryView(root, pg) as view:
        on_disk = instances_on_disk(root)
        assert not set(refused) & set(on_disk), "a refused instance left a file"
        view.wait_series(
            lambda rows: sum(r.received for r in rows.values()) == len(on_disk),
            server=server,
        )
        assert set(view.instance_paths()) == set(on_disk)
        # The sender tries again: stored and registered (under reject, too: nothing was there).
        retried = [ds for ds in series.datasets if str(ds.SOPInstanceUID) in refused]
        assert set(send(server.port, retried, calling_aet=SENDER).values()) == {0}
        view.wait_series(counts_are({series.series_instance_uid: 40}, "finalized-unknown"))
        assert set(view.instance_paths()) == set(instances_on_disk(root))
        server.stop()
