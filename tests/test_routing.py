"""Routes files (``oxidip.routing``): matching, every kind of mistake and its message,
``oxidip serve`` refusing a bad file before it binds, ``oxidip routes check|test``, and the
``route()`` hook."""

import logging
import socket
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from oxidip.config import Config, ConfigError
from oxidip.hooks import Hooks
from oxidip.registry import SeriesState
from oxidip.routing import (
    FACT_KEYS,
    HOOK_RULE,
    HookedRouter,
    RoutedSeries,
    Router,
    Routes,
    RoutesError,
    Target,
    Trigger,
    _model,
    build_router,
)
from tests.helpers.process import clean_env, run_oxidip

DESTINATIONS = """\
[destinations.archive]
aet = "ARCHIVE"
host = "127.0.0.1"
port = 11112
max_associations = 2
[destinations.ai]
aet = "AI_NODE"
host = "ai.example.org"
port = 104
calling_aet = "OXIDIP_AI"
"""


def routes(rules: str) -> Routes:
    return Routes.parse(DESTINATIONS + textwrap.dedent(rules), "r.toml")


def facts(**values: str | None) -> dict[str, str | None]:
    return dict(values)


COMPLETE = SeriesState.COMPLETE


# --- reading ---------------------------------------------------------------------------


def test_destinations_and_rules_as_read() -> None:
    read = routes(
        """
        [[rules]]
        name = "r"
        on = "series-finalized"
        when = { Modality = "CT" }
        to = ["ai", "archive"]
        priority = -3
        """
    )
    assert dict(read.destinations) == {
        "archive": _model.Destination("archive", "ARCHIVE", "127.0.0.1", 11112, 2, None),
        "ai": _model.Destination("ai", "AI_NODE", "ai.example.org", 104, 1, "OXIDIP_AI"),
    }
    (rule,) = read.rules
    assert (rule.name, rule.on, rule.to, rule.priority) == (
        "r",
        Trigger.SERIES_FINALIZED,
        ("ai", "archive"),
        -3,
    )
    assert rule.incomplete == "send"  # the default of series-finalized rules
    assert read.triggers == {Trigger.SERIES_FINALIZED}


def test_the_issue_example_and_an_empty_file() -> None:
    read = Routes.parse(
        """
        [destinations.archive]
        aet = "ARCHIVE"          # called AE title
        host = "127.0.0.1"
        port = 11112
        max_associations = 2     # at most this many associations to it at once (default 1)

        [[rules]]
        name = "ct-to-archive"
        on = "series-complete"   # also "series-finalized" (any final state) and "instance"
        when = { Modality = "CT|MR", CallingAET = "SCANNER.*" }   # all must match
        to = ["archive"]
        """
    )
    assert read.targets(
        Trigger.SERIES_COMPLETE, facts(Modality="MR", CallingAET="SCANNER2"), COMPLETE
    ) == [Target("ct-to-archive", "archive", 0)]
    empty = Routes.parse("")
    assert (dict(empty.destinations), empty.rules, empty.triggers) == ({}, (), frozenset())


def test_series_states_compared_as_text_are_the_registry_values() -> None:
    assert _model._COMPLETE == SeriesState.COMPLETE
    assert _model._RECEIVING == SeriesState.RECEIVING


# --- matching --------------------------------------------------------------------------


def one_rule(when: str, on: str = "series-complete", extra: str = "") -> Routes:
    return routes(
        f"""
        [[rules]]
        name = "r"
        on = "{on}"
        when = {{ {when} }}
        to = ["archive"]
        {extra}
        """
    )


def matches(read: Routes, series: dict[str, str | None]) -> bool:
    return bool(read.targets(Trigger.SERIES_COMPLETE, series, COMPLETE))


def test_patterns_are_anchored() -> None:
    read = one_rule('Modality = "CT"')
    assert matches(read, facts(Modality="CT"))
    assert not matches(read, facts(Modality="CTX"))
    assert not matches(read, facts(Modality="XCT"))
    prefix = one_rule('SeriesDescription = "AX.*"')
    assert matches(prefix, facts(SeriesDescription="AX T1"))
    assert not matches(prefix, facts(SeriesDescription="COR AX"))
    either = one_rule('Modality = "CT|MR"')  # the alternation is anchored as a whole
    assert matches(either, facts(Modality="MR"))
    assert not matches(either, facts(Modality="MRX"))


