"""End to end, with real processes: ``oxidip serve`` receives series, registers them (SQLite
or PostgreSQL), asks the sending PACS for the expected counts, and every series ends in the
right state with the right counts.

- Orthanc (Debian's ``orthanc``) plays the hospital PACS: series loaded into it through its
  REST API are pushed to oxidip (``/modalities/{name}/store``) while oxidip C-FINDs it.
- With a pynetdicom query SCP (``tests.helpers.query_scp``) as the PACS, dcmtk's storescu and
  a raw DICOM client (``tests.helpers.e2e.send``) send: a series split over two
  associations, instances sent again, an aborted series sent again later, and two oxidip
  processes sharing one PostgreSQL database and storage root, each receiving half of a
  series.

Each test starts its own ``oxidip serve`` and, for PostgreSQL, creates its own database
(``tests.helpers.e2e.postgres_database``). Orthanc and PostgreSQL must be there in CI; elsewhere
their tests are skipped, saying what to install.
"""

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.helpers.dicom import temp_files, write_part10
from tests.helpers.e2e import (
    HOST,
    Oxidip,
    RegistryView,
    Series,
    counts_are,
    describe,
    final_path,
    instances_on_disk,
    journal_files,
    make_series,
    postgres_database,
    send,
    series_json,
)
from tests.helpers.orthanc import OrthancServer
from tests.helpers.query_scp import QueryScp
from tests.helpers.senders import storescu

OUR_AET = "OXIDIP"
MODALITY = "MODALITY"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The registry's connection: None (SQLite under the storage root) or the URL of a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the module (it takes seconds to stop); tests use fresh UIDs and add
    the oxidip they start as a modality."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def check_storage(root: Path, view: RegistryView, calling_aet: str, series: list[Series]) -> None:
    """Every instance of ``series`` is registered at its final path, which holds it; nothing
    else is stored or registered."""
    registered = view.instance_paths()
    expected = {
        str(ds.SOPInstanceUID): str(final_path(root, calling_aet, ds))
        for s in series
        for ds in s.datasets
    }
    assert registered == expected
    on_disk = instances_on_disk(root)
    assert {uid: str(path) for uid, path in on_disk.items()} == expected


def check_clean_stop(*servers: Oxidip) -> None:
    """Stops the servers (SIGTERM, exit status 0): no temp file nor journal is left, and
    nothing was logged at ERROR."""
    for server in servers:
        server.stop()
    for server in servers:
        assert temp_files(server.root) == [], "temp files left after a clean stop"
        assert journal_files(server.root) == [], "journal left after a clean stop"
        assert server.errors() == [], server.output()


# --- Orthanc -------------------------------------------------------------------------------


def test_orthanc_pushes_series_that_end_complete(
    orthanc: OrthancServer, db: str | None, tmp_path: Path
) -> None:
    series = [make_series(size, patient_id="ORTHANC1") for size in (1, 6, 23)]
    for s in series:
        for ds in s.datasets:
            orthanc.upload(part10(ds))
    by_uid = orthanc.series_by_uid()
    for s in series:
        assert len(by_uid[s.series_instance_uid]["Instances"]) == len(s)

    root = tmp_path / "storage"
    pacs = {orthanc.aet: (orthanc.host, orthanc.dicom_port)}
    with Oxidip(root, db=db, pacs=pacs, env={"OXIDIP_SCP_AET": OUR_AET}) as server:
        # Orthanc answers our C-FINDs and pushes to us once we are one of its modalities.
        orthanc.add_modality("oxidip", OUR_AET, HOST, server.port)
        jobs = [
            orthanc.store_series("oxidip", by_uid[s.series_instance_uid]["ID"], synchronous=False)
            for s in series
        ]
        for job_id in (job["ID"] for job in jobs):
            job = orthanc.wait_job(job_id)
            assert job["State"] == "Success", (job, orthanc.log_tail())

        with RegistryView(root, db) as view:
            counts = {s.series_instance_uid: len(s) for s in series}
            rows = view.wait_series(counts_are(counts), server=server, timeout=60)
            for s in series:
                row = rows[s.series_instance_uid]
                assert row.calling_aet == orthanc.aet, describe(row)
                assert row.study_instance_uid == s.study_instance_uid, describe(row)
                assert row.expected_status == "known", describe(row)
                assert row.finalized_at is not None, describe(row)
            assert set(rows) == set(counts), [describe(r) for r in rows.values()]
            check_storage(root, view, orthanc.aet, series)
        check_clean_stop(server)

    # What people and scripts see.
    listed = series_json(root, db, "--aet", orthanc.aet)
    assert sorted(
        (
            line["series_instance_uid"],
            line["study_instance_uid"],
            line["calling_aet"],
            line["expected"],
            line["received"],
            line["state"],
        )
        for line in listed
    ) == sorted(
        (s.series_instance_uid, s.study_instance_uid, orthanc.aet, len(s), len(s), "complete")
        for s in series
    )


# --- a pynetdicom PACS ----------------------------------------------------------------------


