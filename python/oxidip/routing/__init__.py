"""Routing: which series go where (issue 11).

A routes file (``OXIDIP_ROUTES``, TOML read with stdlib ``tomllib``: no code is run) names
destinations and rules::

    [destinations.archive]
    aet = "ARCHIVE"          # called AE title
    host = "127.0.0.1"
    port = 11112
    max_associations = 2     # at most this many associations to it at once (default 1)
    calling_aet = "OXIDIP"   # ours towards it (default: OXIDIP_SCP_AET)

    [[rules]]
    name = "ct-to-archive"
    on = "series-complete"   # or "series-finalized" (with incomplete = "send"|"skip"), "instance"
    when = { Modality = "CT|MR", CallingAET = "!TEST.*" }   # all must hold
    to = ["archive"]
    priority = 10            # higher first (default 0)

``Routes.load`` reads and validates one (``RoutesError``: every mistake with its file, line
and key); ``Routes.targets`` is the ``Router`` the registry asks, inside the transaction of
each state change, which jobs to create; ``Routes.explain`` says why each rule matches a
series or not (``oxidip routes test``). ``HookedRouter`` adds the ``route()`` hook.
"""

from oxidip.routing._file import RoutesError
from oxidip.routing._hooked import HookedRouter, RoutedSeries, build_router
from oxidip.routing._model import (
    FACT_KEYS,
    HOOK_RULE,
    Condition,
    ConditionVerdict,
    Destination,
    IncompletePolicy,
    Router,
    Rule,
    RuleVerdict,
    SeriesFacts,
    Target,
    Trigger,
)
from oxidip.routing._routes import Routes

__all__ = [
    "FACT_KEYS",
    "HOOK_RULE",
    "Condition",
    "ConditionVerdict",
    "Destination",
    "HookedRouter",
    "IncompletePolicy",
    "RoutedSeries",
    "Router",
    "Routes",
    "RoutesError",
    "Rule",
    "RuleVerdict",
    "SeriesFacts",
    "Target",
    "Trigger",
    "build_router",
]
