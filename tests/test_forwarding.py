"""Forwarding end to end with dcmtk's ``storescp +B`` as the destination: series forwarded
byte for byte, one association each; an ``instance`` rule that forwards while the sender is
still sending; a destination down, then up (backoff), and one held by the circuit breaker
until its C-ECHO passes.

Every test runs ``oxidip serve`` as a subprocess with an ``OXIDIP_ROUTES`` file and short
retry delays, and waits on ``oxidip queue --json`` or the destination with a deadline."""

from pathlib import Path

from pydicom.dataset import Dataset

from tests.helpers.dicom import encode_dataset, read_part10, write_part10
from tests.helpers.e2e import Oxidip, final_path, make_series, send, series_json
from tests.helpers.forwarding import (
    HOST,
    Job,
    Storescp,
    all_done,
    destination,
    forward_env,
    wait_jobs,
    wait_until,
    write_routes,
)
from tests.helpers.nats import free_port
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, Context, RawClient
from tests.helpers.senders import storescu

SENDER = "MODALITY"
FINALIZED_RULE = {
    "name": "all-to-archive",
    "on": "series-finalized",
    "incomplete": "send",
    "to": ["archive"],
}


def archive_routes(tmp_path: Path, port: int, rule: dict[str, object] = FINALIZED_RULE) -> Path:
    return write_routes(tmp_path / "routes.toml", {"archive": destination("ARCHIVE", port)}, [rule])


def delivered_everything(jobs: list[Job], instances: int) -> bool:
    return (
        bool(jobs)
        and all(j["state"] == "done" for j in jobs)
        and (sum(j["delivered"] for j in jobs) == instances)
    )


def test_series_forwarded_byte_for_byte_each_on_one_association(tmp_path: Path) -> None:
    series = [make_series(count, patient_id="FWD") for count in (3, 5, 4)]
    root = tmp_path / "storage"
    with Storescp(tmp_path / "archive") as archive:
        routes = archive_routes(tmp_path, archive.port)
        with Oxidip(root, env=forward_env(routes)) as server:
            for s in series[:2]:  # oxidip's own raw requestor (exact statuses)
                assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
            files = []  # and dcmtk's storescu
            for ds in series[2].datasets:
                files.append(tmp_path / "to-send" / f"{ds.SOPInstanceUID}.dcm")
                files[-1].parent.mkdir(exist_ok=True)
                write_part10(files[-1], ds)
            result = storescu(HOST, server.port, files, calling_aet=SENDER, timeout=60)
            assert result.returncode == 0, result.stderr

            jobs = wait_jobs(root, None, all_done(3), log=server.output)
            assert {j["series_instance_uid"] for j in jobs} == {
                s.series_instance_uid for s in series
            }
            for job in jobs:
                assert (job["rule"], job["destination"], job["attempts"]) == (
                    "all-to-archive",
                    "archive",
                    1,
                ), job
                assert job["last_error"] == "", job
            server.stop()

        received = archive.files()
        for s in series:
            for ds in s.datasets:
                uid = str(ds.SOPInstanceUID)
                assert uid in received, f"{uid} never reached storescp"
                forwarded = read_part10(received[uid]).dataset
                stored = read_part10(final_path(root, SENDER, ds)).dataset
                assert forwarded == stored, f"{uid}: the data set changed on the way"
                if s is not series[2]:  # sent as encode_dataset encodes it
                    assert forwarded == encode_dataset(ds), uid
        # One association per series, carrying the whole series.
        series_of = {uid: s.series_instance_uid for s in series for uid in s.sop_instance_uids}
        associations = archive.associations()
        assert len(associations) == len(series), associations
        for uids in associations:
            assert len({series_of[uid] for uid in uids}) == 1, uids
        assert sorted(sorted(uids) for uids in associations) == sorted(
            sorted(s.sop_instance_uids) for s in series
        )

    # What `oxidip series --json` says of each series: where it was forwarded.
    for line in series_json(root, None):
        count = next(len(s) for s in series if s.series_instance_uid == line["series_instance_uid"])
        summaries = [
            {key: f[key] for key in ("destination", "rule", "state", "delivered", "total")}
            for f in line["forwarded"]
        ]
        assert summaries == [
            {
                "destination": "archive",
                "rule": "all-to-archive",
                "state": "done",
                "delivered": count,
                "total": count,
            }
        ], line


