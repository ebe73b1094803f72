"""Adopting, while serving, the journals of oxidip processes that died on the same storage
root: with several processes behind a load balancer, one killed and not restarted must not
leave its acknowledged instances unregistered, nor its series "receiving" until the idle
timeout. The pipeline calls ``poll`` from its tick; a look costs a directory listing and one
lock attempt per segment of a live peer (see ``oxidip.reconcile.adopt_journals``).

A journal that cannot be replayed (the database is away, say) stays where it is and is tried
again at the next look; the first failure is logged as a warning naming the journals and how
many instances they hold, and the recovery once (``pending_entries`` holds that number
meanwhile).
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path

from oxidip import _core
from oxidip.reconcile import Registration, adopt_journals
from oxidip.registry import Registry

__all__ = ["ADOPT_INTERVAL", "JournalAdopter"]

log = logging.getLogger("oxidip.adoption")

#: Seconds between looks for the journals of dead processes: a dead peer's instances are
#: registered, and its series finalized, within about this long.
ADOPT_INTERVAL = 1.0


class JournalAdopter:
    """Looks for the journals of dead processes at most every ``interval`` seconds."""

    def __init__(
        self,
        files_root: Path | str,
        registry: Registry,
        process_id: str,
        *,
        interval: float = ADOPT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files_root = Path(files_root)
        self.registry = registry
        self.process_id = process_id
        self.interval = interval
        self.clock = clock
        self._last = clock()
        #: Instances listed by journals of dead processes that could not be replayed yet
        #: (as of the last failed look; 0 once they are).
        self.pending_entries = 0
        self._failing = False

    def due(self) -> bool:
        """Whether ``interval`` has passed since the last look (which it then starts again)."""
        now = self.clock()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True

    def adopt(self) -> Registration | None:
        """Adopts the journals of dead processes there are now; None if that failed (logged,
        tried again at the next look)."""
        try:
            done = adopt_journals(self.files_root, self.registry, self.process_id)
        except Exception as error:  # noqa: BLE001 - any failure: retried at the next look
            self._failed(error)
            return None
        if self._failing:
            log.info("journals of stopped processes replayed after a failure")
            self._failing = False
            self.pending_entries = 0
        return done

    def _failed(self, error: Exception) -> None:
        # Only counting: each journal is claimed and released again at once.
        try:
            journals = _core.claim_orphan_journals(str(self.files_root))
        except OSError:
            journals = []
        pending = sum(len(journal.entries) for journal in journals)
        for journal in journals:
            journal.release()
        if not self._failing:
            self._failing = True
            log.warning(
                "journals of stopped processes not replayed yet; retrying",
                extra={
                    "journals": len(journals),
                    "instances": pending,
                    "error": f"{type(error).__name__}: {error}",
                },
            )
        self.pending_entries = pending
