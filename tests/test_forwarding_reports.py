"""What forwarding tells: the hooks ``on_forwarded`` and ``on_forward_failed`` (on the hooks'
worker), NATS ``forward`` messages on ``OXIDIP.forward.{state}.{destination}.{series}``, and
the ``oxidip_forward_*`` metrics, for one series routed to a destination that takes it and
to one that rejects every association (dead at once)."""

import json
import textwrap
import urllib.request
from pathlib import Path

from oxidip.notify import Forward, decode_message, forward_subject
from tests.helpers.e2e import Oxidip, make_series, send
from tests.helpers.forwarding import (
    DestinationScp,
    destination,
    forward_env,
    wait_jobs,
    wait_until,
    write_routes,
)
from tests.helpers.nats import NatsServer, Subscriber

SENDER = "MODALITY"

HOOKS = textwrap.dedent(
    """
    import json
    import os
    import threading

    def _log(kind, job):
        with open(os.environ["FORWARD_HOOK_LOG"], "a") as out:
            line = [kind, job.destination, job.state, job.series_instance_uid, job.delivered,
                    threading.current_thread().name]
            out.write(json.dumps(line) + "\\n")

    def on_forwarded(job):
        _log("forwarded", job)

    def on_forward_failed(job):
        _log("failed", job)
    """
)


def test_hooks_nats_and_metrics_report_job_ends(tmp_path: Path) -> None:
    s = make_series(3, patient_id="REPORTED")
    uid = s.series_instance_uid
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "forward_hooks.py").write_text(HOOKS)
    hook_log = tmp_path / "hooks.log"
    root = tmp_path / "storage"
    with (
        DestinationScp(aet="GOOD") as good,
        DestinationScp(aet="BAD", reject=True) as bad,
        NatsServer() as nats,
        Subscriber(nats.url, "OXIDIP.forward.>") as subscriber,
    ):
        routes = write_routes(
            tmp_path / "routes.toml",
            {"good": destination("GOOD", good.port), "bad": destination("BAD", bad.port)},
            [
                {
                    "name": "both",
                    "on": "series-finalized",
                    "incomplete": "send",
                    "to": ["good", "bad"],
                }
            ],
        )
        env = {
            **forward_env(routes),
            "OXIDIP_HOOKS": "forward_hooks",
            "PYTHONPATH": str(tmp_path / "hooks"),
            "FORWARD_HOOK_LOG": str(hook_log),
            "OXIDIP_NATS_ADDRESS": nats.address,
            "OXIDIP_HTTP_PORT": "0",
        }
        with Oxidip(root, env=env) as server:
            assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
            jobs = wait_jobs(
                root,
                None,
                lambda jobs: sorted(j["state"] for j in jobs) == ["dead", "done"],
                log=server.output,
            )
            wait_until(
                lambda: hook_log.exists() and len(hook_log.read_text().splitlines()) == 2,
                timeout=30,
                what="two hook calls",
            )
            wait_until(lambda: len(subscriber.messages) >= 2, timeout=30, what="two messages")

            http = server.process.wait_for_record("http endpoint listening")
            url = f"http://127.0.0.1:{http['port']}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                metrics = response.read().decode()
            server.stop()

    calls = sorted(json.loads(line) for line in hook_log.read_text().splitlines())
    assert [call[:5] for call in calls] == [
        ["failed", "bad", "dead", uid, 0],
        ["forwarded", "good", "done", uid, 3],
    ]
    assert {call[5] for call in calls} == {"oxidip-hooks"}, "on the hooks' worker thread"

    by_subject = {m.subject: decode_message(m.data) for m in subscriber.messages}
    assert set(by_subject) == {
        forward_subject("OXIDIP", "done", "good", uid),
        forward_subject("OXIDIP", "dead", "bad", uid),
    }, by_subject
    for message in by_subject.values():
        assert isinstance(message, Forward), message
        assert message.series_instance_uid == uid and message.calling_aet == SENDER
        assert message.job_id in {j["id"] for j in jobs}
    done = by_subject[forward_subject("OXIDIP", "done", "good", uid)]
    assert isinstance(done, Forward) and (done.delivered, done.total) == (3, 3)
    dead = by_subject[forward_subject("OXIDIP", "dead", "bad", uid)]
    assert isinstance(dead, Forward) and "rejected" in dead.last_error

    assert 'oxidip_forward_items_total{result="delivered"} 3.0' in metrics, metrics
    assert 'oxidip_forward_job_attempts_total{state="done"} 1.0' in metrics, metrics
    assert 'oxidip_forward_job_attempts_total{state="dead"} 1.0' in metrics, metrics
