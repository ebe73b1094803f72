"""What a receiver process (and the processes it forks) costs: CPU time and peak resident
memory, read from Linux's ``/proc``.

CPU time is the difference of two snapshots of the whole process tree (``utime + stime`` of
each process, plus ``cutime + cstime``: the children it has reaped). Children that exited but
were not reaped yet (zombies) still have their ``stat``, so a forking server's finished
associations count too. Peak memory is the largest ``VmHWM`` (the kernel's high-water mark of
resident memory) of any process of the tree, sampled while the load runs and read once more
at the end: exact for a single-process server; for a forking one it is the largest single
process, read at most ``SAMPLE_INTERVAL`` before it exited.
"""

import os
import threading
from pathlib import Path

__all__ = ["ResourceMonitor", "tree_cpu_seconds", "tree_peak_rss"]

#: Seconds between peak-memory samples. A sample reads every process's ``stat`` (to find the
#: tree) and costs about 6 ms of CPU here, so sampling must be rare not to load the machine
#: being measured: the kernel's own high-water mark makes a single process exact anyway, and
#: a forking server's children live as long as their associations.
SAMPLE_INTERVAL = 0.5

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (field 3); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces and ')'.
    return text.rsplit(")", 1)[1].split()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (zombies included), from every process's parent."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds used so far by ``pid``, its descendants, and the children
    they reaped."""
    ticks = 0
    for member in _tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            # utime, stime, cutime, cstime: fields 14-17, here from index 11.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _TICKS


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_peak_rss(pid: int) -> int:
    """The largest peak resident set (bytes) of ``pid`` and its live descendants."""
    return max((_peak_rss(member) for member in _tree(pid)), default=0)


class ResourceMonitor:
    """Measures a process tree from ``start()`` to ``stop()``: CPU seconds used in between,
    and the peak resident memory of its largest process."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self._cpu_start = 0.0
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._cpu_start = tree_cpu_seconds(self.pid)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, tree_peak_rss(self.pid))

    def stop(self) -> tuple[float, int]:
        """(CPU seconds since ``start``, peak resident bytes); call while the process runs."""
        self._stop.set()
        self._thread.join()
        peak = max(self._peak, tree_peak_rss(self.pid))
        return tree_cpu_seconds(self.pid) - self._cpu_start, peak