def test_series_split_over_two_associations_ends_complete(db: str | None, tmp_path: Path) -> None:
    """The first part with dcmtk's storescu, the rest in a second association."""
    s = make_series(10)
    uid = s.series_instance_uid
    root = tmp_path / "storage"
    files = []
    for ds in s.datasets[:4]:
        path = tmp_path / "to-send" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(exist_ok=True)
        write_part10(path, ds)
        files.append(path)
    with (
        QueryScp({uid: len(s)}, aet=MODALITY) as pacs,
        Oxidip(root, db=db, pacs={MODALITY: (pacs.host, pacs.port)}) as server,
        RegistryView(root, db) as view,
    ):
        result = storescu(HOST, server.port, files, calling_aet=MODALITY, timeout=60)
        assert result.returncode == 0, result.stderr
        # The association ended with 4 of 10: incomplete, until the rest comes.
        rows = view.wait_series(counts_are({uid: 4}, "incomplete"), server=server)
        assert rows[uid].expected == 10, describe(rows[uid])

        rest = send(server.port, s.datasets[4:], calling_aet=MODALITY)
        assert set(rest.values()) == {0}, rest
        view.wait_series(counts_are({uid: 10}), server=server)
        check_storage(root, view, MODALITY, [s])
        assert pacs.finds == 1, "one C-FIND per series"
        check_clean_stop(server)


def barrier(server: Oxidip, view: RegistryView) -> None:
    """Returns once everything the server received before is registered: events are
    handled in order, so once a fresh series sent now is finalized, the earlier ones were
    handled too."""
    marker = make_series(1, patient_id="BARRIER")
    assert set(send(server.port, marker.datasets, calling_aet="BARRIER").values()) == {0}
    view.wait_series(
        counts_are({marker.series_instance_uid: 1}, "finalized-unknown"), server=server
    )


def test_instances_sent_again_count_once(db: str | None, tmp_path: Path) -> None:
    s = make_series(8)
    uid = s.series_instance_uid
    root = tmp_path / "storage"
    with (
        QueryScp({uid: len(s)}, aet=MODALITY) as pacs,
        Oxidip(root, db=db, pacs={MODALITY: (pacs.host, pacs.port)}) as server,
        RegistryView(root, db) as view,
    ):
        # The same instance twice in one association, then everything.
        statuses = send(server.port, [s.datasets[0], s.datasets[0]], calling_aet=MODALITY)
        assert set(statuses.values()) == {0}, statuses
        statuses = send(server.port, s.datasets, calling_aet=MODALITY)
        assert set(statuses.values()) == {0}, statuses
        view.wait_series(counts_are({uid: 8}), server=server)

        # Some again, in a new association, after the series was complete.
        again = [s.datasets[i] for i in (0, 3, 7, 3)]
        statuses = send(server.port, again, calling_aet=MODALITY)
        assert set(statuses.values()) == {0}, statuses
        barrier(server, view)
        rows = view.series()
        assert (rows[uid].state, rows[uid].received, rows[uid].expected) == (
            "complete",
            8,
            8,
        ), describe(rows[uid])
        registered = view.instance_paths()
        assert sum(1 for sop in registered if sop in set(s.sop_instance_uids)) == 8
        check_clean_stop(server)


def test_aborted_series_is_incomplete_then_complete_when_sent_again(
    db: str | None, tmp_path: Path
) -> None:
    s = make_series(12)
    uid = s.series_instance_uid
    root = tmp_path / "storage"
    with (
        QueryScp({uid: len(s)}, aet=MODALITY) as pacs,
        Oxidip(root, db=db, pacs={MODALITY: (pacs.host, pacs.port)}) as server,
        RegistryView(root, db) as view,
    ):
        statuses = send(server.port, s.datasets, calling_aet=MODALITY, abort_after=6)
        assert list(statuses.values()) == [0] * 6, statuses
        rows = view.wait_series(counts_are({uid: 6}, "incomplete"), server=server)
        assert rows[uid].expected == 12, describe(rows[uid])

        statuses = send(server.port, s.datasets, calling_aet=MODALITY)
        assert set(statuses.values()) == {0}, statuses
        view.wait_series(counts_are({uid: 12}), server=server)
        check_storage(root, view, MODALITY, [s])
        check_clean_stop(server)


def test_two_processes_on_one_postgresql_each_receiving_half(tmp_path: Path) -> None:
    s = make_series(40)
    uid = s.series_instance_uid
    root = tmp_path / "storage"
    with (
        postgres_database() as db,
        QueryScp({uid: len(s)}, aet=MODALITY) as pacs,
    ):
        address = {MODALITY: (pacs.host, pacs.port)}
        with (
            Oxidip(root, db=db, pacs=address) as one,
            Oxidip(root, db=db, pacs=address) as two,
            RegistryView(root, db) as view,
        ):
            # Interleaved halves, sent at the same time.
            halves = {one.port: s.datasets[0::2], two.port: s.datasets[1::2]}
            results: dict[int, dict[str, int | None]] = {}
            errors: list[BaseException] = []

            def push(port: int) -> None:
                try:
                    results[port] = send(port, halves[port], calling_aet=MODALITY)
                except BaseException as error:  # noqa: BLE001 - reported below
                    errors.append(error)

            threads = [threading.Thread(target=push, args=(port,)) for port in halves]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert not errors, errors
            for port, statuses in results.items():
                assert list(statuses.values()) == [0] * 20, (port, statuses)

            rows = view.wait_series(counts_are({uid: 40}), server=one)
            assert list(rows) == [uid], [describe(r) for r in rows.values()]
            check_storage(root, view, MODALITY, [s])
            check_clean_stop(one, two)
