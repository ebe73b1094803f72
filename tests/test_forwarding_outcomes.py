"""What a destination answers, classified (PS3.4 C.4.2; README: Forwarding) and visible in
``oxidip queue --json`` with its last error in words. The destinations are pynetdicom SCPs
answering A700 (out of resources: transient, the job waits for its next attempt), C000 and
0122 (refused for good: the items fail, the job is done), B000 (a warning: delivered,
recorded), rejecting the association (permanent: dead), or aborting it mid-series
(transient: tried again, only the rest resent)."""

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.e2e import Oxidip, make_series, send
from tests.helpers.forwarding import (
    DestinationScp,
    Job,
    destination,
    forward_env,
    wait_jobs,
    write_routes,
)

SENDER = "MODALITY"
INSTANCES = 3


def forward_to(tmp_path: Path, scp: DestinationScp, **env: str) -> Oxidip:
    routes = write_routes(
        tmp_path / "routes.toml",
        {"dest": destination("DEST", scp.port)},
        [{"name": "to-dest", "on": "series-finalized", "incomplete": "send", "to": ["dest"]}],
    )
    return Oxidip(tmp_path / "storage", env=forward_env(routes, **env))


def one_job(predicate: Callable[[Job], bool]) -> Callable[[list[Job]], bool]:
    return lambda jobs: len(jobs) == 1 and predicate(jobs[0])


@pytest.mark.parametrize(
    ("status", "state", "words"),
    [
        (0xC000, "done", "C000"),
        (0x0122, "done", "0122"),
    ],
)
def test_refusals_fail_the_items_for_good(
    tmp_path: Path, status: int, state: str, words: str
) -> None:
    s = make_series(INSTANCES, patient_id="REFUSED")
    with DestinationScp(status=status) as scp, forward_to(tmp_path, scp) as server:
        assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
        (job,) = wait_jobs(
            tmp_path / "storage",
            None,
            one_job(lambda j: j["state"] == state),
            log=server.output,
        )
        assert (job["delivered"], job["failed"], job["total"]) == (0, INSTANCES, INSTANCES), job
        assert job["attempts"] == 1, job
        assert words in job["last_error"], job
        # Never tried again: each instance arrived once.
        assert scp.counts() == dict.fromkeys(s.sop_instance_uids, 1)
        server.stop()


def test_a_warning_counts_as_delivered_and_is_recorded(tmp_path: Path) -> None:
    s = make_series(INSTANCES, patient_id="WARNED")
    with DestinationScp(status=0xB000) as scp, forward_to(tmp_path, scp) as server:
        assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
        (job,) = wait_jobs(
            tmp_path / "storage", None, one_job(lambda j: j["state"] == "done"), log=server.output
        )
        assert (job["warnings"], job["failed"], job["total"]) == (INSTANCES, 0, INSTANCES), job
        assert scp.counts() == dict.fromkeys(s.sop_instance_uids, 1)
        server.stop()


def test_out_of_resources_is_transient(tmp_path: Path) -> None:
    s = make_series(INSTANCES, patient_id="BUSY")
    with (
        DestinationScp(status=0xA700) as scp,
        forward_to(tmp_path, scp, RETRY_BASE="60", RETRY_MAX="120") as server,
    ):
        assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
        (job,) = wait_jobs(
            tmp_path / "storage",
            None,
            one_job(lambda j: j["state"] == "failed"),
            what="the job waiting for its next attempt",
            log=server.output,
        )
        assert job["next_attempt_at"] is not None and job["attempts"] == 1, job
        assert job["delivered"] == 0 and job["failed"] == 0, job  # nothing lost for good
        assert "A700" in job["last_error"], job
        # The job stopped at the first A700: the rest was not sent.
        assert sum(scp.counts().values()) == 1
        server.stop()


def test_a_rejected_association_is_permanent(tmp_path: Path) -> None:
    s = make_series(INSTANCES, patient_id="REJECTED")
    with DestinationScp(reject=True) as scp, forward_to(tmp_path, scp) as server:
        assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
        (job,) = wait_jobs(
            tmp_path / "storage", None, one_job(lambda j: j["state"] == "dead"), log=server.output
        )
        assert job["attempts"] == 1 and job["delivered"] == 0, job
        assert "rejected" in job["last_error"], job
        assert not scp.arrivals
        server.stop()


def test_an_abort_mid_series_is_retried_with_the_rest_only(tmp_path: Path) -> None:
    s = make_series(5, patient_id="ABORTED")
    with DestinationScp(abort_after=2) as scp, forward_to(tmp_path, scp) as server:
        assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
        failed = server.process.wait_for_record("forwarding failed; it will be tried again")
        assert "abort" in str(failed["error"]), failed
        assert failed["delivered"] == 2, failed
        (job,) = wait_jobs(
            tmp_path / "storage", None, one_job(lambda j: j["state"] == "done"), log=server.output
        )
        assert (job["delivered"], job["total"], job["attempts"]) == (5, 5, 2), job
        # Resent: only what was not delivered (the instance the abort cut, then the rest).
        uids = s.sop_instance_uids
        assert scp.counts() == {**dict.fromkeys(uids, 1), uids[2]: 2}
        server.stop()
