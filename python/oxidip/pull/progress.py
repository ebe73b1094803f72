"""What a person watching a pull sees: on a terminal a bar per running series and one for
the whole pull, redrawn in place; otherwise (a pipe, a log file) plain log lines: one when a
series starts, one every ``LOG_EVERY`` seconds while it runs, one when it ends.

A series' total is the C-FIND's NumberOfSeriesRelatedInstances, else what the pending
responses say (completed + failed + warning + remaining); with neither it is unknown and
shown as ``?`` (never as 100%). Its progress is the sub-operations completed, cross-checked
with the instances oxidip registered (shown beside them: a C-MOVE's C-STOREs are counted by
the PACS before oxidip registers them).
"""

import logging
import os
import threading
import time
from typing import Protocol, TextIO

import msgspec

from oxidip.pull.retrieve import Counts
from oxidip.registry import PullSeriesRow

__all__ = ["Display", "LogDisplay", "TerminalDisplay", "bar", "series_line"]

log = logging.getLogger("oxidip.pull")

#: Seconds between two progress log lines of one series.
LOG_EVERY = 5.0
#: Redraws of the terminal display per second, at most.
_REDRAWS = 5.0
_BAR = 24


class Display(Protocol):
    def started(self, series: PullSeriesRow) -> None: ...

    def progress(self, uid: str, counts: Counts, registered: int) -> None: ...

    def ended(self, uid: str, state: str, received: int | None, words: str) -> None: ...

    def close(self) -> None: ...


class _Running(msgspec.Struct):
    series: PullSeriesRow
    counts: Counts = msgspec.field(default_factory=Counts)
    registered: int = 0
    logged_at: float = 0.0

    def total(self) -> int | None:
        return self.series.expected if self.series.expected is not None else self.counts.total()

    def done(self) -> int:
        return max(self.counts.completed or 0, self.registered)


def bar(done: int, total: int | None, width: int = _BAR) -> str:
    """``[#####.....]`` for ``done`` of ``total``; ``[?????]``-like when the total is
    unknown (progress without a known end)."""
    if total is None:
        return "[" + "?".center(width) + "]"
    filled = width if total <= 0 else min(width, done * width // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def series_line(series: PullSeriesRow, counts: Counts, registered: int) -> str:
    """One series' progress in words: done of total (``?`` unknown), registered, failed."""
    total = series.expected if series.expected is not None else counts.total()
    done = max(counts.completed or 0, registered)
    text = f"{done}/{'?' if total is None else total}"
    text += f" registered {registered}"
    if counts.failed:
        text += f" failed {counts.failed}"
    return text


def _label(series: PullSeriesRow) -> str:
    what = " ".join(p for p in (series.modality, series.series_description) if p)
    return f"{series.series_instance_uid}" + (f" {what}" if what else "")


class _Overall:
    """The whole pull: series ended and instances registered against the C-FIND's totals."""

    def __init__(self, series: list[PullSeriesRow]) -> None:
        self.expected: dict[str, int | None] = {s.series_instance_uid: s.expected for s in series}
        self.received: dict[str, int] = {
            s.series_instance_uid: s.received or 0 for s in series if s.received
        }
        self.ended = 0
        self.total_series = len(series)

    def line(self, running: dict[str, _Running]) -> str:
        done = sum(self.received.values()) + sum(r.registered for r in running.values())
        totals = list(self.expected.values())
        total = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
        return (
            f"{bar(done, total)} {done}/{'?' if total is None else total} instances,"
            f" {self.ended}/{self.total_series} series ended"
        )


class LogDisplay:
    """Log lines (``oxidip.pull``), for when nobody watches a terminal."""

    def __init__(self, series: list[PullSeriesRow]) -> None:
        self._running: dict[str, _Running] = {}
        self._overall = _Overall(series)
        self._lock = threading.Lock()

    def started(self, series: PullSeriesRow) -> None:
        with self._lock:
            self._running[series.series_instance_uid] = _Running(series, logged_at=time.monotonic())
        log.info(
            "series retrieval started",
            extra={
                "series_instance_uid": series.series_instance_uid,
                "study_instance_uid": series.study_instance_uid,
                "expected": "unknown" if series.expected is None else series.expected,
                "attempt": series.attempts,
            },
        )

    def progress(self, uid: str, counts: Counts, registered: int) -> None:
        now = time.monotonic()
        with self._lock:
            running = self._running.get(uid)
            if running is None:
                return
            running.counts, running.registered = counts, registered
            if now - running.logged_at < LOG_EVERY:
                return
            running.logged_at = now
            line = series_line(running.series, counts, registered)
        log.info("series progress", extra={"series_instance_uid": uid, "progress": line})

    def ended(self, uid: str, state: str, received: int | None, words: str) -> None:
        with self._lock:
            self._running.pop(uid, None)
            if received is not None:
                self._overall.received[uid] = received
            if state not in ("pending", "running"):
                self._overall.ended += 1
            overall = self._overall.line(self._running)
        extra: dict[str, object] = {"series_instance_uid": uid, "state": state, "overall": overall}
        if received is not None:
            extra["received"] = received
        if words:
            extra["why"] = words
        log.info("series retrieval ended", extra=extra)

    def close(self) -> None:
        pass


class TerminalDisplay:
    """Bars redrawn in place on ``stream`` (a terminal): one per running series, then the
    whole pull's. Lines that end (a series done) are printed above the bars and stay."""

    def __init__(self, series: list[PullSeriesRow], stream: TextIO) -> None:
        self._stream = stream
        self._running: dict[str, _Running] = {}
        self._overall = _Overall(series)
        self._lock = threading.Lock()
        self._drawn = 0
        self._drawn_at = 0.0

    def started(self, series: PullSeriesRow) -> None:
        with self._lock:
            self._running[series.series_instance_uid] = _Running(series)
            self._draw(force=True)

    def progress(self, uid: str, counts: Counts, registered: int) -> None:
        with self._lock:
            running = self._running.get(uid)
            if running is not None:
                running.counts, running.registered = counts, registered
                self._draw(force=False)

    def ended(self, uid: str, state: str, received: int | None, words: str) -> None:
        with self._lock:
            running = self._running.pop(uid, None)
            if received is not None:
                self._overall.received[uid] = received
            if state not in ("pending", "running"):
                self._overall.ended += 1
            label = _label(running.series) if running else uid
            why = f": {words}" if words else ""
            self._clear()
            self._stream.write(f"{state:<10} {label}{why}\n")
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            self._clear()
            self._stream.write(self._overall.line(self._running) + "\n")
            self._stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            # Up to the first bar, clear to the end of the screen.
            self._stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._drawn_at < 1 / _REDRAWS:
            return
        self._drawn_at = now
        width = _terminal_width(self._stream)
        lines = []
        for running in self._running.values():
            text = series_line(running.series, running.counts, running.registered)
            lines.append(f"{bar(running.done(), running.total())} {text} {_label(running.series)}")
        lines.append(self._overall.line(self._running))
        self._clear()
        for line in lines:
            self._stream.write(line[: width - 1] + "\n")
        self._drawn = len(lines)
        self._stream.flush()


def _terminal_width(stream: TextIO) -> int:
    """The columns of the terminal ``stream`` writes to (100 when it cannot say). Not
    ``shutil.get_terminal_size``, which asks stdout, not the display's stream, and whose
    module costs ``oxidip pull`` a few milliseconds of start-up for nothing else."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 100
