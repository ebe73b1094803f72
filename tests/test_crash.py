"""Crash safety with real processes: ``oxidip serve`` is killed with SIGKILL while several
associations push, and restarted on the same storage root and database. Every instance it
answered 0000 must be on disk at its final path and registered, no registered row may point
to a missing file, and the series counts must be right.

- ``test_kill_9_while_pushing``: 4 senders (raw DICOM clients in threads), each pushing its
  own series of 100 small instances and recording the status of every C-STORE; the server
  is killed at random moments (after a random number of further acknowledgements; seeded,
  the seed is printed and ``OXIDIP_CRASH_SEED`` repeats it) and restarted, 5 times, while the
  senders send again what was not acknowledged; about half of the restarts are themselves
  killed once they replayed a journal (between registering its entries and deleting it),
  before listening. After every restart (the journal is replayed before ``listening``),
  everything acknowledged before the kill is registered; at the end everything is, every
  series is complete, and a clean stop leaves no temp file nor journal. With
  ``OXIDIP_ACK=stored`` (0000 once the file is in place and journaled) and ``registered``.
- ``test_kill_9_while_registration_stalls``: the test holds the database's write lock, so the
  server acknowledges instances it cannot register; killed then, the restart registers them
  from the journal, and their series (one complete, one half sent) end complete: the
  expected count is asked for series first registered from a journal too.
"""

import contextlib
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from oxidip.registry import SeriesRow
from tests.helpers.dicom import encode_dataset, temp_files
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
    registration_stalled,
    send,
)
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, ConnectionClosed, Context, RawClient
from tests.helpers.query_scp import QueryScp

SENDERS = 4
INSTANCES = 100
KILLS = 5
#: Further acknowledgements (all senders together) before each kill: a random number in this
#: range. KILLS * max stays below SENDERS * INSTANCES, so every kill hits a running push.
KILL_AFTER_ACKS = (1, 60)
#: Bound on the whole push, restarts included.
DEADLINE = 90.0


# --- senders that survive the server -------------------------------------------------------


