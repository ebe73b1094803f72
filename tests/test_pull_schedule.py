"""A pull's next retrieval does not wait for the previous series' registrations
(``oxidip.pull.schedule``): the PACS is done with a series at its final response, and the
wait for the receiver to register what it sent (up to a poll interval with ``oxidip serve``
in another process) happens beside the next retrieval."""

import threading
import time
from pathlib import Path
from typing import Any

from oxidip.nodes import RemoteNode
from oxidip.pull.progress import LogDisplay
from oxidip.pull.schedule import Limits, Scheduler
from oxidip.registry import FoundSeries, PullSeriesRow, PullSeriesState, RetryPolicy, open_registry
from tests.test_registry import batch, uid

PACS = RemoteNode("PACS", "127.0.0.1", 104)
INSTANCES = 3


class _Result:
    """A final response: success, every sub-operation completed."""

    status = 0x0000
    comment = ""
    completed = INSTANCES
    failed = 0
    warning = 0
    identifier = None


class _Finished:
    """A retrieval whose final response has come."""

    result: Any = _Result()
    error = None
    instances_received = 0

    def next_progress(self, timeout: float) -> None:
        return None

    def cancel(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Clock:
    """A receiver in another process: nothing to wait on but the clock (like ``Polled``),
    in short steps."""

    def jobs_done(self) -> int:
        return 0

    def wait_done(self, seen: int, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    def quiet(self) -> bool:
        return False


def test_the_next_series_is_retrieved_while_the_last_one_waits_for_its_registrations(
    tmp_path: Path,
) -> None:
    registry = open_registry(None, tmp_path / "data")
    registry.migrate()
    try:
        study, first, second = uid(), uid(), uid()
        pull = registry.create_pull("[]", PACS.aet, "move", time.time())
        rows = registry.restart_pull(
            pull.id,
            "move",
            [
                FoundSeries(study, series, modality="OT", expected=INSTANCES)
                for series in (first, second)
            ],
            time.time(),
        )
        started: list[str] = []
        second_started = threading.Event()

        def register_late(series: str) -> None:
            # The receiver registers the first series only once the second retrieval has
            # started: a pull that waited for the registrations first would never see them
            # within its settle time.
            if series == first:
                second_started.wait(10)
            registry.register(batch(series, INSTANCES, study=study, aet=PACS.aet), "node")

        threads: list[threading.Thread] = []

        def start(row: PullSeriesRow) -> _Finished:
            started.append(row.series_instance_uid)
            if row.series_instance_uid == second:
                second_started.set()
            thread = threading.Thread(target=register_late, args=(row.series_instance_uid,))
            thread.start()
            threads.append(thread)
            return _Finished()

        scheduler = Scheduler(
            registry=registry,
            pull=pull,
            pacs=PACS,
            owner="test",
            start=start,
            method="move",
            destination="OXIDIP",
            limits=Limits(
                concurrency=1,
                pause=0.0,
                stall=30.0,
                retries=0,
                cancel_grace=1.0,
                retry=RetryPolicy(base=1.0, maximum=1.0, attempts=1),
                settle=5.0,
            ),
            display=LogDisplay(rows),
            stop=threading.Event(),
            registrations=_Clock(),
        )
        scheduler.run()
        for thread in threads:
            thread.join()

        assert started == [first, second]  # each retrieved once, in order
        ended = {row.series_instance_uid: row for row in registry.pull_series(pull.id)}
        assert ended[first].state is PullSeriesState.COMPLETE, ended[first].last_error
        assert ended[second].state is PullSeriesState.COMPLETE, ended[second].last_error
        assert ended[first].attempts == 1
    finally:
        registry.close()
