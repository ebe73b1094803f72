"""The SOP classes of the series a pull retrieves by C-GET (its storage contexts, PS3.7
D.3.3.4), looked up ahead: the IMAGE-level C-FIND of the next series (in the order the
registry hands series out) runs on a thread of its own while this one is being retrieved,
so that a C-GET does not wait for its own C-FIND (~15 ms a series of 100 against Orthanc,
as long as the retrieval itself of small instances).
"""

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from oxidip.pull.find import Finder
from oxidip.registry import PullSeriesRow, PullSeriesState

__all__ = ["SopClassesAhead"]


class SopClassesAhead:
    """``classes(row)``: the series' SOP classes (FindError as ``Finder.sop_classes_of``),
    from a lookup started earlier when there was one; then starts the lookups of the next
    ``ahead`` series of ``rows`` not complete. ``close`` drops the lookups not started."""

    def __init__(self, finder: Finder, rows: Sequence[PullSeriesRow], ahead: int) -> None:
        self._finder = finder
        # The registry's claim order (attempts, study, series): the next claims, most likely.
        self._order = sorted(
            (r for r in rows if r.state is not PullSeriesState.COMPLETE),
            key=lambda r: (r.attempts, r.study_instance_uid, r.series_instance_uid),
        )
        self._position = {r.series_instance_uid: n for n, r in enumerate(self._order)}
        self._ahead = ahead
        self._lookups: dict[str, Future[list[str]]] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(ahead, thread_name_prefix="oxidip-pull-classes")

    def classes(self, row: PullSeriesRow) -> list[str]:
        uid = row.series_instance_uid
        with self._lock:
            lookup = self._lookups.pop(uid, None) or self._submit(row)
            start = self._position.get(uid, len(self._order)) + 1
            for upcoming in self._order[start : start + self._ahead]:
                if upcoming.series_instance_uid not in self._lookups:
                    self._lookups[upcoming.series_instance_uid] = self._submit(upcoming)
        return lookup.result()  # bounded: the C-FIND's own timeout

    def _submit(self, row: PullSeriesRow) -> "Future[list[str]]":
        return self._executor.submit(
            self._finder.sop_classes_of,
            row.study_instance_uid,
            row.series_instance_uid,
            row.patient_id,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
