"""PostgreSQL going away under a running ``oxidip serve`` (issue 9, item 13): a TCP proxy
between oxidip and PostgreSQL (``tests.helpers.tcp_proxy``, what a user did with socat) is
cut while dcmtk's storescu and raw DICOM clients send, then restored.

- ``test_outage_loses_nothing``: during the outage oxidip keeps answering and logging
  associations, logs the outage once; once restored, every acknowledged instance is
  registered exactly once, series end complete, the end of the outage is logged once.
- ``test_full_backlog_pushes_back_on_the_sender``: with a tiny registration backlog and event
  queue, a sender is held (no more answers) while the database is away, and finishes after.
- ``test_ack_registered_answers_a700_during_an_outage``: with ``OXIDIP_ACK=registered`` a
  sender gets A700 after ``OXIDIP_REGISTRATION_TIMEOUT``, never a hang; success again once
  the database is back, and the refused instances are registered too (stored, journaled).
- ``test_sigterm_during_an_outage``: exits within ``OXIDIP_SHUTDOWN_TIMEOUT`` with one line
  saying what stays journaled, no traceback; the next start registers it. With
  ``OXIDIP_ACK=registered`` a sender waiting on the registration is answered at once.

And NATS, a side channel, unreachable when ``oxidip serve`` starts (item 14):
``test_nats_unreachable_at_start`` starts, warns, receives, and publishes once a nats-server
comes up on the configured port.
"""

import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from oxidip.notify import Finalized, decode_message
from tests.helpers.dicom import encode_dataset, write_part10
from tests.helpers.e2e import (
    HOST,
    Oxidip,
    RegistryView,
    Series,
    counts_are,
    final_path,
    journal_files,
    make_series,
    postgres_database,
    send,
)
from tests.helpers.nats import NatsServer, Subscriber, free_port
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, Context, RawClient
from tests.helpers.polling import wait_until
from tests.helpers.query_scp import QueryScp
from tests.helpers.senders import storescu
from tests.helpers.tcp_proxy import TcpProxy

MODALITY = "MODALITY"
#: Seconds oxidip may take beyond OXIDIP_SHUTDOWN_TIMEOUT to exit: interpreter teardown on a
#: busy 2-CPU machine, not waiting.
EXIT_SLACK = 2.0


@pytest.fixture
def database() -> Iterator[tuple[str, TcpProxy]]:
    """A fresh database (URL for the test's direct connections) and a proxy to its server."""
    with postgres_database() as url:
        parts = urllib.parse.urlsplit(url)
        with TcpProxy((parts.hostname or HOST, parts.port or 5432)) as proxy:
            yield url, proxy


def messages(server: Oxidip, msg: str) -> list[dict[str, object]]:
    return [record for record in server.process.records() if record.get("msg") == msg]


def part10_files(series: Series, directory: Path) -> list[Path]:
    directory.mkdir(parents=True)
    files = []
    for ds in series.datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        write_part10(path, ds)
        files.append(path)
    return files


def assert_registered_once(root: Path, view: RegistryView, everything: list[Series]) -> None:
    """Every instance of ``everything`` is registered at its final path (the registry keys
    instances by SOP Instance UID, and ``received`` counts the distinct ones)."""
    registered = view.instance_paths()
    expected = {
        str(ds.SOPInstanceUID): str(final_path(root, MODALITY, ds))
        for series in everything
        for ds in series.datasets
    }
    assert registered == expected
    rows = view.series()
    assert {uid: rows[uid].received for uid in rows} == {
        s.series_instance_uid: len(s) for s in everything
    }


class Pusher(threading.Thread):
    """Sends a series on one association (``RawClient``), recording each status as it comes;
    stops at the first failure."""

    def __init__(self, port: int, series: Series) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.series = series
        self.statuses: list[int] = []
        self.answered_at: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with RawClient(HOST, self.port, timeout=60) as client:
                client.associate_ok(
                    calling=MODALITY, contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])]
                )
                for message_id, ds in enumerate(self.series.datasets, start=1):
                    uid = str(ds.SOPInstanceUID)
                    rsp = client.c_store(
                        1, SECONDARY_CAPTURE, uid, encode_dataset(ds), message_id=message_id
                    )
                    self.statuses.append(rsp.status)
                    self.answered_at.append(time.monotonic())
                    if rsp.status != 0:
                        client.abort()
                        return
                client.release()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error


