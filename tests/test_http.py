"""The HTTP endpoint of ``oxidip serve`` (``OXIDIP_HTTP_PORT``): ``/metrics`` scraped while a
real load runs (``oxidip bench send``, dcmtk's storescu and echoscu), its numbers held against
what was sent; ``/healthz`` going 503 when the database is cut off (a TCP proxy in front of
PostgreSQL), when the storage root cannot take a file, and once a shutdown began, with its
database check bounded and never in registration's way."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oxidip._boundary import Histogram, ReceiverMetrics
from tests.helpers.dicom import write_part10
from tests.helpers.e2e import (
    ADMIN_URL,
    HOST,
    Oxidip,
    make_series,
    postgres_database,
    registration_stalled,
    send,
)
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, Context, RawClient
from tests.helpers.receiver import RunningReceiver
from tests.helpers.senders import storescu
from tests.helpers.tcp_proxy import TcpProxy
from tests.helpers.tools import run_dcmtk

#: Every server of these tests: the endpoint on a free port of the loopback interface.
HTTP_ENV = {"OXIDIP_HTTP_HOST": HOST, "OXIDIP_HTTP_PORT": "0"}


def http_port(server: Oxidip) -> int:
    return int(server.process.wait_for_record("http endpoint listening")["port"])


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of ``GET path``; 4xx and 5xx are answers, not errors."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def health(port: int) -> tuple[int, dict[str, object]]:
    status, body = get(port, "/healthz")
    return status, json.loads(body)


def wait_health(
    port: int,
    predicate: Callable[[int, dict[str, object]], bool],
    what: str,
    timeout: float = 30.0,
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = health(port)
        if predicate(status, body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz never {what} within {timeout} s; last: {status} {body}")
        time.sleep(0.05)


def reasons(body: dict[str, object]) -> list[str]:
    found = body["reasons"]
    assert isinstance(found, list)
    return [str(reason) for reason in found]


@dataclass
class Scrape:
    """One ``/metrics`` page: sample name and labels -> value."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """(le, cumulative count) of a histogram, in order."""
        out = [
            (float(dict(labels)["le"]), value)
            for (sample, labels), value in self.samples.items()
            if sample == f"{name}_bucket"
        ]
        return sorted(out)


def scrape(port: int) -> Scrape:
    status, body = get(port, "/metrics")
    assert status == 200, body
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(samples)


def wait_scrape(port: int, predicate: Callable[[Scrape], bool], what: str) -> Scrape:
    deadline = time.monotonic() + 60
    while True:
        page = scrape(port)
        if predicate(page):
            return page
        if time.monotonic() > deadline:
            raise AssertionError(f"/metrics never showed {what} within 60 s")
        time.sleep(0.05)


#: Counters that may only grow from one scrape to the next.
COUNTERS = (
    "oxidip_associations_total",
    "oxidip_instances_stored_total",
    "oxidip_received_bytes_total",
    "oxidip_store_latency_seconds_count",
    "oxidip_registered_instances_total",
)


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[Oxidip]:
    with Oxidip(tmp_path / "root", env=HTTP_ENV | {"OXIDIP_EVENT_QUEUE": "100"}) as server:
        yield server


def test_metrics_scraped_during_a_load_match_what_was_sent(sqlite_server: Oxidip) -> None:
    """4 associations of ``oxidip bench send``. The test holds the registry's write lock
    first, so the load stops half way (registration waits, the event queue fills, the
    associations wait for room): a scrape then sees the backlogs; released, the load ends
    and the last scrape adds up to the sender's report, byte for byte."""
    server, port = sqlite_server, http_port(sqlite_server)
    instances, associations = 2000, 4
    assert scrape(port)("oxidip_instances_stored_total") == 0
    assert get(port, "/nothing")[0] == 404
    pages: list[Scrape] = []
    with registration_stalled(server.root, None):
        load = subprocess.Popen(
            [sys.executable, "-m", "oxidip", "bench", "send", "--port", str(server.port)]
            + ["--associations", str(associations), "--instances", str(instances)]
            + ["--size", "4096", "--timeout", "120", "--json"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            # Stalled: the queue is full (100 events, and tasks waiting for room) and every
            # stored instance is journaled, none registered.
            stalled = wait_scrape(
                port,
                lambda page: (
                    page("oxidip_event_queue_backlog") >= 100
                    and page("oxidip_journal_backlog") == page("oxidip_instances_stored_total")
                ),
                "a full event queue",
            )
            pages.append(stalled)
            assert 0 < stalled("oxidip_instances_stored_total") < instances
            assert stalled("oxidip_registered_instances_total") == 0
            assert stalled("oxidip_associations_open") == associations
        except BaseException:
            load.kill()
            raise
    out, _ = load.communicate(timeout=120)
    assert load.returncode == 0, out
    report = json.loads(out)
    assert report["instances"] == instances and report["failures"] == 0
    final = wait_scrape(
        port,
        lambda page: (
            page("oxidip_registered_instances_total") == instances
            and page("oxidip_journal_backlog") == 0
            and page("oxidip_associations_open") == 0
        ),
        "every instance registered",
    )
    pages.append(final)
    for name in COUNTERS:
        values = [page(name) for page in pages]
        assert values == sorted(values), (name, values)
    assert final("oxidip_instances_stored_total") == instances
    assert final("oxidip_received_bytes_total") == report["bytes"]
    assert final("oxidip_associations_total") == associations
    assert final("oxidip_associations_closed_total", outcome="released") == associations
    assert final("oxidip_event_queue_backlog") == 0
    assert final("oxidip_listening") == 1
    buckets = final.buckets("oxidip_store_latency_seconds")
    assert buckets[-1] == (float("inf"), instances)
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    assert final("oxidip_store_latency_seconds_count") == instances
    assert final("oxidip_store_latency_seconds_sum") > 0
    # The stall is in the lag of the batch registered first.
    assert final("oxidip_registration_lag_seconds") > 0
    assert final("oxidip_database_reachable") == 1
    assert final("oxidip_cfind_lookups_total", outcome="unknown") == associations
    assert final("oxidip_hook_backlog") == 0 and final("oxidip_nats_backlog") == 0
    assert final("oxidip_unreplayed_journal_entries") == 0
    assert final("process_open_fds") > 0


def test_metrics_count_failures_by_status_and_refusals_by_reason(tmp_path: Path) -> None:
    """dcmtk: storescu sends one file twice under OXIDIP_DUPLICATES=reject (0000, then
    0111); echoscu calls with an AE title not allowed (refused: calling-aet), then while the
    only slot is held (refused: over-limit)."""
    env = HTTP_ENV | {
        "OXIDIP_DUPLICATES": "reject",
        "OXIDIP_ALLOWED_CALLING_AETS": "STORESCU",
        "OXIDIP_MAX_ASSOCIATIONS": "1",
    }
    with Oxidip(tmp_path / "strict", env=env) as server:
        port = http_port(server)
        dicom_file = tmp_path / "one.dcm"
        write_part10(dicom_file, make_series(1).datasets[0])
        sent = storescu(HOST, server.port, [dicom_file, dicom_file])
        assert sent.returncode == 0, sent
        refused = run_dcmtk(
            ["echoscu", "-aet", "STRANGER", "-aec", "OXIDIP", HOST, str(server.port)]
        )
        assert refused.returncode != 0
        with RawClient(HOST, server.port) as holder:
            holder.associate_ok(
                calling="STORESCU",
                called="OXIDIP",
                contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])],
            )
            over = run_dcmtk(
                ["echoscu", "-aet", "STORESCU", "-aec", "OXIDIP", HOST, str(server.port)]
            )
            assert over.returncode != 0
            holder.release()
        page = wait_scrape(
            port,
            lambda page: (
                page("oxidip_associations_open") == 0 and page("oxidip_associations_total") == 3
            ),
            "three associations ended",
        )
        assert page("oxidip_instances_stored_total") == 1
        assert page("oxidip_instances_failed_total", status="0111") == 1
        assert page("oxidip_associations_refused_total", reason="calling-aet") == 1
        assert page("oxidip_associations_refused_total", reason="over-limit") == 1
        assert page("oxidip_associations_refused_total", reason="called-aet") == 0
        assert page("oxidip_associations_closed_total", outcome="rejected") == 1
        assert page("oxidip_associations_closed_total", outcome="released") == 2
        assert page("oxidip_store_latency_seconds_count") == 2


