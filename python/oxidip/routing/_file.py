"""Reading and validating a routes file (TOML, stdlib ``tomllib``; no code is ever run).

Every mistake found is reported, each as ``<file>:<line>: <key path>: <what is wrong>``
(``<file>: <key path>: ...`` when the key's line cannot be told, see ``_lines``); a TOML
syntax error, which stops the reading, as ``<file>:<line>:<column>: ...``.
"""

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oxidip.nodes import AE_TITLE_ACCEPTS, InvalidAeTitle, check_ae_title
from oxidip.routing._lines import KeyLines, KeyPath
from oxidip.routing._model import (
    FACT_KEYS,
    HOOK_RULE,
    Condition,
    Destination,
    IncompletePolicy,
    Rule,
    Trigger,
)

__all__ = ["RoutesError", "parse_routes"]


class RoutesError(ValueError):
    """A routes file cannot be used. ``problems`` has one message per mistake, each naming
    the file, the line (when known), the key and what is wrong; ``str()`` is them, one a
    line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


#: Names of destinations and rules: they show in ``oxidip queue``, logs and messages.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAME_ACCEPTS = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
#: The registry keeps priorities in a 32-bit integer column.
_PRIORITY_RANGE = (-(2**31), 2**31 - 1)
_MAX_ASSOCIATIONS = 1000

_TOP_KEYS = ("destinations", "rules")
_DESTINATION_KEYS = ("aet", "host", "port", "max_associations", "calling_aet")
_RULE_KEYS = ("name", "on", "when", "to", "priority", "incomplete")
_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def _path_text(path: KeyPath) -> str:
    """``rules[0].when.Modality``; a key that is not bare in quotes."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            text += f".{shown}" if text else shown
    return text


#: TOML's types, as Python gets them from tomllib, in words.
_KINDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    return _KINDS.get(type(value), f"a {type(value).__name__}")  # dates and times