def test_outage_loses_nothing(database: tuple[str, TcpProxy], tmp_path: Path) -> None:
    url, proxy = database
    before, during, later = make_series(10), make_series(30), make_series(20)
    everything = [before, during, later]
    root = tmp_path / "storage"
    counts = {s.series_instance_uid: len(s) for s in everything}
    with (
        QueryScp(counts, aet="PACS") as pacs,
        Oxidip(root, db=proxy.url(url), pacs={MODALITY: (pacs.host, pacs.port)}) as server,
        RegistryView(root, url) as view,
    ):
        result = storescu(
            HOST, server.port, part10_files(before, tmp_path / "a"), calling_aet=MODALITY
        )
        assert result.returncode == 0, result.stderr
        view.wait_series(counts_are({before.series_instance_uid: 10}), server=server)

        proxy.cut()
        for done, (series, name) in enumerate(((during, "b"), (later, "c")), start=2):
            files = part10_files(series, tmp_path / name)
            result = storescu(HOST, server.port, files, calling_aet=MODALITY, timeout=60)
            assert result.returncode == 0, result.stderr
            assert "Store Failed" not in result.stderr, result.stderr
            # The association is logged at once, not after a database timeout.
            wait_until(
                lambda: len(messages(server, "association closed")) == done,  # noqa: B023
                5.0,
                f"association {name} logged",
                interval=0.05,
            )
        # A registration attempt gives up after the pool's 5 s wait for a connection.
        server.process.wait_for_record("registry unreachable", timeout=30)
        assert messages(server, "registry reachable again") == []
        assert set(view.series()) == {before.series_instance_uid}, "nothing registered while cut"

        proxy.restore()
        view.wait_series(counts_are(counts), server=server, timeout=60)
        assert_registered_once(root, view, everything)
        assert len(messages(server, "registry unreachable")) == 1, server.output()
        [end] = messages(server, "registry reachable again")
        print(f"outage as oxidip saw it: {end['outage_seconds']} s, {end['failed_attempts']} tries")
        server.stop()
        assert server.errors() == []
    assert journal_files(root) == []


