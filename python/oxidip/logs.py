"""Logging to stderr as text lines or JSON objects, with structured fields.

Fields are passed the standard way, ``log.info("listening", extra={"port": 11111})``, and
rendered as ``key=value`` after the message (text) or as members of the object (json):

    2026-11-23T10:00:00.123Z INFO listening host=0.0.0.0 port=11111 aet=OXIDIP
    {"ts": "2026-11-23T10:00:00.123Z", "level": "INFO", "msg": "listening", "port": 11111}
"""

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["JsonFormatter", "TextFormatter", "configure", "fields_of", "one_line"]

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

_RESERVED = ("ts", "level", "msg")


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (what was passed as ``extra``), in order."""
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD}


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line (libpq's messages span several)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds: 2026-11-23T10:00:00.123Z."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <msg> key=value ...``; values with spaces, quotes or ``=`` are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [timestamp(record.created), record.levelname, record.getMessage()]
        parts.extend(f"{key}={_text_value(value)}" for key, value in fields_of(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``msg``, then the fields (a field named
    like one of the first three is prefixed with ``field_``), and ``exc`` on exceptions."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            obj[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Sends all logging to ``stream`` (default stderr) in ``fmt`` ("text" or "json") at
    ``level``, replacing handlers configured before."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom (our C-FIND client) logs every PDU at INFO/DEBUG and every failed attempt
    # at ERROR; the expected-count lookup reports each outcome per series itself (state,
    # expected_detail), so pynetdicom is heard only when we debug.
    logging.getLogger("pynetdicom").setLevel(level if level == "DEBUG" else "CRITICAL")
    # The PostgreSQL pool logs a WARNING per failed reconnection attempt: dozens a minute
    # while the server is away. oxidip.registration logs an outage once, and its end once.
    logging.getLogger("psycopg.pool").setLevel(level if level == "DEBUG" else "CRITICAL")