def test_patterns_are_case_sensitive() -> None:
    assert not matches(one_rule('Modality = "CT"'), facts(Modality="ct"))
    assert matches(one_rule('Modality = "(?i)ct"'), facts(Modality="CT"))


def test_a_leading_bang_negates() -> None:
    read = one_rule('CallingAET = "!TEST.*"')
    assert matches(read, facts(CallingAET="SCANNER"))
    assert not matches(read, facts(CallingAET="TEST1"))
    assert matches(read, facts())  # "" is not TEST.*
    literal = one_rule('PatientID = "\\\\!x"')  # \! : a literal "!" first
    assert matches(literal, facts(PatientID="!x"))


def test_a_missing_value_matches_as_empty() -> None:
    empty = one_rule('AccessionNumber = ""')
    assert matches(empty, facts())
    assert matches(empty, facts(AccessionNumber=None))
    assert matches(empty, facts(AccessionNumber=""))
    assert not matches(empty, facts(AccessionNumber="A1"))
    present = one_rule('AccessionNumber = "!"')
    assert matches(present, facts(AccessionNumber="A1"))
    assert not matches(present, facts(AccessionNumber=None))
    assert not matches(one_rule('Modality = "CT"'), facts())


def test_every_condition_must_hold() -> None:
    read = one_rule('Modality = "CT", CallingAET = "SCANNER.*", CalledAET = "OXIDIP"')
    assert matches(read, facts(Modality="CT", CallingAET="SCANNER1", CalledAET="OXIDIP"))
    assert not matches(read, facts(Modality="CT", CallingAET="SCANNER1", CalledAET="OTHER"))
    assert not matches(read, facts(Modality="MR", CallingAET="SCANNER1", CalledAET="OXIDIP"))


def test_a_rule_without_conditions_takes_every_series() -> None:
    read = routes('[[rules]]\nname = "all"\non = "instance"\nto = ["ai"]\n')
    assert read.targets(Trigger.INSTANCE, {}, None) == [Target("all", "ai", 0)]


def test_several_rules_one_target_per_rule_and_destination_by_priority() -> None:
    read = routes(
        """
        [[rules]]
        name = "low"
        on = "series-complete"
        to = ["archive"]
        priority = -1

        [[rules]]
        name = "first-zero"
        on = "series-complete"
        when = { Modality = "CT" }
        to = ["ai", "archive"]

        [[rules]]
        name = "high"
        on = "series-complete"
        to = ["archive"]
        priority = 7

        [[rules]]
        name = "second-zero"
        on = "series-complete"
        to = ["ai"]

        [[rules]]
        name = "not-ct"
        on = "series-complete"
        when = { Modality = "!CT" }
        to = ["ai"]
        priority = 100

        [[rules]]
        name = "other-trigger"
        on = "instance"
        to = ["ai"]
        priority = 50
        """
    )
    assert read.targets(Trigger.SERIES_COMPLETE, facts(Modality="CT"), COMPLETE) == [
        Target("high", "archive", 7),
        Target("first-zero", "ai", 0),
        Target("first-zero", "archive", 0),
        Target("second-zero", "ai", 0),
        Target("low", "archive", -1),
    ]
    assert read.targets(Trigger.INSTANCE, facts(Modality="CT"), None) == [
        Target("other-trigger", "ai", 50)
    ]


FINAL_STATES = [state for state in SeriesState if state is not SeriesState.RECEIVING]


def fired(on: str, state: SeriesState | None, extra: str = "") -> bool:
    read = one_rule('Modality = "CT"', on=on, extra=extra)
    return bool(read.targets(Trigger(on), facts(Modality="CT"), state))