#: A hook that holds every call until the file ``HOOK_GATE`` exists.
GATED_HOOKS = """
import os
import time

def on_instance(event):
    while not os.path.exists(os.environ["HOOK_GATE"]):
        time.sleep(0.01)
"""


def test_metrics_count_the_waits_of_every_work_queue(tmp_path: Path) -> None:
    """A hook that holds its calls, behind a queue of one call: the first call runs (held),
    the second waits in the queue, the third makes registration wait for room. The waits
    show per work queue; once the hook is let go, every instance is registered."""
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "gated_hooks.py").write_text(GATED_HOOKS)
    gate = tmp_path / "gate"
    env = HTTP_ENV | {
        "OXIDIP_HOOKS": "gated_hooks",
        "OXIDIP_HOOK_QUEUE": "1",
        "PYTHONPATH": str(tmp_path / "hooks"),
        "HOOK_GATE": str(gate),
    }
    queues = ("registration", "cfind", "hooks", "nats")
    with Oxidip(tmp_path / "root", env=env) as server:
        port = http_port(server)
        idle = scrape(port)
        assert [idle("oxidip_work_queue_waits_total", queue=name) for name in queues] == [0] * 4
        statuses = send(server.port, make_series(5).datasets, calling_aet="GATED")
        assert set(statuses.values()) == {0}
        held = wait_scrape(
            port,
            lambda page: (
                page("oxidip_work_queue_waits_total", queue="hooks") >= 1
                and page("oxidip_hook_backlog") == 1
            ),
            "registration waiting for the hooks",
        )
        assert held("oxidip_registered_instances_total") >= 3
        gate.touch()
        done = wait_scrape(
            port,
            lambda page: (
                page("oxidip_registered_instances_total") == 5
                and page("oxidip_hook_backlog") == 0
                and page("oxidip_registration_backlog") == 0
            ),
            "every instance registered",
        )
        for name in queues:
            waits = done("oxidip_work_queue_waits_total", queue=name)
            assert (waits >= 1) if name == "hooks" else (waits == 0), (name, waits)
            assert done("oxidip_work_queue_refused_total", queue=name) == 0
            assert done("oxidip_work_queue_dropped_total", queue=name) == 0
        server.stop()