class Target:
    """Where the server is now: its generation (0 for the first process, +1 per restart) and
    port. Also counts acknowledgements, for the main thread to kill after some."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.generation = -1
        self.port = 0
        self.acks = 0
        self.closed = False
        self._cond = threading.Condition()

    def publish(self, generation: int, port: int) -> None:
        with self._cond:
            self.generation, self.port = generation, port
            self._cond.notify_all()

    def close(self) -> None:
        """No more servers: senders stop."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def server(self, at_least: int) -> tuple[int, int] | None:
        """(generation, port) of a server of generation ``at_least`` or later; None once
        closed or past the deadline."""
        with self._cond:
            while self.generation < at_least and not self.closed:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None if self.closed else (self.generation, self.port)

    def acknowledged(self) -> None:
        with self._cond:
            self.acks += 1
            self._cond.notify_all()

    def wait_acks(self, count: int, timeout: float) -> bool:
        """Waits until ``count`` acknowledgements in all (True) or ``timeout`` passed
        (False)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self.acks < count:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True


class Sender(threading.Thread):
    """Pushes one series (``RawClient``: exact per-instance statuses, every wait bounded)
    until every instance was answered 0000, reconnecting after a failure, to the next server
    generation once the current one refuses connections. ``acked`` maps each acknowledged SOP
    Instance UID to the generation that acknowledged it; ``other`` counts the other outcomes
    (a status, or what went wrong)."""

    def __init__(self, aet: str, series: Series, target: Target) -> None:
        super().__init__(name=f"sender-{aet}", daemon=True)
        self.aet = aet
        self.series = series
        self.target = target
        self.encoded = {str(ds.SOPInstanceUID): encode_dataset(ds) for ds in series.datasets}
        self.acked: dict[str, int] = {}
        self.other: Counter[str] = Counter()
        self.associations = 0
        self.error: BaseException | None = None

    @property
    def pending(self) -> list[str]:
        return [uid for uid in self.encoded if uid not in self.acked]

    def run(self) -> None:
        try:
            self._push()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error

    def _push(self) -> None:
        need = 0
        while self.pending:
            found = self.target.server(need)
            if found is None:
                return
            generation, port = found
            try:
                client = RawClient(HOST, port, timeout=20)
            except OSError:
                need = generation + 1  # refused: that server is dead
                continue
            self.associations += 1
            with client:
                try:
                    client.associate_ok(
                        calling=self.aet, contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])]
                    )
                except _FAILURES as error:
                    self.other[f"association: {type(error).__name__}"] += 1
                    continue
                for message_id, uid in enumerate(self.pending, start=1):
                    try:
                        rsp = client.c_store(
                            1, SECONDARY_CAPTURE, uid, self.encoded[uid], message_id=message_id
                        )
                    except _FAILURES as error:
                        self.other[f"no answer: {type(error).__name__}"] += 1
                        break
                    if rsp.status != 0:
                        self.other[f"status {rsp.status:04X}"] += 1
                        break
                    self.acked[uid] = generation
                    self.target.acknowledged()
                with contextlib.suppress(*_FAILURES):
                    if self.pending:
                        client.abort()
                    else:
                        client.release()


#: What a server killed under a client looks like to it.
_FAILURES = (OSError, ConnectionClosed, TimeoutError, AssertionError)


# --- checks -----------------------------------------------------------------------------------


def check_acknowledged(
    root: Path, view: RegistryView, senders: list[Sender], before: int, context: str
) -> None:
    """Every instance acknowledged by a server of a generation below ``before`` is
    registered at its final path, which holds it."""
    registered = view.instance_paths()
    problems = []
    for sender in senders:
        for ds in sender.series.datasets:
            sop = str(ds.SOPInstanceUID)
            generation = sender.acked.get(sop)
            if generation is None or generation >= before:
                continue
            path = final_path(root, sender.aet, ds)
            if not path.is_file():
                problems.append(f"{sop} ({sender.aet}, acked by #{generation}): no file {path}")
            if sop not in registered:
                problems.append(f"{sop} ({sender.aet}, acked by #{generation}): not registered")
            elif registered[sop] != str(path):
                problems.append(f"{sop}: registered at {registered[sop]}, stored at {path}")
    assert not problems, f"{context}:\n" + "\n".join(problems[:20]) + f"\n({len(problems)})"


@pytest.mark.parametrize("ack", ["stored", "registered"])
def test_kill_9_while_pushing(db: str | None, ack: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("OXIDIP_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash test seed {seed} (OXIDIP_CRASH_SEED={seed} repeats it)")
    rng = random.Random(seed)
    root = tmp_path / "storage"
    all_series = [make_series(INSTANCES, patient_id=f"CRASH{i}") for i in range(SENDERS)]
    counts = {s.series_instance_uid: len(s) for s in all_series}
    target = Target(time.monotonic() + DEADLINE)
    senders = [Sender(f"CRASH{i}", s, target) for i, s in enumerate(all_series)]
    servers: list[Oxidip] = []
    kills: list[str] = []
    view: RegistryView | None = None

    with QueryScp(counts, aet="PACS") as pacs:
        address = {sender.aet: (pacs.host, pacs.port) for sender in senders}

        def start() -> Oxidip:
            server = Oxidip(root, db=db, pacs=address, env={"OXIDIP_ACK": ack})
            servers.append(server)
            return server

        try:
            for sender in senders:
                sender.start()
            for generation in range(KILLS + 1):
                if generation > 0 and rng.random() < 0.5:
                    # Also killed while replaying the journal (before "listening").
                    early = Oxidip(root, db=db, pacs=address, env={"OXIDIP_ACK": ack}, wait=False)
                    servers.append(early)
                    early.process.wait_for_record("journal replayed")
                    early.kill()
                    kills.append("a restart killed while replaying")
                server = start()
                if view is None:
                    view = RegistryView(root, db)
                else:
                    # The journal is replayed before "listening", so all is registered by now.
                    check_acknowledged(
                        root, view, senders, generation, f"seed {seed}, after restart {generation}"
                    )
                target.publish(generation, server.port)
                if generation == KILLS:
                    break
                threshold = target.acks + rng.randint(*KILL_AFTER_ACKS)
                threshold = min(threshold, SENDERS * INSTANCES)
                if not target.wait_acks(threshold, timeout=30):
                    kills.append(f"#{generation}: not {threshold} acks within 30 s")
                server.kill()
                kills.append(f"#{generation} killed at {target.acks} acks (aimed at {threshold})")
            for sender in senders:
                sender.join(max(target.deadline - time.monotonic(), 1))
            report = f"seed {seed}; {'; '.join(kills)}; senders: " + ", ".join(
                f"{s.aet} acked {len(s.acked)}, other answers {dict(s.other)},"
                f" {s.associations} associations"
                for s in senders
            )
            print(report)
            assert all(s.error is None for s in senders), [s.error for s in senders]
            assert all(not s.pending for s in senders), f"senders not done: {report}"

            assert view is not None
            rows = view.wait_series(counts_are(counts), server=servers[-1], timeout=30)
            check_acknowledged(root, view, senders, KILLS + 1, f"{report}, at the end")
            registered = view.instance_paths()
            missing = [path for path in registered.values() if not os.path.isfile(path)]
            assert missing == [], f"registered, no file: {missing[:10]} ({report})"
            on_disk = instances_on_disk(root)
            assert set(on_disk) == set(registered), report
            per_series = Counter(path.parent.name for path in on_disk.values())
            assert per_series == {uid: row.received for uid, row in rows.items()}, report
            servers[-1].stop()
        finally:
            if view is not None:
                view.close()
            target.close()
            for server in servers:
                server.kill()
    assert temp_files(root) == [], "temp files left after the final clean stop"
    assert journal_files(root) == [], "journal left after the final clean stop"
    errors = [record for server in servers for record in server.errors()]
    assert errors == [], errors[:5]


def test_kill_9_while_registration_stalls(db: str | None, tmp_path: Path) -> None:
    whole, half = make_series(8), make_series(10)
    counts = {whole.series_instance_uid: 8, half.series_instance_uid: 10}
    root = tmp_path / "storage"
    with QueryScp(counts, aet="PACS") as pacs:
        address = {"MODALITY": (pacs.host, pacs.port)}
        with Oxidip(root, db=db, pacs=address) as server, registration_stalled(root, db):
            statuses = send(server.port, whole.datasets, calling_aet="MODALITY")
            statuses |= send(server.port, half.datasets[:5], calling_aet="MODALITY")
            assert set(statuses.values()) == {0}, statuses
            server.kill()
        acknowledged = [*whole.datasets, *half.datasets[:5]]
        with Oxidip(root, db=db, pacs=address) as server, RegistryView(root, db) as view:
            registered = view.instance_paths()
            for ds in acknowledged:
                path = final_path(root, "MODALITY", ds)
                assert path.is_file(), path
                assert registered.get(str(ds.SOPInstanceUID)) == str(path), server.output()
            statuses = send(server.port, half.datasets[5:], calling_aet="MODALITY")
            assert set(statuses.values()) == {0}, statuses
            rows: dict[str, SeriesRow] = view.wait_series(
                counts_are(counts), server=server, timeout=30
            )
            assert all(row.calling_aet == "MODALITY" for row in rows.values()), [
                describe(row) for row in rows.values()
            ]
            server.stop()
    assert temp_files(root) == []
    assert journal_files(root) == []


def test_series_cut_by_a_kill_ends_incomplete(db: str | None, tmp_path: Path) -> None:
    """The killed process never ends its association: the series it was receiving is
    finalized by the idle timeout of the next process (incomplete, not receiving for ever),
    and completes when the rest comes."""
    s = make_series(10)
    uid = s.series_instance_uid
    root = tmp_path / "storage"
    env = {"OXIDIP_SERIES_IDLE_TIMEOUT": "1"}
    with QueryScp({uid: 10}, aet="PACS") as pacs:
        address = {"MODALITY": (pacs.host, pacs.port)}
        with (
            Oxidip(root, db=db, pacs=address, env=env) as server,
            RawClient(HOST, server.port, timeout=20) as client,
        ):
            client.associate_ok(
                calling="MODALITY", contexts=[Context(1, SECONDARY_CAPTURE, [EXPLICIT_LE])]
            )
            for message_id, ds in enumerate(s.datasets[:5], start=1):
                sop = str(ds.SOPInstanceUID)
                rsp = client.c_store(
                    1, SECONDARY_CAPTURE, sop, encode_dataset(ds), message_id=message_id
                )
                assert rsp.status == 0, rsp
            with RegistryView(root, db) as view:
                view.wait_series(
                    lambda rows: (
                        uid in rows and rows[uid].received == 5 and rows[uid].expected == 10
                    ),
                    server=server,
                    what="5 of 10 registered",
                )
            server.kill()
        with Oxidip(root, db=db, pacs=address, env=env) as server, RegistryView(root, db) as view:
            view.wait_series(counts_are({uid: 5}, "incomplete"), server=server, timeout=30)
            statuses = send(server.port, s.datasets[5:], calling_aet="MODALITY")
            assert set(statuses.values()) == {0}, statuses
            view.wait_series(counts_are({uid: 10}), server=server)
            server.stop()