def test_triggers_and_the_incomplete_policy() -> None:
    assert fired("instance", None)
    for state in SeriesState:
        assert fired("series-complete", state) == (state is SeriesState.COMPLETE)
        assert fired("series-finalized", state) == (state is not SeriesState.RECEIVING)
        assert fired("series-finalized", state, 'incomplete = "send"') == (
            state is not SeriesState.RECEIVING
        )
        assert fired("series-finalized", state, 'incomplete = "skip"') == (
            state is SeriesState.COMPLETE
        )
    assert not fired("series-finalized", None)
    # A rule answers only its own trigger.
    read = one_rule('Modality = "CT"', on="series-complete")
    assert read.targets(Trigger.SERIES_FINALIZED, facts(Modality="CT"), COMPLETE) == []
    assert read.targets(Trigger.INSTANCE, facts(Modality="CT"), None) == []


def test_explain_says_why() -> None:
    read = routes(
        """
        [[rules]]
        name = "ct"
        on = "series-complete"
        when = { Modality = "CT", CallingAET = "!TEST.*" }
        to = ["archive"]

        [[rules]]
        name = "skip"
        on = "series-finalized"
        incomplete = "skip"
        to = ["ai"]
        """
    )
    ct, skip = read.explain(facts(Modality="MR", CallingAET="TEST1"), SeriesState.INCOMPLETE)
    assert (ct.rule, ct.matched, ct.fires) == ("ct", False, False)
    assert ct.trigger == "series-complete needs state complete; the series is incomplete"
    assert [str(c) for c in ct.conditions] == [
        "Modality 'MR' does not match 'CT'",
        "CallingAET 'TEST1' matches 'TEST.*' (which '!' forbids)",
    ]
    assert (skip.matched, skip.conditions) == (False, ())
    (ct, _) = read.explain(facts(Modality="CT"), COMPLETE)
    assert ct.matched
    assert [str(c) for c in ct.conditions] == [
        "Modality 'CT' matches 'CT'",
        "CallingAET (none) does not match 'TEST.*' (as '!' requires)",
    ]


# --- mistakes --------------------------------------------------------------------------

