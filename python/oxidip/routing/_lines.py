"""Where a key is in a TOML text: the line numbers ``tomllib`` does not give.

``tomllib`` returns plain dicts, so a mistake found once the file parsed (an unknown key, a
bad port) has no line. ``KeyLines`` reads the text again, just enough to know the line of
every key: table headers (``[destinations.archive]``, ``[[rules]]`` counted, ``[rules.when]``
as the last rule's sub-table), ``key = value`` lines (dotted keys too) and the keys of
one-line inline tables (``when = { Modality = "CT" }``). A path it did not see gets the
line of the nearest enclosing key it saw (where that value starts), never past an array
element it did not see (an array of inline tables, say): then no line; it never guesses.
"""

import re
from collections.abc import Iterator

__all__ = ["KeyLines", "KeyPath"]

#: A key's path in the document: table keys, and array indexes for arrays of tables.
KeyPath = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_SIMPLE_KEY = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED_KEY = rf"{_SIMPLE_KEY}(?:\s*\.\s*{_SIMPLE_KEY})*"
_KEY_PART = re.compile(rf"\s*({_SIMPLE_KEY})\s*(\.)?")
_ARRAY_HEADER = re.compile(rf"\s*\[\[\s*({_DOTTED_KEY})\s*\]\]\s*(?:#.*)?")
_TABLE_HEADER = re.compile(rf"\s*\[\s*({_DOTTED_KEY})\s*\]\s*(?:#.*)?")
_KEY_VALUE = re.compile(rf"\s*({_DOTTED_KEY})\s*=\s*(.*)")
_INLINE_KEY = re.compile(rf"\s*({_DOTTED_KEY})\s*=")
_STRING = {'"': re.compile(_BASIC), "'": re.compile(_LITERAL)}


def _key_parts(text: str) -> tuple[str, ...]:
    """``a."b.c".d`` -> ("a", "b.c", "d"); escapes in quoted keys are kept as written (a key
    with escapes is then simply not found)."""
    parts: list[str] = []
    position = 0
    while position < len(text):
        match = _KEY_PART.match(text, position)
        if match is None:
            break
        part = match.group(1)
        parts.append(part[1:-1] if part[0] in "\"'" else part)
        position = match.end()
    return tuple(parts)


def _inline_keys(text: str) -> Iterator[tuple[str, ...]]:
    """The key paths of the inline table that ``text`` starts with (``{ A = "x", B.c = 1,
    D = { E = 2 } }``), relative to it; strings are skipped, so a comma or an equals sign
    inside a value is never read as a key."""
    prefixes: list[tuple[str, ...]] = []  # the key path of each open inline table
    expecting_key = False
    last_key: tuple[str, ...] = ()
    position = 0
    while position < len(text):
        char = text[position]
        if expecting_key:
            match = _INLINE_KEY.match(text, position)
            if match is not None:
                last_key = prefixes[-1] + _key_parts(match.group(1))
                yield last_key
                position = match.end()
            expecting_key = False
            continue
        if char in "\"'":
            match = _STRING[char].match(text, position)
            if match is None:
                return  # a multi-line string: leave it
            position = match.end()
            continue
        if char == "{":
            prefixes.append(last_key if prefixes else ())
            expecting_key = True
        elif char == "}":
            prefixes.pop()
            if not prefixes:
                return
        elif char == "," and prefixes:
            expecting_key = True
        elif char == "#":
            return
        position += 1


class KeyLines:
    """The line (1-based) of each key and table header of a TOML text."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        #: Arrays of tables seen, with the index of their last element.
        counts: dict[KeyPath, int] = {}
        table: KeyPath = ()
        in_string = ""
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:
                if line.count(in_string) % 2 == 1:
                    in_string = ""
                continue
            if (match := _ARRAY_HEADER.fullmatch(line)) is not None:
                parts = _key_parts(match.group(1))
                array = (*self._resolve(parts[:-1], counts), parts[-1])
                counts[array] = counts.get(array, -1) + 1
                table = (*array, counts[array])
                self._lines.setdefault(table, number)
                self._lines.setdefault(array, number)
            elif (match := _TABLE_HEADER.fullmatch(line)) is not None:
                table = self._resolve(_key_parts(match.group(1)), counts)
                self._lines.setdefault(table, number)
            elif (match := _KEY_VALUE.match(line)) is not None:
                key = (*table, *_key_parts(match.group(1)))
                self._lines.setdefault(key, number)
                value = match.group(2)
                if value.startswith("{"):
                    for inner in _inline_keys(value):
                        self._lines.setdefault((*key, *inner), number)
                for quotes in ('"""', "'''"):
                    if value.count(quotes) % 2 == 1:
                        in_string = quotes

    @staticmethod
    def _resolve(parts: tuple[str, ...], counts: dict[KeyPath, int]) -> KeyPath:
        """A header's path, each array of tables in it followed by its last index
        (``[rules.when]`` is the last rule's ``when``)."""
        path: KeyPath = ()
        for part in parts:
            path = (*path, part)
            if path in counts:
                path = (*path, counts[path])
        return path

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of the nearest key enclosing it that was seen, up to the
        nearest array element; None when none was."""
        while path:
            found = self._lines.get(path)
            if found is not None or isinstance(path[-1], int):
                return found
            path = path[:-1]
        return None
