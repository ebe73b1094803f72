"""``Routes``: the destinations and rules of a routes file, and the ``Router`` they make."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from oxidip.routing._file import parse_routes, read_routes
from oxidip.routing._model import Destination, Rule, RuleVerdict, SeriesFacts, Target, Trigger

if TYPE_CHECKING:
    from oxidip.registry import SeriesState

__all__ = ["Routes"]


class Routes:
    """Destinations and rules (``Routes.load`` reads and validates a file); a ``Router``.

    ``targets`` costs a few regular expression matches per rule of the trigger: the rules
    are grouped by trigger, ordered by priority, their targets built, once."""

    def __init__(
        self, destinations: Mapping[str, Destination], rules: Sequence[Rule], source: str = ""
    ) -> None:
        unknown = sorted({name for rule in rules for name in rule.to} - set(destinations))
        if unknown:
            raise ValueError(f"rules name unknown destinations: {', '.join(unknown)}")
        self.destinations: Mapping[str, Destination] = MappingProxyType(dict(destinations))
        self.rules: Sequence[Rule] = tuple(rules)
        #: The file the routes come from ("" when built otherwise).
        self.source = source
        #: Per trigger, its rules with their targets, highest priority first (stable: ties
        #: keep the file's order).
        ranked = sorted(self.rules, key=lambda rule: -rule.priority)
        self._by_trigger: dict[Trigger, tuple[tuple[Rule, tuple[Target, ...]], ...]] = {
            trigger: tuple((rule, rule.targets) for rule in ranked if rule.on is trigger)
            for trigger in Trigger
        }
        #: The rules in the order ``targets`` tries them: by trigger, then priority.
        self.ranked: tuple[Rule, ...] = tuple(
            rule for trigger in Trigger for rule, _ in self._by_trigger[trigger]
        )
        self._triggers = frozenset(trigger for trigger in Trigger if self._by_trigger[trigger])

    @classmethod
    def load(cls, path: str | Path) -> "Routes":
        """The routes of the file at ``path``; RoutesError listing every mistake."""
        destinations, rules = read_routes(path)
        return cls(destinations, rules, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<routes>") -> "Routes":
        """The routes of a routes file's text; RoutesError listing every mistake."""
        destinations, rules = parse_routes(text, source)
        return cls(destinations, rules, source)

    @property
    def triggers(self) -> frozenset[Trigger]:
        """The triggers some rule fires on."""
        return self._triggers

    def targets(
        self, trigger: Trigger, series: SeriesFacts, state: "SeriesState | None"
    ) -> list[Target]:
        """See ``Router.targets``."""
        found: list[Target] = []
        for rule, targets in self._by_trigger[trigger]:
            if rule.fires_on(state) and rule.matches(series):
                found.extend(targets)
        return found

    def explain(self, series: SeriesFacts, state: "SeriesState | None") -> list[RuleVerdict]:
        """Every rule, in the order ``targets`` tries them (by trigger), with whether it
        fires on ``state`` and each of its conditions tested on ``series``."""
        return [
            RuleVerdict(
                rule=rule.name,
                on=rule.on,
                priority=rule.priority,
                destinations=rule.to,
                fires=rule.fires_on(state),
                trigger=rule.why_it_fires(state),
                conditions=tuple(condition.verdict(series) for condition in rule.conditions),
            )
            for rule in self.ranked
        ]

    def __repr__(self) -> str:
        return (
            f"Routes({self.source!r}: {len(self.destinations)} destinations,"
            f" {len(self.rules)} rules)"
        )