#: (id, the file after DESTINATIONS (whose last line is 10), every message it gives).
MISTAKES: list[tuple[str, str, list[str]]] = [
    (
        "toml-syntax",
        "[[rules]]\nname = ct\n",
        ["r.toml:12:8: not valid TOML: Invalid value"],
    ),
    (
        "unknown-top-level-key",
        "[rule]\nname = 'x'\n",
        ["r.toml:11: rule: unknown key; did you mean 'rules'? (known: destinations, rules)"],
    ),
    (
        "unknown-destination-key",
        '[destinations.pacs]\naet = "P"\nhost = "h"\nport = 1\ncolour = "red"\n',
        [
            (
                "r.toml:15: destinations.pacs.colour: unknown key (known: aet, host, port,"
                " max_associations, calling_aet)"
            )
        ],
    ),
    (
        "destination-without-aet",
        '[destinations.pacs]\nhost = "h"\nport = 1\n',
        ["r.toml:11: destinations.pacs: no aet (its AE title)"],
    ),
    (
        "destination-without-host",
        '[destinations.pacs]\naet = "P"\nport = 1\n',
        ["r.toml:11: destinations.pacs: no host (its address)"],
    ),
    (
        "destination-without-port",
        '[destinations.pacs]\naet = "P"\nhost = "h"\n',
        ["r.toml:11: destinations.pacs: no port"],
    ),
    (
        "bad-ae-title",
        '[destinations.pacs]\naet = "ABCDEFGHIJKLMNOPQ"\nhost = "h"\nport = 1\n',
        [
            (
                "r.toml:12: destinations.pacs.aet: AE title 'ABCDEFGHIJKLMNOPQ': 17 characters"
                " long, at most 16 allowed (1 to 16 printable ASCII characters without"
                " backslash, not only spaces)"
            )
        ],
    ),
    (
        "bad-calling-ae-title",
        '[destinations.pacs]\naet = "P"\nhost = "h"\nport = 1\ncalling_aet = " "\n',
        [
            (
                "r.toml:15: destinations.pacs.calling_aet: AE title ' ': empty or only spaces"
                " (1 to 16 printable ASCII characters without backslash, not only spaces)"
            )
        ],
    ),
    (
        "bad-host",
        '[destinations.pacs]\naet = "P"\nhost = "[::1]"\nport = 1\n',
        [
            (
                "r.toml:13: destinations.pacs.host: '[::1]' is not a host name or an IP address"
                " (IPv6 without brackets)"
            )
        ],
    ),
    (
        "port-out-of-range",
        '[destinations.pacs]\naet = "P"\nhost = "h"\nport = 65536\n',
        ["r.toml:14: destinations.pacs.port: must be from 1 to 65535, not 65536"],
    ),
    (
        "port-not-a-number",
        '[destinations.pacs]\naet = "P"\nhost = "h"\nport = "104"\n',
        ["r.toml:14: destinations.pacs.port: must be an integer, not a string"],
    ),
    (
        "max-associations-below-1",
        '[destinations.pacs]\naet = "P"\nhost = "h"\nport = 1\nmax_associations = 0\n',
        ["r.toml:15: destinations.pacs.max_associations: must be from 1 to 1000, not 0"],
    ),
    (
        "destination-name",
        '[destinations."my pacs"]\naet = "P"\nhost = "h"\nport = 1\n',
        [
            (
                "r.toml:11: destinations.\"my pacs\": destination 'my pacs' is not a valid name:"
                " 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        ],
    ),
    (
        "destination-not-a-table",
        "[destinations]\npacs = 3\n",
        ["r.toml:12: destinations.pacs: must be a table (aet, host, port), not an integer"],
    ),
    (
        "rules-not-an-array-of-tables",
        '[rules]\nname = "x"\n',
        ["r.toml:11: rules: must be an array, not a table"],
    ),
    (
        "rule-without-name",
        '[[rules]]\non = "instance"\nto = ["ai"]\n',
        ["r.toml:11: rules[0]: no name"],
    ),
    (
        "duplicate-rule-names",
        (
            '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\n\n'
            '[[rules]]\nname = "a"\non = "instance"\nto = ["archive"]\n'
        ),
        ["r.toml:17: rules[1].name: 'a' is already the name of rules[0] (line 11)"],
    ),
    (
        "rule-named-like-the-hook",
        '[[rules]]\nname = "route-hook"\non = "instance"\nto = ["ai"]\n',
        ["r.toml:12: rules[0].name: 'route-hook' is reserved for the route() hook"],
    ),
    (
        "unknown-rule-key",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\nfrom = "x"\n',
        ["r.toml:15: rules[0].from: unknown key (known: name, on, when, to, priority, incomplete)"],
    ),
    (
        "unknown-trigger",
        '[[rules]]\nname = "a"\non = "series-completed"\nto = ["ai"]\n',
        [
            (
                "r.toml:13: rules[0].on: 'series-completed' is not a trigger; did you mean"
                " 'series-complete'? (one of 'instance', 'series-complete', 'series-finalized')"
            )
        ],
    ),
    (
        "no-trigger",
        '[[rules]]\nname = "a"\nto = ["ai"]\n',
        [
            (
                "r.toml:11: rules[0]: no on (when the rule fires: one of 'instance',"
                " 'series-complete', 'series-finalized')"
            )
        ],
    ),
    (
        "to-empty",
        '[[rules]]\nname = "a"\non = "instance"\nto = []\n',
        ["r.toml:14: rules[0].to: empty: name at least one destination"],
    ),
    (
        "to-missing",
        '[[rules]]\nname = "a"\non = "instance"\n',
        ["r.toml:11: rules[0]: no to (the names of the destinations to send to)"],
    ),
    (
        "to-unknown-destination",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["archiv"]\n',
        [
            (
                "r.toml:14: rules[0].to: 'archiv' is not a destination; did you mean 'archive'?"
                " (destinations: archive, ai)"
            )
        ],
    ),
    (
        "to-not-a-list",
        '[[rules]]\nname = "a"\non = "instance"\nto = "ai"\n',
        ["r.toml:14: rules[0].to: must be an array, not a string"],
    ),
    (
        "to-twice",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["ai", "ai"]\n',
        ["r.toml:14: rules[0].to: names 'ai' more than once"],
    ),
    (
        "when-unknown-attribute",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\nwhen = { Modalty = "CT" }\n',
        [
            (
                "r.toml:15: rules[0].when.Modalty: not an attribute rules can test; did you mean"
                f" 'Modality'? (known: {', '.join(FACT_KEYS)})"
            )
        ],
    ),
    (
        "when-value-not-a-string",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\n\n[rules.when]\nSeriesNumber = 3\n',
        [
            (
                "r.toml:17: rules[0].when.SeriesNumber: must be a regular expression in a string,"
                " not an integer"
            )
        ],
    ),
    (
        "regex-does-not-compile",
        (
            '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\n'
            'when = { Modality = "CT", SeriesDescription = "!(AX" }\n'
        ),
        [
            (
                "r.toml:15: rules[0].when.SeriesDescription: regular expression '(AX' does not"
                " compile: missing ), unterminated subpattern at position 0"
            )
        ],
    ),
    (
        "incomplete-bad-value",
        '[[rules]]\nname = "a"\non = "series-finalized"\nto = ["ai"]\nincomplete = "drop"\n',
        ["r.toml:15: rules[0].incomplete: 'drop' is neither 'send' nor 'skip'"],
    ),
    (
        "incomplete-where-it-means-nothing",
        '[[rules]]\nname = "a"\non = "series-complete"\nto = ["ai"]\nincomplete = "skip"\n',
        [
            (
                "r.toml:15: rules[0].incomplete: means nothing for on = 'series-complete': only"
                " series-finalized rules send or skip series that did not end complete"
            )
        ],
    ),
    (
        "priority-not-an-int",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\npriority = 1.5\n',
        ["r.toml:15: rules[0].priority: must be an integer, not a number"],
    ),
    (
        "priority-a-boolean",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\npriority = true\n',
        ["r.toml:15: rules[0].priority: must be an integer, not a boolean"],
    ),
    (
        "priority-out-of-range",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\npriority = 2147483648\n',
        ["r.toml:15: rules[0].priority: must be from -2147483648 to 2147483647, not 2147483648"],
    ),
    (
        "every-mistake-is-reported",
        '[[rules]]\nname = "a"\non = "instance"\nto = ["nope"]\nwhen = { X = "1" }\n',
        [
            "r.toml:14: rules[0].to: 'nope' is not a destination (destinations: archive, ai)",
            (
                f"r.toml:15: rules[0].when.X: not an attribute rules can test (known:"
                f" {', '.join(FACT_KEYS)})"
            ),
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in MISTAKES], ids=[case[0] for case in MISTAKES]
)
def test_each_mistake_has_its_message(text: str, expected: list[str]) -> None:
    assert DESTINATIONS.count("\n") == 10
    with pytest.raises(RoutesError) as caught:
        Routes.parse(DESTINATIONS + text, "r.toml")
    assert caught.value.problems == expected
    assert str(caught.value) == "\n".join(expected)


def test_no_line_where_it_cannot_be_told() -> None:
    # Rules as an array of inline tables: the element's line is not known, the path says it.
    with pytest.raises(RoutesError) as caught:
        Routes.parse('rules = [{ name = "a", on = "instance", to = ["nope"] }]\n' + DESTINATIONS)
    assert caught.value.problems == [
        "<routes>: rules[0].to: 'nope' is not a destination (destinations: archive, ai)"
    ]


def test_lines_of_other_toml_forms() -> None:
    text = (
        '[destinations]\nx = { aet = "X", host = "h", port = 0 }\n'
        'y.aet = "Y"\ny.host = "h"\ny.port = 70000\n'
        '[[rules]]\nname = "r"\non = "instance"\nto = [\n  "x",\n  "z",\n]\n'
        '[rules.when]\nModality = "(CT"\n'
    )
    with pytest.raises(RoutesError) as caught:
        Routes.parse(text, "f")
    assert caught.value.problems == [
        "f:2: destinations.x.port: must be from 1 to 65535, not 0",
        "f:5: destinations.y.port: must be from 1 to 65535, not 70000",
        "f:9: rules[0].to: 'z' is not a destination (destinations: x, y)",
        (
            "f:14: rules[0].when.Modality: regular expression '(CT' does not compile: missing ),"
            " unterminated subpattern at position 0"
        ),
    ]


def test_a_file_that_cannot_be_read_or_is_not_utf8(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(RoutesError) as caught:
        Routes.load(missing)
    assert caught.value.problems == [f"{missing}: cannot read it: No such file or directory"]
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# ok\n# caf\xe9\n[destinations]\n")
    with pytest.raises(RoutesError) as caught:
        Routes.load(latin1)
    assert caught.value.problems == [f"{latin1}:2: not UTF-8 text (TOML files are)"]


def test_config_reads_the_routes_file(tmp_path: Path) -> None:
    good = tmp_path / "routes.toml"
    good.write_text(DESTINATIONS + '[[rules]]\nname = "a"\non = "instance"\nto = ["ai"]\n')
    routes_read = Config.from_env({"OXIDIP_ROUTES": str(good)}).forward.routes
    assert routes_read is not None and [rule.name for rule in routes_read.rules] == ["a"]
    bad = tmp_path / "bad.toml"
    bad.write_text(DESTINATIONS + '[[rules]]\nname = "a"\non = "instance"\nto = []\n')
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"OXIDIP_ROUTES": str(bad)})
    assert caught.value.problems == [
        f"OXIDIP_ROUTES={str(bad)!r}: {bad}:14: rules[0].to: empty: name at least one destination"
    ]


# --- oxidip serve and oxidip routes ----------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 bound and listening for the test: serve must never try it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_with_a_bad_routes_file_exits_2_before_binding(
    tmp_path: Path, busy_port: int
) -> None:
    bad = tmp_path / "routes.toml"
    bad.write_text(DESTINATIONS + '[[rules]]\nname = "a"\non = "instance"\nto = ["nope"]\n')
    root = tmp_path / "data"
    env = clean_env(
        OXIDIP_FILES_ROOT=str(root),
        OXIDIP_LISTENER_HOST="127.0.0.1",
        OXIDIP_LISTENER_PORT=str(busy_port),
        OXIDIP_ROUTES=str(bad),
    )
    result = run_oxidip("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"oxidip: configuration error: OXIDIP_ROUTES={str(bad)!r}: {bad}:14: rules[0].to:"
        " 'nope' is not a destination (destinations: archive, ai)\n"
    )
    assert not root.exists()  # it stopped before preparing storage, let alone binding


ROUTES_FILE = DESTINATIONS + textwrap.dedent(
    """
    [[rules]]
    name = "ct-to-archive"
    on = "series-complete"
    when = { Modality = "CT|MR", CallingAET = "SCANNER.*" }
    to = ["archive"]

    [[rules]]
    name = "not-test"
    on = "series-finalized"
    incomplete = "skip"
    when = { CallingAET = "!TEST.*" }
    to = ["ai"]
    priority = 5
    """
)


@pytest.fixture
def routes_file(tmp_path: Path) -> Path:
    path = tmp_path / "routes.toml"
    path.write_text(ROUTES_FILE)
    return path


def test_routes_check(routes_file: Path, tmp_path: Path) -> None:
    result = run_oxidip("routes", "check", str(routes_file), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{routes_file}: 2 destinations, 2 rules",
        (
            "  destination archive: ARCHIVE at 127.0.0.1:11112 (calling AE OXIDIP_SCP_AET,"
            " associations at most 2)"
        ),
        (
            "  destination ai: AI_NODE at ai.example.org:104 (calling AE OXIDIP_AI, associations"
            " at most 1)"
        ),
        (
            "  rule ct-to-archive: on series-complete (priority 0) when Modality = 'CT|MR',"
            " CallingAET = 'SCANNER.*' -> archive"
        ),
        (
            "  rule not-test: on series-finalized (priority 5, incomplete skip) when"
            " CallingAET = '!TEST.*' -> ai"
        ),
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text(ROUTES_FILE.replace('"SCANNER.*"', '"SCANNER.*("'))
    result = run_oxidip("routes", "check", str(bad), env=clean_env())
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"{bad}:15: rules[0].when.CallingAET: regular expression 'SCANNER.*(' does not"
        " compile: missing ), unterminated subpattern at position 9\n"
    )


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path


def test_routes_test_on_dicom_files(routes_file: Path) -> None:
    ct, mr = pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")
    result = run_oxidip(
        "routes", "test", str(routes_file), "--calling-aet", "SCANNER1", ct, mr, env=clean_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        (
            "series 1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322 (CT; 1 file: CT_small.dcm;"
            " state complete for series rules)"
        ),
        "  MATCH    ct-to-archive (on series-complete, priority 0) -> archive",
        "             ok   Modality 'CT' matches 'CT|MR'",
        "             ok   CallingAET 'SCANNER1' matches 'SCANNER.*'",
        "  MATCH    not-test (on series-finalized, priority 5) -> ai",
        "             ok   CallingAET 'SCANNER1' does not match 'TEST.*' (as '!' requires)",
        (
            "series 1.3.6.1.4.1.5962.1.3.4.1.20040826185059.5457 (MR; 1 file: MR_small.dcm;"
            " state complete for series rules)"
        ),
        "  MATCH    ct-to-archive (on series-complete, priority 0) -> archive",
        "             ok   Modality 'MR' matches 'CT|MR'",
        "             ok   CallingAET 'SCANNER1' matches 'SCANNER.*'",
        "  MATCH    not-test (on series-finalized, priority 5) -> ai",
        "             ok   CallingAET 'SCANNER1' does not match 'TEST.*' (as '!' requires)",
    ]


def test_routes_test_says_which_condition_failed(routes_file: Path, tmp_path: Path) -> None:
    nm = pydicom_file("JPEG2000.dcm")
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not DICOM")
    result = run_oxidip(
        "routes",
        "test",
        str(routes_file),
        "--calling-aet",
        "TEST7",
        "--state",
        "incomplete",
        nm,
        str(not_dicom),
        env=clean_env(),
    )
    assert result.returncode == 1  # a file could not be read
    assert result.stderr.startswith(f"oxidip routes: {not_dicom}: cannot read it: ")
    assert result.stdout.splitlines()[1:] == [
        "  no match ct-to-archive (on series-complete, priority 0) -> archive",
        "             trigger: series-complete needs state complete; the series is incomplete",
        "             FAIL Modality 'NM' does not match 'CT|MR'",
        "             FAIL CallingAET 'TEST7' does not match 'SCANNER.*'",
        "  no match not-test (on series-finalized, priority 5) -> ai",
        (
            '             trigger: series-finalized with incomplete = "skip" needs complete; it'
            " is incomplete"
        ),
        "             FAIL CallingAET 'TEST7' matches 'TEST.*' (which '!' forbids)",
    ]


# --- the route() hook ------------------------------------------------------------------

HOOKED_RULES = """
[[rules]]
name = "ct"
on = "series-complete"
when = { Modality = "CT" }
to = ["archive"]
priority = 3

[[rules]]
name = "everything"
on = "series-complete"
to = ["ai"]
priority = -1
"""

CT = facts(Modality="CT", SeriesInstanceUID="1.2.3", CallingAET="SCANNER")


def hooked(route: Callable[[RoutedSeries], object]) -> HookedRouter:
    return HookedRouter(routes(HOOKED_RULES), Hooks(route=route))


def test_the_hook_sees_the_series_and_none_keeps_the_rules_targets() -> None:
    seen: list[RoutedSeries] = []

    def route(series: RoutedSeries) -> None:
        seen.append(series)

    router: Router = hooked(route)
    assert router.targets(Trigger.SERIES_COMPLETE, CT, COMPLETE) == [
        Target("ct", "archive", 3),
        Target("everything", "ai", -1),
    ]
    (series,) = seen
    assert (series.trigger, series.state, series.destinations) == (
        Trigger.SERIES_COMPLETE,
        COMPLETE,
        ("archive", "ai"),
    )
    assert series["Modality"] == "CT" and series["PatientID"] is None
    assert set(series) == set(FACT_KEYS)
    assert (series.series_instance_uid, series.calling_aet) == ("1.2.3", "SCANNER")
    with pytest.raises(TypeError):
        series._facts["Modality"] = "MR"  # type: ignore[index]
    # Every trigger goes to the hook, even one no rule fires on.
    assert router.triggers == frozenset(Trigger)
    assert router.targets(Trigger.INSTANCE, CT, None) == []
    assert seen[-1].trigger is Trigger.INSTANCE and seen[-1].destinations == ()


def test_the_hook_adds_a_destination() -> None:
    router = hooked(lambda series: [*series.destinations, "ai"] if series["Modality"] else None)
    assert router.targets(Trigger.SERIES_COMPLETE, facts(Modality="MR"), COMPLETE) == [
        Target("everything", "ai", -1)
    ]  # already chosen by a rule: kept as the rule's
    router = HookedRouter(
        routes('[[rules]]\nname = "ct"\non = "instance"\nto = ["archive"]\npriority = 1\n'),
        Hooks(route=lambda series: [*series.destinations, "ai"]),
    )
    assert router.targets(Trigger.INSTANCE, CT, None) == [
        Target("ct", "archive", 1),
        Target(HOOK_RULE, "ai", 0),
    ]


def test_the_hook_replaces_the_destinations() -> None:
    router = hooked(lambda series: ["ai"])
    assert router.targets(Trigger.SERIES_COMPLETE, CT, COMPLETE) == [Target("everything", "ai", -1)]
    router = hooked(lambda series: [])
    assert router.targets(Trigger.SERIES_COMPLETE, CT, COMPLETE) == []


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (["archive", "pacs"], "unknown destinations ['pacs'] (defined: archive, ai)"),
        ("ai", "expected None or a list of destination names, got 'ai'"),
        ([1], "expected None or a list of destination names, got [1]"),
    ],
)
def test_a_wrong_answer_is_logged_and_the_rules_targets_kept(
    answer: object, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    router = hooked(lambda series: answer)
    with caplog.at_level(logging.ERROR, logger="oxidip.routing"):
        targets = router.targets(Trigger.SERIES_COMPLETE, CT, COMPLETE)
    assert targets == [Target("ct", "archive", 3), Target("everything", "ai", -1)]
    (record,) = caplog.records
    assert record.getMessage() == "route hook answer ignored"
    assert record.__dict__["error"] == error
    assert record.__dict__["kept"] == "archive,ai"
    assert record.__dict__["series_instance_uid"] == "1.2.3"


def test_a_raising_hook_is_logged_and_the_rules_targets_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def route(series: RoutedSeries) -> list[str]:
        raise RuntimeError("lookup service down")

    with caplog.at_level(logging.ERROR, logger="oxidip.routing"):
        targets = hooked(route).targets(Trigger.SERIES_COMPLETE, CT, COMPLETE)
    assert targets == [Target("ct", "archive", 3), Target("everything", "ai", -1)]
    (record,) = caplog.records
    assert record.getMessage() == "route hook failed"
    assert record.__dict__["error"] == "RuntimeError: lookup service down"
    assert record.__dict__["hook"] == "route"
    assert record.exc_info is not None


def test_build_router() -> None:
    read = routes(HOOKED_RULES)
    assert build_router(None, Hooks()) is None
    assert build_router(read, Hooks()) is read
    router = build_router(read, Hooks(route=lambda series: None))
    assert isinstance(router, HookedRouter)
    with pytest.raises(ValueError, match="OXIDIP_ROUTES is not set"):
        build_router(None, Hooks(route=lambda series: None))


def test_a_hooks_module_with_only_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "oxidip_test_route_hook.py").write_text(
        "def route(series):\n    return [*series.destinations, 'ai']\n"
    )
    hooks = Hooks.load("oxidip_test_route_hook")
    try:
        assert hooks.names == ["route"] and hooks.routes_series
        router = build_router(routes(HOOKED_RULES), hooks)
        assert router is not None
        assert router.targets(Trigger.SERIES_COMPLETE, facts(Modality="MR"), COMPLETE) == [
            Target("everything", "ai", -1)
        ]
        assert router.targets(Trigger.INSTANCE, CT, None) == [Target(HOOK_RULE, "ai", 0)]
    finally:
        hooks.close(0)
