"""What the journal holds and nobody registered yet is visible (issue 9 item 11): the
receiver's journal backlog (its entries not yet registered, for /metrics and /healthz), and
a dead process's journal that cannot be replayed is logged once, with the number of
instances it holds (``JournalAdopter.pending_entries`` meanwhile)."""

import logging
from pathlib import Path

import psycopg
import pytest

from oxidip.adoption import JournalAdopter
from oxidip.registry import open_registry
from tests.conftest import StartReceiver
from tests.helpers.e2e import (
    Oxidip,
    journal_files,
    make_series,
    postgres_database,
    registration_stalled,
    send,
)

SENDER = "MODALITY"


def test_the_journal_backlog_is_what_is_not_registered_yet(start_receiver: StartReceiver) -> None:
    receiver = start_receiver()
    assert receiver.rx.journal_backlog == 0
    series = make_series(3)
    assert set(send(receiver.port, series.datasets, calling_aet=SENDER).values()) == {0}
    stored = receiver.wait_stored(3)
    assert receiver.rx.journal_backlog == 3
    seqs = [event.journal_seq for event in stored if event.journal_seq is not None]
    receiver.rx.acknowledge(seqs[:2], registered=True)
    assert receiver.rx.journal_backlog == 1
    receiver.rx.acknowledge(seqs[2:], registered=False)
    assert receiver.rx.journal_backlog == 1, "a failed registration stays in the backlog"


def test_a_dead_journal_that_cannot_be_replayed_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "storage"
    series = make_series(5)
    with postgres_database() as url:
        with Oxidip(root, db=url) as server, registration_stalled(root, url):
            assert set(send(server.port, series.datasets, calling_aet=SENDER).values()) == {0}
            server.kill()
        registry = open_registry(url, root, pool_size=1)
        try:
            adopter = JournalAdopter(root, registry, "test-node", interval=0)
            # Registration fails from now on (as with a database that refuses it).
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP TABLE instances CASCADE")
            with caplog.at_level(logging.WARNING, logger="oxidip.adoption"):
                assert adopter.adopt() is None
                assert adopter.adopt() is None
        finally:
            registry.close()
    warnings = [r for r in caplog.records if r.msg.startswith("journals of stopped processes")]
    assert len(warnings) == 1, "logged once, not at every look"
    assert warnings[0].__dict__["instances"] == 5
    assert adopter.pending_entries == 5
    assert len(journal_files(root)) == 1, "left for a later replay"
