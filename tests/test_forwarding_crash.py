"""Forwarding survives its process: ``kill -9`` while forwarding, a restart, every job
completes and only the instance in flight at the kill arrives twice; SIGTERM while
forwarding puts the job back in the queue, its delivered instances kept; two ``oxidip serve``
processes on one PostgreSQL database receiving the same series forward each instance once.

Arrivals are counted per SOP Instance UID by a pynetdicom destination."""

import threading
from collections.abc import Callable
from pathlib import Path

from tests.helpers.e2e import Oxidip, make_series, postgres_database, send
from tests.helpers.forwarding import (
    DestinationScp,
    Job,
    destination,
    forward_env,
    queue_jobs,
    wait_jobs,
    wait_until,
    write_routes,
)
from tests.helpers.process import clean_env, run_oxidip

SENDER = "MODALITY"
#: The engine's wait for an answer, longer than the tests hold one (a slow machine must not
#: turn "in flight" into "timed out").
HELD_LONGER = "30"


def routes_to(tmp_path: Path, scp: DestinationScp, max_associations: int = 1) -> Path:
    return write_routes(
        tmp_path / "routes.toml",
        {"dest": destination(scp.aet, scp.port, max_associations=max_associations)},
        [{"name": "to-dest", "on": "series-finalized", "incomplete": "send", "to": ["dest"]}],
    )


def everything_delivered(instances: int) -> Callable[[list[Job]], bool]:
    def check(jobs: list[Job]) -> bool:
        return (
            bool(jobs)
            and all(j["state"] == "done" for j in jobs)
            and (sum(j["delivered"] for j in jobs) == instances)
        )

    return check


def test_kill_9_while_forwarding_then_restart_resends_only_what_was_in_flight(
    tmp_path: Path,
) -> None:
    series = [make_series(4, patient_id="KILL1"), make_series(3, patient_id="KILL2")]
    uids = [uid for s in series for uid in s.sop_instance_uids]
    root = tmp_path / "storage"
    # The third instance to arrive is held unanswered: in flight when oxidip is killed.
    with DestinationScp(hold_after=2) as scp:
        env = forward_env(routes_to(tmp_path, scp), LEASE="2", TIMEOUT=HELD_LONGER)
        with Oxidip(root, env=env) as server:
            for s in series:
                assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
            wait_until(scp.holding.is_set, timeout=30, what="the third instance in flight")
            # The first two are recorded as delivered before the kill.
            wait_jobs(
                root,
                None,
                lambda jobs: sum(j["delivered"] for j in jobs) == 2,
                log=server.output,
            )
            server.kill()
        in_flight = scp.arrivals[2].sop_instance_uid
        scp.release.set()

        with Oxidip(root, env=env) as restarted:
            # The dead process's lease expires; this one claims the job and sends the rest.
            jobs = wait_jobs(
                root, None, everything_delivered(len(uids)), timeout=60, log=restarted.output
            )
            assert len(jobs) == len(series), jobs
            restarted.stop()
        counts = scp.counts()
        assert set(counts) == set(uids)
        assert {uid for uid, n in counts.items() if n > 1} == {in_flight}, counts
        assert counts[in_flight] == 2, counts


def test_sigterm_while_forwarding_puts_the_job_back_then_the_rest_is_sent(
    tmp_path: Path,
) -> None:
    s = make_series(4, patient_id="TERM")
    root = tmp_path / "storage"
    with DestinationScp(hold_after=2) as scp:
        # The held instance gets the 1 s left of the shutdown, then its association is aborted.
        env = {
            **forward_env(routes_to(tmp_path, scp), TIMEOUT=HELD_LONGER),
            "OXIDIP_SHUTDOWN_TIMEOUT": "1",
        }
        with Oxidip(root, env=env) as server:
            assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
            wait_until(scp.holding.is_set, timeout=30, what="the third instance in flight")
            wait_jobs(root, None, lambda jobs: jobs[0]["delivered"] == 2, log=server.output)
            server.stop()
            server.process.wait_for_record("forwarding interrupted; the job waits in the queue")
        scp.release.set()
        (job,) = queue_jobs(root, None)
        assert (job["state"], job["delivered"], job["total"]) == ("pending", 2, 4), job
        assert job["attempts"] == 0, job  # a shutdown is no failed attempt

        with Oxidip(root, env=env) as restarted:
            (job,) = wait_jobs(root, None, everything_delivered(4), log=restarted.output)
            assert job["attempts"] == 1, job
            restarted.stop()
        uids = s.sop_instance_uids
        assert scp.counts() == {**dict.fromkeys(uids, 1), uids[2]: 2}