def test_instance_rule_forwards_while_the_sender_is_still_sending(tmp_path: Path) -> None:
    s = make_series(6, patient_id="STREAM")
    root = tmp_path / "storage"
    rule = {"name": "stream", "on": "instance", "to": ["archive"]}
    with (
        Storescp(tmp_path / "archive") as archive,
        Oxidip(root, env=forward_env(archive_routes(tmp_path, archive.port, rule))) as server,
    ):
        first: Dataset = s.datasets[0]
        with RawClient(HOST, server.port, timeout=30) as client:
            client.associate_ok(
                calling=SENDER,
                called="OXIDIP",
                contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])],
            )
            for number, ds in enumerate(s.datasets, start=1):
                uid = str(ds.SOPInstanceUID)
                rsp = client.c_store(
                    1, SECONDARY_CAPTURE, uid, encode_dataset(ds), message_id=number
                )
                assert rsp.status == 0, rsp
                if ds is first:
                    # The association stays open until the first instance is at the
                    # destination: forwarded while the sender still sends.
                    wait_until(
                        lambda: str(first.SOPInstanceUID) in archive.files(),
                        timeout=30,
                        what="first instance forwarded while its association is open",
                    )
            client.release()

        wait_jobs(
            root,
            None,
            lambda jobs: delivered_everything(jobs, len(s)),
            what="every instance forwarded",
            log=server.output,
        )
        assert set(archive.files()) == set(s.sop_instance_uids)
        server.stop()


def test_destination_down_then_up_backs_off_then_delivers(tmp_path: Path) -> None:
    s = make_series(4, patient_id="DOWN")
    root = tmp_path / "storage"
    port = free_port()  # nothing listens there yet
    env = forward_env(archive_routes(tmp_path, port), RETRY_BASE="1", RETRY_MAX="2")
    with Oxidip(root, env=env) as server:
        assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}

        def waiting_for_retry(jobs: list[Job]) -> bool:
            return (
                len(jobs) == 1
                and jobs[0]["state"] == "failed"
                and jobs[0]["next_attempt_at"] is not None
            )

        (job,) = wait_jobs(
            root,
            None,
            waiting_for_retry,
            what="a failed job with its next attempt",
            log=server.output,
        )
        assert job["delivered"] == 0 and job["total"] == len(s), job
        assert "refused" in job["last_error"], job  # in words: connection refused by ...
        assert job["next_attempt_at"] > job["updated_at"], job

        with Storescp(tmp_path / "archive", port=port) as archive:
            (job,) = wait_jobs(root, None, all_done(1), log=server.output)
            assert job["attempts"] >= 2, job
            assert set(archive.files()) == set(s.sop_instance_uids)
        server.stop()


def test_breaker_holds_a_failing_destination_until_its_echo_passes(tmp_path: Path) -> None:
    s = make_series(3, patient_id="HELD")
    root = tmp_path / "storage"
    port = free_port()
    env = forward_env(
        archive_routes(tmp_path, port), RETRY_BASE="0.2", RETRY_MAX="0.5", BREAKER_FAILURES="2"
    )
    with Oxidip(root, env=env) as server:
        assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
        held = server.process.wait_for_record("destination held", destination="archive")
        assert "refused" in str(held["reason"]), held
        (job,) = wait_jobs(
            root, None, lambda jobs: [j["state"] for j in jobs] == ["held"], log=server.output
        )
        assert job["attempts"] == 2, job

        with Storescp(tmp_path / "archive", port=port) as archive:
            server.process.wait_for_record(
                "destination released: it answered C-ECHO, its jobs resume",
                destination="archive",
            )
            wait_jobs(root, None, all_done(1), log=server.output)
            assert set(archive.files()) == set(s.sop_instance_uids)
        server.stop()