def test_receiver_metrics_struct_matches_the_rust_snapshot(receiver: RunningReceiver) -> None:
    """``_boundary.ReceiverMetrics`` mirrors ``server::metrics::MetricsSnapshot`` field for
    field (msgspec would silently drop a field only Rust has)."""
    raw = msgspec.msgpack.decode(receiver.rx._core.metrics())
    assert list(raw) == list(ReceiverMetrics.__struct_fields__)
    assert list(raw["store_latency"]) == list(Histogram.__struct_fields__)
    metrics = receiver.rx.metrics()
    assert metrics.listening and metrics.instances_stored == 0
    assert len(metrics.store_latency.counts) == len(metrics.store_latency.bounds) + 1


def _postgres_target() -> tuple[str, int]:
    parts = urllib.parse.urlsplit(ADMIN_URL)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def test_healthz_goes_503_while_the_database_is_cut_off(tmp_path: Path) -> None:
    """PostgreSQL behind a proxy: ready; the proxy cuts every connection and closes its
    port: 503 naming the database (and, once instances wait for registration, the journal
    backlog); the proxy back: the database check passes again."""
    env = HTTP_ENV | {"OXIDIP_HEALTH_MAX_JOURNAL_BACKLOG": "3"}
    with (
        postgres_database() as url,
        TcpProxy(_postgres_target()) as proxy,
        Oxidip(tmp_path, db=proxy.url(url), env=env) as server,
    ):
        port = http_port(server)
        ready = wait_health(port, lambda status, _: status == 200, "ready")
        assert ready == {
            "status": "ready",
            "reasons": [],
            "listening": True,
            "storage": "ok",
            "database": "ok",
            "journal_backlog": 0,
        }
        proxy.cut()
        down = wait_health(
            port,
            lambda status, body: (
                status == 503 and any(r.startswith("database: ") for r in reasons(body))
            ),
            "503 for the database",
        )
        assert down["status"] == "not ready"
        assert down["database"] != "ok" and down["storage"] == "ok"
        assert down["listening"] is True
        # Stored and acknowledged (0000: the journal has them), not registered.
        statuses = send(server.port, make_series(5).datasets, calling_aet="HEALTH")
        assert set(statuses.values()) == {0}
        backlog = wait_health(
            port,
            lambda _, body: any(r.startswith("journal_backlog: 5 ") for r in reasons(body)),
            "503 for the journal backlog",
        )
        assert backlog["journal_backlog"] == 5
        proxy.restore()
        wait_health(port, lambda _, body: body["database"] == "ok", "database ok again")


