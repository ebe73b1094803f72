"""The ``route()`` hook (mercure's dynamic routing): user code that adds or replaces the
destinations the rules chose for a series.

``HookedRouter`` asks the rules, then calls ``route(series)`` with a read-only
``RoutedSeries``. None keeps the rules' choice; a list of destination names is the series'
destinations from then on: the rules' targets for names in it are kept (their rule and
priority), names the rules did not choose get a target of rule ``HOOK_RULE`` and priority 0,
and the rules' targets for names not in it are dropped. The hook runs synchronously inside
the registry's transaction, for every trigger of every series (``RoutedSeries.trigger``
says which): it must be quick. An exception, or an answer naming a destination the routes
file does not define, is logged at ERROR and the rules' targets are kept.
"""

import logging
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from oxidip.hooks import Hooks
from oxidip.logs import one_line
from oxidip.routing._model import FACT_KEYS, HOOK_RULE, Router, SeriesFacts, Target, Trigger
from oxidip.routing._routes import Routes

if TYPE_CHECKING:
    from oxidip.registry import SeriesState

__all__ = ["HookedRouter", "RoutedSeries", "build_router"]

log = logging.getLogger("oxidip.routing")


class RoutedSeries(Mapping[str, str | None]):
    """What ``route(series)`` receives: the series' facts (``series["Modality"]``, a key of
    ``FACT_KEYS``; None when it has no value), the ``trigger``, the series' new ``state``
    (None for ``instance``) and the ``destinations`` the rules chose, in priority order."""

    __slots__ = ("_facts", "destinations", "state", "trigger")

    def __init__(
        self,
        trigger: Trigger,
        facts: SeriesFacts,
        state: "SeriesState | None",
        destinations: tuple[str, ...],
    ) -> None:
        self._facts = MappingProxyType({key: facts.get(key) for key in FACT_KEYS})
        self.trigger = trigger
        self.state = state
        self.destinations = destinations

    def __getitem__(self, key: str) -> str | None:
        return self._facts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._facts)

    def __len__(self) -> int:
        return len(self._facts)

    @property
    def series_instance_uid(self) -> str:
        return self._facts["SeriesInstanceUID"] or ""

    @property
    def calling_aet(self) -> str:
        return self._facts["CallingAET"] or ""

    def __repr__(self) -> str:
        return (
            f"RoutedSeries({self.trigger.value}, {self.series_instance_uid} from"
            f" {self.calling_aet}, state={self.state}, destinations={list(self.destinations)})"
        )


class HookedRouter:
    """``routes`` with the hooks' ``route()`` applied to their answer; a ``Router``."""

    def __init__(self, routes: Routes, hooks: Hooks) -> None:
        self.routes = routes
        self.hooks = hooks

    @property
    def triggers(self) -> frozenset[Trigger]:
        """Every trigger when there is a route hook (it may add destinations to any)."""
        return frozenset(Trigger) if self.hooks.routes_series else self.routes.triggers

    def targets(
        self, trigger: Trigger, series: SeriesFacts, state: "SeriesState | None"
    ) -> list[Target]:
        targets = self.routes.targets(trigger, series, state)
        if not self.hooks.routes_series:
            return targets
        chosen = tuple(dict.fromkeys(target.destination for target in targets))
        request = RoutedSeries(trigger, series, state, chosen)
        try:
            answer = self.hooks.route(request)
        except (Exception, SystemExit) as error:  # user code must not fail the transaction
            log.exception("route hook failed", extra=self._fields(request, one_line(error)))
            return targets
        if answer is None:
            return targets
        names = self._names(answer)
        if isinstance(names, str):
            log.error("route hook answer ignored", extra=self._fields(request, names))
            return targets
        wanted = dict.fromkeys(names)
        kept = [target for target in targets if target.destination in wanted]
        added = [Target(HOOK_RULE, name, 0) for name in wanted if name not in chosen]
        # Stable: the rules' order among equal priorities, the hook's after the rules' 0s.
        return sorted(kept + added, key=lambda target: -target.priority)

    def _names(self, answer: object) -> list[str] | str:
        """The destination names the hook answered, or what is wrong with its answer."""
        if not isinstance(answer, list | tuple) or not all(isinstance(n, str) for n in answer):
            return f"expected None or a list of destination names, got {answer!r:.200}"
        names = [str(name) for name in answer]
        unknown = [name for name in names if name not in self.routes.destinations]
        if unknown:
            defined = ", ".join(self.routes.destinations) or "none"
            return f"unknown destinations {unknown!r:.200} (defined: {defined})"
        return names

    def _fields(self, request: RoutedSeries, error: str) -> dict[str, str]:
        """The log record's fields: the hook, the series, what went wrong, what is kept."""
        return {
            "hook": self.hooks.qualified("route"),
            "trigger": request.trigger.value,
            "series_instance_uid": request.series_instance_uid,
            "calling_aet": request.calling_aet,
            "error": error,
            "kept": ",".join(request.destinations),
        }


def build_router(routes: Routes | None, hooks: Hooks) -> Router | None:
    """The router ``oxidip serve`` gives the registry: None when nothing is routed, the
    routes, or the routes with the ``route()`` hook. Raises ValueError when there is a route
    hook without routes (it can only name destinations of a routes file)."""
    if routes is None:
        if hooks.routes_series:
            raise ValueError(
                "defines route(), which names destinations of the routes file, but"
                " OXIDIP_ROUTES is not set"
            )
        return None
    return HookedRouter(routes, hooks) if hooks.routes_series else routes