def test_full_backlog_pushes_back_on_the_sender(
    database: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = database
    series = make_series(60)
    root = tmp_path / "storage"
    env = {"OXIDIP_REGISTRATION_BACKLOG": "4", "OXIDIP_EVENT_QUEUE": "2"}
    with (
        Oxidip(root, db=proxy.url(url), env=env) as server,
        RegistryView(root, url) as view,
    ):
        proxy.cut()
        pusher = Pusher(server.port, series)
        pusher.start()
        server.process.wait_for_record("registration backlog full", timeout=30)
        # The event queue and the association in hand fill up behind the backlog, then the
        # sender is held: no answer for a second, and then none for 2 s more. What was
        # answered is what the backlog, the event queue and the association hold.
        wait_until(
            lambda: time.monotonic() - pusher.answered_at[-1] > 1.0, 20, "held", interval=0.05
        )
        held = len(pusher.statuses)
        assert 4 <= held <= 12, pusher.statuses
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert len(pusher.statuses) == held, "answers came while the backlog was full"
            time.sleep(0.1)

        proxy.restore()
        pusher.join(60)
        assert pusher.error is None, pusher.error
        assert pusher.statuses == [0] * len(series)
        view.wait_series(counts_are({series.series_instance_uid: 60}, "finalized-unknown"))
        assert set(view.instance_paths()) == set(series.sop_instance_uids)
        server.stop()
    assert journal_files(root) == []


def test_ack_registered_answers_a700_during_an_outage(
    database: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = database
    refused, accepted = make_series(3), make_series(3)
    root = tmp_path / "storage"
    env = {"OXIDIP_ACK": "registered", "OXIDIP_REGISTRATION_TIMEOUT": "1"}
    with (
        Oxidip(root, db=proxy.url(url), env=env) as server,
        RegistryView(root, url) as view,
    ):
        proxy.cut()
        started = time.monotonic()
        statuses = send(server.port, refused.datasets, calling_aet=MODALITY, timeout=20)
        assert list(statuses.values()) == [0xA700] * 3
        # Each waited about OXIDIP_REGISTRATION_TIMEOUT, the whole well under the 20 s the
        # client would wait.
        assert time.monotonic() - started < 12
        proxy.restore()
        # Registration resumes within the backoff (at most 5 s) plus a connection.
        server.process.wait_for_record("registry reachable again", timeout=30)
        statuses = send(server.port, accepted.datasets, calling_aet=MODALITY, timeout=20)
        assert list(statuses.values()) == [0] * 3
        # Refused, but stored and journaled: registered once the database answered.
        view.wait_series(
            counts_are(
                {refused.series_instance_uid: 3, accepted.series_instance_uid: 3},
                "finalized-unknown",
            ),
            server=server,
        )
        assert_registered_once(root, view, [refused, accepted])
        server.stop()
    assert journal_files(root) == []


@pytest.mark.parametrize("ack", ["stored", "registered"])
def test_sigterm_during_an_outage(database: tuple[str, TcpProxy], ack: str, tmp_path: Path) -> None:
    url, proxy = database
    before, during = make_series(5), make_series(10)
    counts = {before.series_instance_uid: 5, during.series_instance_uid: 10}
    root = tmp_path / "storage"
    shutdown = 3.0
    env = {
        "OXIDIP_ACK": ack,
        "OXIDIP_SHUTDOWN_TIMEOUT": str(shutdown),
        # Longer than the test: only the stop answers a waiting sender.
        "OXIDIP_REGISTRATION_TIMEOUT": "600",
    }
    with QueryScp(counts, aet="PACS") as pacs:
        address = {MODALITY: (pacs.host, pacs.port)}
        with Oxidip(root, db=proxy.url(url), pacs=address, env=env) as server:
            assert set(send(server.port, before.datasets, calling_aet=MODALITY).values()) == {0}
            with RegistryView(root, url) as view:
                view.wait_series(counts_are({before.series_instance_uid: 5}), server=server)
            proxy.cut()
            pusher = Pusher(server.port, during)
            pusher.start()
            if ack == "stored":
                pusher.join(30)
                assert pusher.statuses == [0] * 10
            else:
                # The first instance waits for its registration.
                server.process.wait_for_record("registry unreachable", timeout=30)
            stopped_at = time.monotonic()
            status = server.process.terminate(timeout=shutdown + 30)
            took = time.monotonic() - stopped_at
            pusher.join(30)
            output = "\n".join(server.process.lines)
            print(f"ack={ack}: exit status {status} {took:.2f} s after SIGTERM")
            assert took <= shutdown + EXIT_SLACK, f"exit {took:.1f} s after SIGTERM:\n{output}"
            assert status in (0, 1), output
            assert "Traceback" not in output
            left = messages(server, "stopping with instances not registered")
            assert len(left) == 1, output
            assert "journal" in str(left[0]["kept"])
            if ack == "registered":
                assert pusher.statuses[0] == 0xA700, pusher.statuses
                assert time.monotonic() - stopped_at < 20
            stored = [ds for ds in during.datasets if final_path(root, MODALITY, ds).is_file()]
            assert len(stored) >= 1
        assert journal_files(root) != []

        # The next start registers what the journal holds.
        proxy.restore()
        with Oxidip(root, db=url, pacs=address) as server, RegistryView(root, url) as view:
            registered = view.instance_paths()
            for ds in stored:
                assert registered.get(str(ds.SOPInstanceUID)) == str(final_path(root, MODALITY, ds))
            if ack == "stored":
                view.wait_series(counts_are(counts), server=server)
            server.stop()
    assert journal_files(root) == []


def test_nats_unreachable_at_start(tmp_path: Path) -> None:
    port = free_port()
    before, after = make_series(3), make_series(3)
    root = tmp_path / "storage"
    with Oxidip(root, env={"OXIDIP_NATS_ADDRESS": f"127.0.0.1:{port}"}) as server:
        warning = server.process.wait_for_record("nats unreachable", timeout=30)
        assert warning["level"] == "WARNING"
        assert warning["address"] == f"127.0.0.1:{port}"
        assert set(send(server.port, before.datasets, calling_aet=MODALITY).values()) == {0}
        with NatsServer(port=port) as nats, Subscriber(nats.url, "OXIDIP.>") as subscriber:
            server.process.wait_for_record("nats connected", timeout=30)
            assert set(send(server.port, after.datasets, calling_aet=MODALITY).values()) == {0}

            def finalized() -> bool:
                return any(
                    isinstance(m, Finalized) and m.series_instance_uid == after.series_instance_uid
                    for m in (decode_message(r.data) for r in list(subscriber.messages))
                )

            wait_until(finalized, 30, "the series' finalized message received", interval=0.05)
            server.stop()
        with RegistryView(root, None) as view:
            assert set(view.instance_paths()) == {
                *before.sop_instance_uids,
                *after.sop_instance_uids,
            }