def _unknown(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (known: {', '.join(known)})"


class _Reader:
    """Validates one parsed document, collecting every problem."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines = KeyLines(text)
        self.problems: list[str] = []

    def problem(self, path: KeyPath, what: str) -> None:
        line = self.lines.line(path)
        where = f"{self.source}:{line}" if line is not None else self.source
        self.problems.append(f"{where}: {_path_text(path)}: {what}")

    def unknown_keys(self, table: Mapping[str, Any], path: KeyPath, known: Sequence[str]) -> None:
        for key in table:
            if key not in known:
                self.problem((*path, key), _unknown(key, known))

    def typed(self, table: Mapping[str, Any], path: KeyPath, key: str, kind: type) -> Any:
        """``table[key]`` when it is a ``kind`` (a bool is no int); else a problem, None."""
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem((*path, key), f"must be {_KINDS[kind]}, not {_type_name(value)}")
            return None
        return value

    def integer(
        self, table: Mapping[str, Any], path: KeyPath, key: str, low: int, high: int
    ) -> int | None:
        value: int | None = self.typed(table, path, key, int)
        if value is not None and not low <= value <= high:
            self.problem((*path, key), f"must be from {low} to {high}, not {value}")
            return None
        return value

    def name(self, path: KeyPath, name: str, what: str) -> bool:
        if _NAME.fullmatch(name):
            return True
        self.problem(path, f"{what} {name!r} is not a valid name: {_NAME_ACCEPTS}")
        return False

    def ae_title(self, table: Mapping[str, Any], path: KeyPath, key: str) -> str | None:
        raw: str | None = self.typed(table, path, key, str)
        if raw is None:
            return None
        try:
            return check_ae_title(raw)
        except InvalidAeTitle as error:
            self.problem((*path, key), f"AE title {raw!r}: {error} ({AE_TITLE_ACCEPTS})")
            return None

    # --- destinations ----------------------------------------------------------------------

    def destinations(self, document: Mapping[str, Any]) -> dict[str, Destination]:
        tables = self.typed(document, (), "destinations", dict) or {}
        found: dict[str, Destination] = {}
        for name, table in tables.items():
            path: KeyPath = ("destinations", name)
            if not isinstance(table, dict):
                self.problem(path, f"must be a table (aet, host, port), not {_type_name(table)}")
                continue
            destination = self.destination(path, name, table)
            if destination is not None:
                found[name] = destination
        return found

    def destination(self, path: KeyPath, name: str, table: Mapping[str, Any]) -> Destination | None:
        before = len(self.problems)
        self.name(path, name, "destination")
        self.unknown_keys(table, path, _DESTINATION_KEYS)
        for key, meaning in (("aet", "its AE title"), ("host", "its address"), ("port", "")):
            if key not in table:
                self.problem(path, f"no {key}{f' ({meaning})' if meaning else ''}")
        aet = self.ae_title(table, path, "aet")
        host = self.host(table, path)
        port = self.integer(table, path, "port", 1, 65535)
        limit = self.integer(table, path, "max_associations", 1, _MAX_ASSOCIATIONS)
        calling_aet = self.ae_title(table, path, "calling_aet")
        if len(self.problems) > before or aet is None or host is None or port is None:
            return None
        return Destination(name, aet, host, port, 1 if limit is None else limit, calling_aet)

    def host(self, table: Mapping[str, Any], path: KeyPath) -> str | None:
        host: str | None = self.typed(table, path, "host", str)
        if host is None:
            return None
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        if _HOST_NAME.fullmatch(host):
            return host
        self.problem(
            (*path, "host"),
            f"{host!r} is not a host name or an IP address (IPv6 without brackets)",
        )
        return None

    # --- rules -----------------------------------------------------------------------------

    def rules(self, document: Mapping[str, Any], destinations: Sequence[str]) -> list[Rule]:
        entries = self.typed(document, (), "rules", list) or []
        rules: list[Rule] = []
        first: dict[str, KeyPath] = {}
        for index, entry in enumerate(entries):
            path: KeyPath = ("rules", index)
            if not isinstance(entry, dict):
                self.problem(path, f"must be a table ([[rules]]), not {_type_name(entry)}")
                continue
            name = self.typed(entry, path, "name", str)
            if name is None and "name" not in entry:
                self.problem(path, "no name")
            elif name is not None and name in first:
                line = self.lines.line(first[name])
                at = f" (line {line})" if line is not None else ""
                self.problem(
                    (*path, "name"),
                    f"{name!r} is already the name of {_path_text(first[name])}{at}",
                )
            elif name is not None:
                first[name] = path
            rule = self.rule(path, name, entry, destinations)
            if rule is not None:
                rules.append(rule)
        return rules

    def rule(
        self, path: KeyPath, name: str | None, entry: Mapping[str, Any], destinations: Sequence[str]
    ) -> Rule | None:
        before = len(self.problems)
        self.unknown_keys(entry, path, _RULE_KEYS)
        if name is not None and self.name((*path, "name"), name, "rule") and name == HOOK_RULE:
            self.problem((*path, "name"), f"{HOOK_RULE!r} is reserved for the route() hook")
        on = self.trigger(entry, path)
        to = self.to(entry, path, destinations)
        conditions = self.when(entry, path)
        priority = self.integer(entry, path, "priority", *_PRIORITY_RANGE)
        incomplete = self.incomplete(entry, path, on)
        if len(self.problems) > before or name is None or on is None or to is None:
            return None
        return Rule(name, on, to, conditions, priority or 0, incomplete)

    def trigger(self, entry: Mapping[str, Any], path: KeyPath) -> Trigger | None:
        choices = ", ".join(repr(trigger.value) for trigger in Trigger)
        if "on" not in entry:
            self.problem(path, f"no on (when the rule fires: one of {choices})")
            return None
        on = self.typed(entry, path, "on", str)
        if on is None:
            return None
        if on not in {trigger.value for trigger in Trigger}:
            close = difflib.get_close_matches(on, [trigger.value for trigger in Trigger], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.problem((*path, "on"), f"{on!r} is not a trigger{hint} (one of {choices})")
            return None
        return Trigger(on)

    def to(
        self, entry: Mapping[str, Any], path: KeyPath, destinations: Sequence[str]
    ) -> tuple[str, ...] | None:
        if "to" not in entry:
            self.problem(path, "no to (the names of the destinations to send to)")
            return None
        names = self.typed(entry, path, "to", list)
        if names is None:
            return None
        key = (*path, "to")
        if not names:
            self.problem(key, "empty: name at least one destination")
            return None
        known = ", ".join(destinations) or "none is defined"
        ok = True
        for name in names:
            if not isinstance(name, str):
                self.problem(key, f"must list destination names, not {_type_name(name)}")
                ok = False
            elif name not in destinations:
                close = difflib.get_close_matches(name, destinations, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(key, f"{name!r} is not a destination{hint} (destinations: {known})")
                ok = False
        duplicates = sorted({name for name in names if names.count(name) > 1}, key=str)
        if duplicates:
            self.problem(key, f"names {', '.join(map(repr, duplicates))} more than once")
            ok = False
        return tuple(names) if ok else None

    def when(self, entry: Mapping[str, Any], path: KeyPath) -> tuple[Condition, ...]:
        table = self.typed(entry, path, "when", dict) or {}
        conditions: list[Condition] = []
        for attribute, written in table.items():
            key = (*path, "when", attribute)
            if attribute not in FACT_KEYS:
                close = difflib.get_close_matches(attribute, FACT_KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(
                    key, f"not an attribute rules can test{hint} (known: {', '.join(FACT_KEYS)})"
                )
                continue
            if not isinstance(written, str):
                self.problem(
                    key, f"must be a regular expression in a string, not {_type_name(written)}"
                )
                continue
            try:
                conditions.append(Condition.parse(attribute, written))
            except re.error as error:
                pattern = written.removeprefix("!")
                self.problem(key, f"regular expression {pattern!r} does not compile: {error}")
        return tuple(conditions)

    def incomplete(
        self, entry: Mapping[str, Any], path: KeyPath, on: Trigger | None
    ) -> IncompletePolicy | None:
        policy = self.typed(entry, path, "incomplete", str)
        if "incomplete" not in entry:
            return IncompletePolicy.SEND if on is Trigger.SERIES_FINALIZED else None
        if policy is None:
            return None
        key = (*path, "incomplete")
        if policy not in {choice.value for choice in IncompletePolicy}:
            self.problem(key, f"{policy!r} is neither 'send' nor 'skip'")
        elif on is not None and on is not Trigger.SERIES_FINALIZED:
            self.problem(
                key,
                f"means nothing for on = {on.value!r}: only series-finalized rules send or"
                " skip series that did not end complete",
            )
        else:
            return IncompletePolicy(policy)
        return None


def parse_routes(text: str, source: str) -> tuple[dict[str, Destination], list[Rule]]:
    """The destinations and rules of a routes file's ``text``; ``source`` names it in
    messages. Raises RoutesError listing every mistake."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_POSITION.search(message)
        where = source
        if match is not None:
            message = message[: match.start()]
            if match.group(1) is not None:
                where = f"{source}:{match.group(1)}:{match.group(2)}"
            else:
                where = f"{source}: at the end"
        raise RoutesError([f"{where}: not valid TOML: {message}"]) from None
    reader = _Reader(source, text)
    reader.unknown_keys(document, (), _TOP_KEYS)
    destinations = reader.destinations(document)
    tables = document.get("destinations")
    names = list(tables) if isinstance(tables, dict) else []
    rules = reader.rules(document, names)
    if reader.problems:
        raise RoutesError(reader.problems)
    return destinations, rules


def read_routes(path: str | Path) -> tuple[dict[str, Destination], list[Rule]]:
    """``parse_routes`` of the file at ``path`` (RoutesError when it cannot be read)."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise RoutesError([f"{source}: cannot read it: {error.strerror or error}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RoutesError([f"{source}:{line}: not UTF-8 text (TOML files are)"]) from None
    return parse_routes(text, source)