def test_healthz_database_check_is_bounded_and_leaves_registration_alone(
    tmp_path: Path,
) -> None:
    """New connections to the database hang (the proxy accepts them and forwards nothing),
    while the registry's pooled connections still work: /healthz answers 503 within its
    bound, and instances sent meanwhile are registered all the same."""
    with (
        postgres_database() as url,
        TcpProxy(_postgres_target()) as proxy,
        Oxidip(tmp_path, db=proxy.url(url), env=HTTP_ENV) as server,
    ):
        port = http_port(server)
        wait_health(port, lambda status, _: status == 200, "ready")
        proxy.black_hole()
        started = time.monotonic()
        status, body = health(port)
        waited = time.monotonic() - started
        assert status == 503, body
        assert reasons(body) == [f"database: {body['database']}"]
        # The check gives up after 2 s; 10 s leaves room for a loaded machine, and is far
        # below what an unbounded connect would take (forever here).
        assert waited < 10, waited
        statuses = send(server.port, make_series(3).datasets, calling_aet="HEALTH")
        assert set(statuses.values()) == {0}
        wait_scrape(
            port,
            lambda page: (
                page("oxidip_registered_instances_total") == 3
                and page("oxidip_journal_backlog") == 0
            ),
            "the instances registered",
        )
        # Still cut off for new connections, still not ready: the check does not hang.
        assert health(port)[0] == 503


def test_healthz_goes_503_while_storage_cannot_take_a_file(sqlite_server: Oxidip) -> None:
    """The directory every instance starts in is replaced by a file (root cannot chmod its
    way out of its own permissions): 503 naming the storage; the directory back: ready."""
    port = http_port(sqlite_server)
    wait_health(port, lambda status, _: status == 200, "ready")
    temp_dir = sqlite_server.root / ".oxidip-tmp"
    shutil.rmtree(temp_dir)
    temp_dir.write_text("not a directory")
    body = wait_health(
        port,
        lambda status, body: (
            status == 503 and any(r.startswith("storage: ") for r in reasons(body))
        ),
        "503 for the storage",
    )
    assert ".oxidip-tmp" in str(body["storage"])
    assert body["database"] == "ok" and body["listening"] is True
    temp_dir.unlink()
    temp_dir.mkdir()
    wait_health(port, lambda status, _: status == 200, "ready again")


def test_healthz_goes_503_once_a_shutdown_began(sqlite_server: Oxidip) -> None:
    """SIGTERM while an association is open: the listener stops accepting at once and
    /healthz says so (a load balancer stops sending) while the association finishes."""
    port = http_port(sqlite_server)
    wait_health(port, lambda status, _: status == 200, "ready")
    with RawClient(HOST, sqlite_server.port) as client:
        client.associate_ok(
            calling="HEALTH",
            called="OXIDIP",
            contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])],
        )
        sqlite_server.process.proc.send_signal(signal.SIGTERM)
        body = wait_health(port, lambda status, _: status == 503, "503 while stopping")
        assert body["listening"] is False
        assert any(r.startswith("listening: ") for r in reasons(body))
        client.release()
    assert sqlite_server.process.proc.wait(30) == 0


def test_http_port_in_use_stops_serve_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        taken = busy.getsockname()[1]
        env = HTTP_ENV | {"OXIDIP_HTTP_PORT": str(taken)}
        with Oxidip(tmp_path, env=env, wait=False) as server:
            assert server.process.proc.wait(30) == 1
            record = server.process.wait_for_record("cannot start")
            assert f"HTTP endpoint {HOST}:{taken}" in str(record["error"])