def test_a_running_job_cancelled_by_hand_stops_and_a_retry_sends_the_rest(
    tmp_path: Path,
) -> None:
    s = make_series(4, patient_id="CANCEL")
    root = tmp_path / "storage"
    with DestinationScp(hold_after=2) as scp:
        env = forward_env(routes_to(tmp_path, scp), LEASE="1.5", TIMEOUT=HELD_LONGER)
        with Oxidip(root, env=env) as server:
            assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
            wait_until(scp.holding.is_set, timeout=30, what="the third instance in flight")
            (job,) = wait_jobs(root, None, lambda jobs: jobs[0]["delivered"] == 2)
            env_cli = clean_env(OXIDIP_FILES_ROOT=str(root))
            cancelled = run_oxidip("queue", "cancel", str(job["id"]), env=env_cli)
            assert cancelled.returncode == 0, cancelled.stderr
            # At its next lease renewal the process sees the job is no longer its own and
            # aborts the association.
            server.process.wait_for_record(
                "forwarding job no longer ours: aborted", job_id=job["id"]
            )
            server.process.wait_for_record("forwarding job stopped: no longer ours")
            scp.release.set()
            (job,) = queue_jobs(root, None)
            assert (job["state"], job["delivered"]) == ("cancelled", 2), job

            retried = run_oxidip("queue", "retry", str(job["id"]), env=env_cli)
            assert retried.returncode == 0, retried.stderr
            (job,) = wait_jobs(root, None, everything_delivered(4), log=server.output)
            server.stop()
        uids = s.sop_instance_uids
        assert scp.counts() == {**dict.fromkeys(uids, 1), uids[2]: 2}


def test_two_processes_on_one_database_forward_each_instance_once(tmp_path: Path) -> None:
    """Both processes register the same instances at the same time: a series-finalized rule
    and an instance rule each forward every instance once."""
    series = [make_series(4, patient_id=f"TWO{n}") for n in range(3)]
    uids = [uid for s in series for uid in s.sop_instance_uids]
    with postgres_database() as db, DestinationScp() as archive, DestinationScp() as stream:
        routes = write_routes(
            tmp_path / "routes.toml",
            {
                "archive": destination(archive.aet, archive.port, max_associations=2),
                "stream": destination(stream.aet, stream.port, max_associations=2),
            },
            [
                {"name": "finalized", "on": "series-finalized", "to": ["archive"]},
                {"name": "streamed", "on": "instance", "to": ["stream"]},
            ],
        )
        env = forward_env(routes)
        with (
            Oxidip(tmp_path / "a", db=db, env=env) as first,
            Oxidip(tmp_path / "b", db=db, env=env) as second,
        ):
            # Every series sent to both processes at once, by the same sender.
            errors: list[BaseException] = []

            def deliver(server: Oxidip) -> None:
                try:
                    for s in series:
                        statuses = send(server.port, s.datasets, calling_aet=SENDER)
                        assert set(statuses.values()) == {0}, statuses
                except BaseException as error:  # noqa: BLE001 - reported below
                    errors.append(error)

            threads = [threading.Thread(target=deliver, args=(s,)) for s in (first, second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert not errors, errors

            def log() -> str:
                return f"first:\n{first.output()}\nsecond:\n{second.output()}"

            jobs = wait_jobs(tmp_path / "a", db, everything_delivered(2 * len(uids)), log=log)
            for rule in ("finalized", "streamed"):
                assert sum(j["delivered"] for j in jobs if j["rule"] == rule) == len(uids), jobs
            first.stop()
            second.stop()
        assert archive.counts() == dict.fromkeys(uids, 1)
        assert stream.counts() == dict.fromkeys(uids, 1)
