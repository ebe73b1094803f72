"""What a routes file says once validated, and how one rule decides about one series.

A rule fires on a trigger (``Trigger``), when the series' state allows it (``fires_on``),
and when every condition of its ``when`` holds (``Condition.holds``): an anchored regular
expression (``re.fullmatch``) on one attribute of the series, a missing value matching as
"", a leading ``!`` negating. Everything is compiled once, when the file is read: matching
runs inside the registry's transactions, for every registration batch when ``instance``
rules exist.
"""

import enum
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, TypeAlias

import msgspec

if TYPE_CHECKING:
    # Only a type here: the registry calls routers, so it imports this package, not the
    # other way round (a cycle otherwise).
    from oxidip.registry import SeriesState

__all__ = [
    "FACT_KEYS",
    "HOOK_RULE",
    "Condition",
    "ConditionVerdict",
    "Destination",
    "IncompletePolicy",
    "Router",
    "Rule",
    "RuleVerdict",
    "SeriesFacts",
    "Target",
    "Trigger",
]


class Trigger(enum.StrEnum):
    """What makes a rule create jobs (a rule's ``on``)."""

    #: Each instance as soon as it is registered (a streaming route, like dcmtk's ``-xcs`` or
    #: Orthanc's OnStoredInstance); the registry batches them per series.
    INSTANCE = "instance"
    #: The series reached ``complete`` (received == expected).
    SERIES_COMPLETE = "series-complete"
    #: The series left ``receiving`` for any final state (see ``IncompletePolicy``).
    SERIES_FINALIZED = "series-finalized"


class IncompletePolicy(enum.StrEnum):
    """What a ``series-finalized`` rule does with a series that did not end ``complete``
    (incomplete, overfull, or finalized without a known expected count)."""

    SEND = "send"
    SKIP = "skip"


class Destination(msgspec.Struct, frozen=True):
    """A DICOM node we forward to (a ``[destinations.NAME]`` table)."""

    name: str
    #: The called AE title of our associations.
    aet: str
    host: str
    port: int
    #: At most this many associations to it at once.
    max_associations: int = 1
    #: Our calling AE title towards it; None: the receiver's own (``OXIDIP_SCP_AET``).
    calling_aet: str | None = None


class Target(msgspec.Struct, frozen=True):
    """One job to create: a rule sends the series to a destination."""

    #: The rule's name; ``HOOK_RULE`` for a destination the ``route()`` hook added.
    rule: str
    #: A key of ``Routes.destinations``.
    destination: str
    #: The rule's priority (higher first); 0 for the hook's targets.
    priority: int


#: The rule name of targets added by the ``route()`` hook (no rule may take it).
HOOK_RULE = "route-hook"

#: The attributes of a series a rule's ``when`` may test: the registered patient, study and
#: series attributes (DICOM keywords), and the AE titles of the association that sent it.
FACT_KEYS: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "CallingAET",
    "CalledAET",
)

#: A series as rules see it: values of ``FACT_KEYS`` (a missing key or None matches as "").
SeriesFacts: TypeAlias = Mapping[str, str | None]

# SeriesState's values, compared as text: SeriesState is a StrEnum of the registry, which
# this package cannot import at run time (see above); tests check they are its values.
_COMPLETE = "complete"
_RECEIVING = "receiving"


class Condition(msgspec.Struct, frozen=True):
    """One ``Attribute = "pattern"`` of a rule's ``when``."""

    attribute: str
    #: As written in the file, ``!`` included.
    written: str
    negated: bool
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, attribute: str, written: str) -> "Condition":
        """Compiles ``written`` (``re.error`` when it does not compile)."""
        negated = written.startswith("!")
        return cls(attribute, written, negated, re.compile(written.removeprefix("!")))

    def holds(self, series: SeriesFacts) -> bool:
        value = series.get(self.attribute) or ""
        return (self.regex.fullmatch(value) is None) is self.negated

    def verdict(self, series: SeriesFacts) -> "ConditionVerdict":
        value = series.get(self.attribute)
        return ConditionVerdict(self.attribute, self.written, value, self.holds(series))


class Rule(msgspec.Struct, frozen=True):
    """One ``[[rules]]`` entry."""

    name: str
    on: Trigger
    #: Destination names, in the file's order.
    to: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()
    priority: int = 0
    #: For ``series-finalized`` rules only (None for the others).
    incomplete: IncompletePolicy | None = None

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(Target(self.name, name, self.priority) for name in self.to)

    def fires_on(self, state: "SeriesState | None") -> bool:
        """Whether the rule's trigger takes a series in ``state`` (its new state; None for
        ``instance``)."""
        if self.on is Trigger.INSTANCE:
            return True
        if self.on is Trigger.SERIES_COMPLETE or self.incomplete is IncompletePolicy.SKIP:
            return state == _COMPLETE
        return state is not None and state != _RECEIVING

    def why_it_fires(self, state: "SeriesState | None") -> str:
        """``fires_on`` in words, for ``oxidip routes test``."""
        shown = "unknown" if state is None else str(state)
        if self.on is Trigger.INSTANCE:
            return "each instance as it is stored"
        if self.on is Trigger.SERIES_COMPLETE:
            return f"series-complete needs state complete; the series is {shown}"
        if self.incomplete is IncompletePolicy.SKIP:
            return f'series-finalized with incomplete = "skip" needs complete; it is {shown}'
        return f"series-finalized takes any final state; the series is {shown}"

    def matches(self, series: SeriesFacts) -> bool:
        return all(condition.holds(series) for condition in self.conditions)


class ConditionVerdict(msgspec.Struct, frozen=True):
    """One condition tested on one series (``oxidip routes test``)."""

    attribute: str
    #: The pattern as written, ``!`` included.
    pattern: str
    #: The series' value; None when it has none (matched as "").
    value: str | None
    holds: bool

    def __str__(self) -> str:
        value = "(none)" if not self.value else repr(self.value)
        negated = self.pattern.startswith("!")
        pattern = repr(self.pattern[1:] if negated else self.pattern)
        matches = self.holds is not negated
        said = f"{self.attribute} {value} {'matches' if matches else 'does not match'} {pattern}"
        if negated:
            said += " (as '!' requires)" if self.holds else " (which '!' forbids)"
        return said


class RuleVerdict(msgspec.Struct, frozen=True):
    """Why one rule matches one series, or why not (``Routes.explain``)."""

    rule: str
    on: Trigger
    priority: int
    destinations: tuple[str, ...]
    #: Whether the trigger takes the series' state, and that in words.
    fires: bool
    trigger: str
    conditions: tuple[ConditionVerdict, ...]

    @property
    def matched(self) -> bool:
        return self.fires and all(condition.holds for condition in self.conditions)


class Router(Protocol):
    """Decides which jobs a series' trigger creates (``Routes``, ``HookedRouter``)."""

    @property
    def triggers(self) -> frozenset[Trigger]:
        """The triggers ``targets`` may answer something for: the registry need not build a
        series' facts (nor call ``targets``) for the others."""
        ...

    def targets(
        self, trigger: Trigger, series: SeriesFacts, state: "SeriesState | None"
    ) -> list[Target]:
        """Jobs to create: one Target per (matching rule, destination), highest priority
        first (ties in the file's order). ``state`` is the series' new state (None for
        ``Trigger.INSTANCE``). SERIES_COMPLETE rules match only state complete;
        SERIES_FINALIZED rules any final state, those with incomplete="skip" only complete."""
        ...
