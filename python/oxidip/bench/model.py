"""The data of ``oxidip bench compare``: what runs (``Workload``), what a run measured
(``Measurement``, ``Failure``, ``Ceiling``), the targets checked (``Target``) and the whole
comparison (``Results``, also its JSON file). Shared by the harness (``compare``) and the
report (``report``), which import it and not each other's types."""

import datetime

import msgspec

__all__ = [
    "CT_SLICE",
    "FULL",
    "MIB",
    "QUICK",
    "Ceiling",
    "Context",
    "Failure",
    "Measurement",
    "Results",
    "Target",
    "Workload",
]

MIB = 1 << 20
#: Pixel data of one CT slice; the generator's header adds a few hundred bytes.
CT_SLICE = 512 * 512 * 2


class Workload(msgspec.Struct, frozen=True):
    key: str
    #: The generator's image kind and size (``oxidip bench send --image --size``; a CT
    #: image has the size of its slice, whatever ``--size`` says).
    image: str
    size: int
    instances: int
    associations: int
    idle: int = 0
    #: Compared by MB/s (large instances) rather than instances/s.
    by_bytes: bool = False

    @property
    def title(self) -> str:
        what = {
            "sc": f"{self.size / 1024:g} KB",
            "ct": "CT 512x512 16-bit",
            "multiframe": f"{self.size / MIB:g} MiB multi-frame",
        }[self.image]
        text = f"{self.instances:,} x {what}, {self.associations} association"
        text += "s" if self.associations > 1 else ""
        return text + (f", {self.idle} more open and idle" if self.idle else "")

    def quick(self) -> "Workload":
        """The same, small enough for a smoke test."""
        return msgspec.structs.replace(
            self,
            instances=max(2, self.instances // 50),
            size=min(self.size, 16 * MIB),
            idle=min(self.idle, 10),
        )


FULL: tuple[Workload, ...] = (
    Workload("small", "sc", 2048, 10_000, 1),
    Workload("small-16", "sc", 2048, 10_000, 16),
    Workload("ct", "ct", CT_SLICE, 1_000, 1, by_bytes=True),
    Workload("ct-4", "ct", CT_SLICE, 1_000, 4, by_bytes=True),
    Workload("large", "multiframe", 1024 * MIB, 2, 1, by_bytes=True),
    Workload("idle", "sc", 2048, 10_000, 16, idle=200),
)

QUICK: tuple[Workload, ...] = tuple(w.quick() for w in FULL)


class Failure(msgspec.Struct):
    """A run that did not complete (a receiver refusing, dropping or losing instances)."""

    workload: str
    receiver: str
    repetition: int
    error: str


class Measurement(msgspec.Struct):
    workload: str
    receiver: str
    repetition: int
    #: The generator's wall time, first connect to last release.
    seconds: float
    instances: int
    bytes: int
    #: Receiver CPU seconds (user + system, its whole process tree) during the run.
    cpu_seconds: float
    #: Largest peak resident memory of the receiver's processes, bytes.
    peak_rss: int
    latency_p50_ms: float
    latency_p99_ms: float
    #: From the start of sending to the registry holding every instance (oxidip).
    registered_seconds: float | None = None

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6


class Ceiling(msgspec.Struct):
    """One thread writing a workload's files to the same storage, with no network and no
    parsing: what any receiver must at least do, for scale."""

    workload: str
    repetition: int
    seconds: float
    instances: int
    bytes: int


class Context(msgspec.Struct, frozen=True):
    command: str
    #: The directory the storage directories were made under.
    storage: str
    repeats: int
    #: The CPUs the run was confined to (``--cpus``), or None: all of them.
    cpus: list[int] | None = None


class Target(msgspec.Struct, frozen=True):
    """One of issue 4's targets, as measured."""

    workload: str
    what: str
    measured: float | None
    required: float
    #: "at least" or "at most".
    direction: str
    unit: str

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.direction == "at least":
            return self.measured >= self.required
        return self.measured <= self.required


class Results(msgspec.Struct):
    """A comparison: what ran, and how (also its JSON file)."""

    context: Context
    when: datetime.datetime
    workloads: list[Workload]
    receivers: list[str]
    measurements: list[Measurement]
    failures: list[Failure]
    ceilings: list[Ceiling]
