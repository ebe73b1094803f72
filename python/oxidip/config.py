"""oxidip's configuration, read from ``OXIDIP_*`` environment variables.

The variables are declared once, in ``VARIABLES``: name, default, parser (which knows what it
accepts) and a one-line description. ``Config`` has one field per variable, named after it
(``OXIDIP_LISTENER_PORT`` -> ``listener_port``), except the variables of a group, which fill
a struct of their own: ``OXIDIP_ROUTES`` and ``OXIDIP_FORWARD_*`` are ``Config.forward``
(``OXIDIP_FORWARD_RETRY_BASE`` -> ``forward.retry_base``). To add a variable, add a
``Variable`` to the table and the matching field to ``Config`` (or to its group's struct).
"""

import difflib
import enum
import grp
import ipaddress
import logging
import math
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from oxidip import _core
from oxidip._boundary import AckMode, CoreConfig, DuplicatesPolicy, FsyncPolicy, TlsListener
from oxidip.nodes import AE_TITLE_ACCEPTS, InvalidAeTitle, NodeDirectory, check_ae_title
from oxidip.routing import Routes, RoutesError

__all__ = [
    "PREFIX",
    "VARIABLES",
    "Config",
    "ConfigError",
    "ForwardConfig",
    "Variable",
    "unknown_variables",
    "warn_unknown_variables",
]

PREFIX = "OXIDIP_"

log = logging.getLogger("oxidip.config")


class ConfigError(ValueError):
    """One or more variables have invalid values. ``problems`` holds one message per variable,
    each naming the variable, the bad value and what it accepts."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


#: Exit status of a command that refused its configuration.
EXIT_CONFIG = 2


def report_config_error(problems: Sequence[str]) -> int:
    """Prints each problem on stderr, as every oxidip command does; returns EXIT_CONFIG."""
    for problem in problems:
        print(f"oxidip: configuration error: {problem}", file=sys.stderr)
    return EXIT_CONFIG


class Invalid(Exception):
    """Raised by a parser. The message, possibly empty, says what is wrong with the value; the
    caller adds the variable, the value and what the parser accepts."""


# --- parsers -----------------------------------------------------------------------------
# Each parser turns the raw text of a variable into a value and knows how to describe what it
# accepts (``accepts``, used in error messages, ``--help`` and the README table).


class Integer(msgspec.Struct, frozen=True):
    minimum: int
    maximum: int
    #: An extra accepted value outside the range, with its meaning (e.g. 0 = no limit).
    special: tuple[int, str] | None = None
    #: Meaning of a value inside the range worth spelling out, e.g. "0 = any free port".
    note: str = ""

    @property
    def accepts(self) -> str:
        text = f"an integer from {self.minimum} to {self.maximum}"
        if self.special is not None:
            value, meaning = self.special
            text = f"{value} ({meaning}) or {text}"
        if self.note:
            text += f" ({self.note})"
        return text

    def __call__(self, raw: str) -> int:
        text = raw.strip()
        if not re.fullmatch(r"-?[0-9]+", text, re.ASCII):
            raise Invalid()
        try:
            value = int(text)
        except ValueError:  # more digits than int() converts
            raise Invalid() from None
        if self.special is not None and value == self.special[0]:
            return value
        if not self.minimum <= value <= self.maximum:
            raise Invalid()
        return value


class Seconds(msgspec.Struct, frozen=True):
    """A non-negative decimal number of seconds (no exponent, no inf/nan)."""

    maximum: float
    zero: str | None = None  # meaning of 0, when 0 is allowed

    @property
    def accepts(self) -> str:
        if self.zero is None:
            return f"a number of seconds greater than 0 and at most {self.maximum:g}"
        return f"a number of seconds from 0 to {self.maximum:g} (0 = {self.zero})"

    def __call__(self, raw: str) -> float:
        text = raw.strip()
        if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text, re.ASCII):
            raise Invalid()
        value = float(text)
        if not math.isfinite(value) or value > self.maximum:
            raise Invalid()
        if value == 0 and self.zero is None:
            raise Invalid()
        return value


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class Boolean(msgspec.Struct, frozen=True):
    accepts: str = "a boolean: true/false, 1/0, yes/no or on/off"

    def __call__(self, raw: str) -> bool:
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise Invalid()


class Choice(msgspec.Struct, frozen=True):
    """One of a fixed set of words, matched case-insensitively; returns the canonical one,
    made a ``kind`` (the enum of the words, for ``Choice.of``)."""

    options: tuple[str, ...]
    kind: Callable[[str], Any] = str

    @classmethod
    def of(cls, kind: type[enum.StrEnum]) -> "Choice":
        """The values of ``kind``, each read as its member."""
        return cls(tuple(member.value for member in kind), kind)

    @property
    def accepts(self) -> str:
        return "one of " + ", ".join(self.options)

    def __call__(self, raw: str) -> Any:
        text = raw.strip().lower()
        for option in self.options:
            if option.lower() == text:
                return self.kind(option)
        raise Invalid()


class IpAddress(msgspec.Struct, frozen=True):
    accepts: str = "an IPv4 or IPv6 address, e.g. 0.0.0.0, 127.0.0.1 or ::"

    def __call__(self, raw: str) -> str:
        try:
            return str(ipaddress.ip_address(raw.strip()))
        except ValueError:
            raise Invalid() from None


def _check_ae_title(raw: str) -> str:
    """``nodes.check_ae_title``, its complaint as a parser's."""
    try:
        return check_ae_title(raw)
    except InvalidAeTitle as error:
        raise Invalid(str(error)) from None


class AeTitle(msgspec.Struct, frozen=True):
    accepts: str = f"an AE title: {AE_TITLE_ACCEPTS}"

    def __call__(self, raw: str) -> str:
        return _check_ae_title(raw)


def _split_list(raw: str) -> list[str]:
    """Comma-separated items, surrounding whitespace removed; empty text is an empty list;
    an empty item ("A,,B", "A,") is an error. Duplicates are dropped, order kept."""
    if not raw.strip():
        return []
    items: list[str] = []
    for position, item in enumerate(raw.split(","), start=1):
        item = item.strip()
        if not item:
            raise Invalid(f"item {position} is empty")
        if item not in items:
            items.append(item)
    return items


class AeTitleList(msgspec.Struct, frozen=True):
    accepts: str = f"comma-separated AE titles ({AE_TITLE_ACCEPTS}), or empty"

    def __call__(self, raw: str) -> tuple[str, ...]:
        titles: list[str] = []
        for item in _split_list(raw):
            try:
                title = _check_ae_title(item)
            except Invalid as error:
                raise Invalid(f"AE title {item!r}: {error}") from None
            if title not in titles:
                titles.append(title)
        return tuple(titles)


class KeywordList(msgspec.Struct, frozen=True):
    keywords: tuple[str, ...]

    @property
    def accepts(self) -> str:
        return "comma-separated keywords (or empty for none) from: " + ", ".join(self.keywords)

    def __call__(self, raw: str) -> tuple[str, ...]:
        items = _split_list(raw)
        for item in items:
            if item not in self.keywords:
                close = difflib.get_close_matches(item, self.keywords, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise Invalid(f"{item!r} is not an extracted attribute{hint}")
        return tuple(items)


class DirectoryPath(msgspec.Struct, frozen=True):
    accepts: str = "a directory path, absolute or relative to the working directory"

    def __call__(self, raw: str) -> str:
        if not raw.strip():
            raise Invalid("empty")
        if "\0" in raw:
            raise Invalid("contains a NUL character")
        return raw


class Mode(msgspec.Struct, frozen=True):
    """Octal permission bits (``0640``, ``640``) that keep at least ``owner`` for the owner."""

    owner: int
    example: str

    @property
    def accepts(self) -> str:
        return (
            f"octal permission bits from {self.owner:04o} to 0777 that keep {self.owner:04o}"
            f" for the owner, e.g. {self.example}"
        )

    def __call__(self, raw: str) -> int:
        text = raw.strip()
        if not re.fullmatch(r"0?[0-7]{3}", text, re.ASCII):
            raise Invalid()
        mode = int(text, 8)
        if mode & self.owner != self.owner:
            raise Invalid(f"the owner needs {self.owner:04o}")
        return mode


class Group(msgspec.Struct, frozen=True):
    accepts: str = "empty (the process's group), a group name or a numeric gid"

    def __call__(self, raw: str) -> int | None:
        text = raw.strip()
        if not text:
            return None
        if re.fullmatch(r"[0-9]+", text, re.ASCII):
            gid = int(text)
            if gid > 0xFFFFFFFE:
                raise Invalid("gid out of range")
            return gid
        try:
            return grp.getgrnam(text).gr_gid
        except KeyError:
            raise Invalid("no such group") from None


class ReadableFile(msgspec.Struct, frozen=True):
    """A file that must exist and be readable now (what is in it is checked once every
    variable parsed: the TLS files by ``_listener_problems``, the routes file by
    ``_forward_problems``); empty for none."""

    accepts: str

    def __call__(self, raw: str) -> str | None:
        if not raw.strip():
            return None
        if "\0" in raw:
            raise Invalid("contains a NUL character")
        try:
            with open(raw, "rb"):
                pass
        except OSError as error:
            raise Invalid(f"cannot read it: {error.strerror}") from None
        return raw


PEM_FILE = ReadableFile("empty, or the path of a readable PEM file")
ROUTES_FILE = ReadableFile(
    "empty (nothing forwarded), or the path of a readable routes file (see README: Routing)"
)


class PathTemplate(msgspec.Struct, frozen=True):
    accepts: str = "a path template (see README: Path template)"

    def __call__(self, raw: str) -> str:
        try:
            _core.check_path_template(raw)
        except ValueError as error:
            raise Invalid(f"invalid path template: {error}") from None
        return raw


class DatabaseUrl(msgspec.Struct, frozen=True):
    accepts: str = "empty (SQLite under the storage root) or a postgresql:// URL"

    def __call__(self, raw: str) -> str | None:
        text = raw.strip()
        if not text:
            return None
        if not text.startswith(("postgresql://", "postgres://")):
            raise Invalid()
        try:
            _ = urllib.parse.urlsplit(text).port
        except ValueError:
            raise Invalid("its port is not a number from 0 to 65535") from None
        # Imported here, for a PostgreSQL URL only: ~80 ms of every start otherwise.
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(text)
        except psycopg.ProgrammingError as error:
            # libpq's reason, without the URL it quotes (it may hold a password).
            reason = str(error).split(" in URI", 1)[0].strip()
            raise Invalid(f"libpq cannot read it: {reason}") from None
        return text


class PacsAddresses(msgspec.Struct, frozen=True):
    accepts: str = "empty, or comma-separated AET=host:port pairs, e.g. PACS=10.0.0.5:104"

    def __call__(self, raw: str) -> str:
        try:
            NodeDirectory.parse(raw)
        except ValueError as error:
            raise Invalid(str(error)) from None
        return raw.strip()


class ModulePath(msgspec.Struct, frozen=True):
    accepts: str = "empty, or an importable Python module path such as mypackage.hooks"

    def __call__(self, raw: str) -> str | None:
        text = raw.strip()
        if not text:
            return None
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", text, re.ASCII):
            raise Invalid()
        return text


class NatsAddress(msgspec.Struct, frozen=True):
    accepts: str = "empty (no notifications), or a NATS server such as nats://127.0.0.1:4222"

    def __call__(self, raw: str) -> str | None:
        text = raw.strip()
        if not text:
            return None
        if not re.fullmatch(r"(nats|tls)://[^\s/]+", text) and not re.fullmatch(
            r"[^\s/:]+:[0-9]+", text
        ):
            raise Invalid()
        return text


class Subject(msgspec.Struct, frozen=True):
    accepts: str = "empty (our AE title), or a NATS subject: tokens of letters, digits, - and _"

    def __call__(self, raw: str) -> str:
        text = raw.strip()
        if text and not re.fullmatch(r"[\w-]+(\.[\w-]+)*", text, re.ASCII):
            raise Invalid()
        return text


class Parser(Protocol):
    """Turns the raw text of a variable into its value, or raises Invalid."""

    @property
    def accepts(self) -> str:
        """What the parser accepts, as a phrase that follows "expected"."""
        ...

    def __call__(self, raw: str, /) -> Any: ...


class OrEmpty(msgspec.Struct, frozen=True):
    """Empty text is None (``meaning`` says what that does); any other goes to ``parse``."""

    parse: Parser
    meaning: str

    @property
    def accepts(self) -> str:
        return f"empty ({self.meaning}) or {self.parse.accepts}"

    def __call__(self, raw: str) -> Any:
        return None if not raw.strip() else self.parse(raw)


class Variable(msgspec.Struct, frozen=True):
    """One environment variable: its name, default (as text, parsed like any other value),
    parser and a short description."""

    name: str
    default: str
    parse: Parser
    help: str
    #: The value may hold a password: error messages do not repeat it.
    secret: bool = False
    #: The ``Config`` field holding the struct this variable is a field of ("": none).
    group: str = ""

    @property
    def field(self) -> str:
        """The ``Config`` field: the name without the prefix, lower case; for a variable of
        a group, ``group.field``, its field in the group's struct, without the group's name
        (``OXIDIP_FORWARD_LEASE`` -> ``forward.lease``): ``operator.attrgetter`` reads it."""
        field = self.name.removeprefix(PREFIX).lower()
        if not self.group:
            return field
        return f"{self.group}.{field.removeprefix(self.group + '_')}"

    @property
    def accepts(self) -> str:
        return self.parse.accepts

    def read(self, raw: str) -> Any:
        """Parses ``raw``; raises ConfigError naming the variable, the value and what it
        accepts."""
        try:
            return self.parse(raw)
        except Invalid as error:
            reason = f"{error}; " if str(error) else ""
            shown = "(value not shown: it may hold a password)" if self.secret else repr(raw)
            raise ConfigError([f"{self.name}={shown}: {reason}expected {self.accepts}"]) from None


_MAX_SECONDS = 7 * 24 * 3600.0

VARIABLES: tuple[Variable, ...] = (
    Variable("OXIDIP_LISTENER_HOST", "0.0.0.0", IpAddress(), "Address to listen on."),
    Variable(
        "OXIDIP_LISTENER_PORT",
        "11111",
        Integer(0, 65535, note="0 = any free port"),
        "TCP port to listen on.",
    ),
    Variable(
        "OXIDIP_PLAIN_LISTENER",
        "true",
        Boolean(),
        "Listen for plain (unencrypted) DICOM on OXIDIP_LISTENER_PORT; false: only on the TLS"
        " listener, which must then be configured.",
    ),
    Variable(
        "OXIDIP_TLS_PORT",
        # The registered dicom-tls port (PS3.15 annex B).
        "2762",
        Integer(0, 65535, note="0 = any free port"),
        "TCP port of the DICOM TLS listener, on when OXIDIP_TLS_CERT and OXIDIP_TLS_KEY are set.",
    ),
    Variable(
        "OXIDIP_TLS_CERT",
        "",
        PEM_FILE,
        "PEM certificate chain (ours first) of the TLS listener; with OXIDIP_TLS_KEY it turns"
        " the listener on.",
    ),
    Variable("OXIDIP_TLS_KEY", "", PEM_FILE, "PEM private key of OXIDIP_TLS_CERT."),
    Variable(
        "OXIDIP_TLS_CA",
        "",
        PEM_FILE,
        "PEM CA certificates: TLS clients must present a certificate signed by one (mutual"
        " TLS). Empty: no client certificate asked for.",
    ),
    Variable("OXIDIP_SCP_AET", "OXIDIP", AeTitle(), "Our AE title."),
    Variable(
        "OXIDIP_SCP_ENFORCE_AET",
        "false",
        Boolean(),
        "Reject associations whose called AE title is not ours"
        " (A-ASSOCIATE-RJ permanent, source 1, reason 7).",
    ),
    Variable(
        "OXIDIP_ALLOWED_CALLING_AETS",
        "",
        AeTitleList(),
        "Calling AE titles allowed to associate; others are rejected"
        " (A-ASSOCIATE-RJ permanent, source 1, reason 3). Empty: anyone.",
    ),
    Variable("OXIDIP_FILES_ROOT", "./data", DirectoryPath(), "Directory files are stored under."),
    Variable(
        "OXIDIP_FILE_MODE",
        "0640",
        Mode(0o600, "0640"),
        "Permissions of stored files (whatever the umask): owner and the group of the"
        " backend that reads them, by default.",
    ),
    Variable(
        "OXIDIP_DIR_MODE",
        "0750",
        Mode(0o700, "0750"),
        "Permissions of the directories created for stored files (whatever the umask).",
    ),
    Variable(
        "OXIDIP_GROUP",
        "",
        Group(),
        "Group of stored files and their directories (the storage root and its directories"
        " get the setgid bit, so what is created below inherits it).",
    ),
    Variable(
        "OXIDIP_SCP_MAX_PDU_LENGTH",
        # dcmtk never sends more than 131072 however much is announced; see README Benchmarks.
        "131072",
        Integer(4096, 134217728, special=(0, "no limit")),
        "Maximum PDU length we announce (A-ASSOCIATE-AC maximum length sub-item) and accept.",
    ),
    Variable(
        "OXIDIP_SCP_STRICT",
        "false",
        Boolean(),
        "Refuse (A-ABORT) a P-DATA-TF PDU longer than the maximum we announce;"
        " when false, tolerate up to 64 MiB.",
    ),
    Variable(
        "OXIDIP_SCP_PROMISCUOUS",
        "false",
        Boolean(),
        "Accept presentation contexts of unknown SOP classes.",
    ),
    Variable(
        "OXIDIP_SCP_UNCOMPRESSED_ONLY",
        "false",
        Boolean(),
        "Accept only uncompressed transfer syntaxes.",
    ),
    Variable(
        "OXIDIP_MAX_ASSOCIATIONS",
        "1000",
        Integer(1, 100000),
        "Associations served at the same time; more are rejected.",
    ),
    Variable(
        "OXIDIP_PATH_TEMPLATE",
        _core.DEFAULT_PATH_TEMPLATE,
        PathTemplate(),
        "Where each instance is stored, relative to OXIDIP_FILES_ROOT.",
    ),
    Variable(
        "OXIDIP_FSYNC",
        "none",
        Choice.of(FsyncPolicy),
        "Durability before answering success: none, fsync the file, or the file and its directory.",
    ),
    Variable(
        "OXIDIP_DUPLICATES",
        "overwrite",
        Choice.of(DuplicatesPolicy),
        "What to do when a file is already at an instance's path.",
    ),
    Variable(
        "OXIDIP_REQUIRED_ATTRIBUTES",
        # What identifying an instance needs. Not PatientID: it is Type 2 (may be empty) in
        # every IOD, and dcmtk's storescp and Orthanc store instances without one.
        "StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID",
        KeywordList(tuple(_core.EXTRACTED_KEYWORDS)),
        "Instances without a value for any of these are refused (C001) and not stored.",
    ),
    Variable(
        "OXIDIP_INFLATE_MAX_MIB",
        "4096",
        Integer(1, 1048576),
        "A deflated data set that would inflate past this many MiB is refused (A701).",
    ),
    Variable(
        "OXIDIP_INFLATE_MAX_RATIO",
        "200",
        Integer(1, 1000000),
        "A deflated data set that inflates more than this to 1 (past its first MiB) is refused"
        " (A701).",
    ),
    Variable(
        "OXIDIP_ARTIM_TIMEOUT",
        "30",
        Seconds(_MAX_SECONDS),
        "ARTIM timer (PS3.8): how long to wait for an A-ASSOCIATE-RQ after a connection"
        " opens, and for the peer to close after release or abort.",
    ),
    Variable(
        "OXIDIP_IDLE_TIMEOUT",
        "300",
        Seconds(_MAX_SECONDS, zero="no idle timeout"),
        "An association that sends nothing for this long is aborted.",
    ),
    Variable(
        "OXIDIP_WRITE_TIMEOUT",
        "30",
        Seconds(_MAX_SECONDS),
        "How long one write (A-ASSOCIATE-AC/RJ, a response, A-ABORT) may wait for a peer that"
        " does not read; past it the connection is closed.",
    ),
    Variable(
        "OXIDIP_SHUTDOWN_TIMEOUT",
        "30",
        Seconds(_MAX_SECONDS, zero="abort at once"),
        "On SIGTERM/SIGINT, how long running associations may continue before being aborted.",
    ),
    Variable(
        "OXIDIP_EVENT_QUEUE",
        "10000",
        Integer(1, 1000000),
        "Events (stored, failed, association closed) buffered between the receiver and Python.",
    ),
    Variable(
        "OXIDIP_ACK",
        "stored",
        Choice.of(AckMode),
        "When success is sent: once the file is in place (registration follows, journaled),"
        " or only once it is also registered in the database.",
    ),
    Variable(
        "OXIDIP_DB_CONNECTION",
        "",
        DatabaseUrl(),
        "Where instances and series are registered: empty = SQLite under the storage root.",
        secret=True,
    ),
    Variable("OXIDIP_DB_POOL", "4", Integer(1, 100), "PostgreSQL connection pool size."),
    Variable(
        "OXIDIP_REGISTRATION_BACKLOG",
        "20000",
        Integer(1, 1000000),
        "Stored instances waiting for registration (database unreachable or slow) before"
        " oxidip stops taking events: the event queue fills and TCP pushes back on senders.",
    ),
    Variable(
        "OXIDIP_REGISTRATION_TIMEOUT",
        "10",
        Seconds(3600.0),
        "With OXIDIP_ACK=registered: how long a sender waits for its instance's registration"
        " before it gets A700 (the instance stays journaled and is registered later).",
    ),
    Variable(
        "OXIDIP_PACS_ADDRESS",
        "",
        PacsAddresses(),
        "Where to ask (C-FIND) for a series' expected instance count, by calling AE title.",
    ),
    Variable(
        "OXIDIP_CFIND_TIMEOUT",
        "10",
        Seconds(3600.0),
        "Timeout of one C-FIND attempt (association and answer).",
    ),
    Variable("OXIDIP_CFIND_RETRIES", "2", Integer(0, 10), "C-FIND attempts after the first."),
    Variable(
        "OXIDIP_SERIES_IDLE_TIMEOUT",
        "60",
        Seconds(_MAX_SECONDS, zero="never"),
        "A series that received nothing for this long is finalized (incomplete or"
        " finalized-unknown) even if its association is still open.",
    ),
    Variable(
        "OXIDIP_HOOKS",
        "",
        ModulePath(),
        "Python module with on_instance, on_series_complete, on_series_finalized, route, register.",
    ),
    Variable(
        "OXIDIP_HOOK_QUEUE",
        "10000",
        Integer(1, 1000000),
        "Hook calls queued before the receiver waits for the hooks (back-pressure).",
    ),
    Variable(
        "OXIDIP_NATS_ADDRESS",
        "",
        NatsAddress(),
        "NATS server for per-series progress, completion and error messages.",
    ),
    Variable(
        "OXIDIP_NATS_ROOT_SUBJECT",
        "",
        Subject(),
        "First token of NATS subjects ({root}.{calling AE}.{SeriesInstanceUID}).",
    ),
    Variable(
        "OXIDIP_PROGRESS_INTERVAL",
        "0.5",
        Seconds(3600.0),
        "At most one progress message per series per this many seconds.",
    ),
    Variable(
        "OXIDIP_ROUTES",
        "",
        ROUTES_FILE,
        "Routes file (TOML): the destinations and the rules that forward series to them;"
        " read and validated at start.",
        group="forward",
    ),
    Variable(
        "OXIDIP_FORWARD_RETRY_BASE",
        "10",
        Seconds(86400.0),
        "Delay before the first retry of a forwarding job that failed for a transient reason;"
        " it doubles at each attempt (with jitter).",
        group="forward",
    ),
    Variable(
        "OXIDIP_FORWARD_RETRY_MAX",
        "900",
        Seconds(_MAX_SECONDS),
        "Longest delay between two attempts of a forwarding job (at least"
        " OXIDIP_FORWARD_RETRY_BASE).",
        group="forward",
    ),
    Variable(
        "OXIDIP_FORWARD_ATTEMPTS",
        "10",
        Integer(1, 1000),
        "Attempts of a forwarding job before it is dead (retried by hand: oxidip queue retry).",
        group="forward",
    ),
    Variable(
        "OXIDIP_FORWARD_LEASE",
        "60",
        Seconds(86400.0),
        "How long a claimed forwarding job stays ours without renewal: a process killed while"
        " forwarding gives its jobs back after this.",
        group="forward",
    ),
    Variable(
        "OXIDIP_FORWARD_TIMEOUT",
        "30",
        Seconds(3600.0),
        "Forwarding: bound on connecting, on each wait for the destination and on each write.",
        group="forward",
    ),
    Variable(
        "OXIDIP_FORWARD_BREAKER_FAILURES",
        "3",
        Integer(1, 1000),
        "Consecutive transient job failures that hold a destination (circuit open) until a"
        " C-ECHO to it succeeds.",
        group="forward",
    ),
    Variable(
        "OXIDIP_HTTP_HOST",
        "0.0.0.0",
        IpAddress(),
        "Address of the HTTP endpoint (/healthz, /metrics).",
    ),
    Variable(
        "OXIDIP_HTTP_PORT",
        "",
        OrEmpty(Integer(0, 65535, note="0 = any free port"), "no HTTP endpoint"),
        "TCP port of the HTTP endpoint: /healthz (readiness) and /metrics (Prometheus).",
    ),
    Variable(
        "OXIDIP_HEALTH_MAX_JOURNAL_BACKLOG",
        "100000",
        Integer(1, 1000000000, special=(0, "no limit")),
        "/healthz reports not ready while more journaled instances than this wait for"
        " registration.",
    ),
    Variable(
        "OXIDIP_LOG_LEVEL",
        "INFO",
        Choice(("DEBUG", "INFO", "WARNING", "ERROR")),
        "Log level (case-insensitive).",
    ),
    Variable(
        "OXIDIP_LOG_FORMAT",
        "text",
        Choice(("text", "json")),
        "Log format on stderr: text lines or one JSON object per line.",
    ),
)

_BY_NAME: dict[str, Variable] = {variable.name: variable for variable in VARIABLES}


class ForwardConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Forwarding: ``OXIDIP_ROUTES`` (read and validated) and ``OXIDIP_FORWARD_*``."""

    #: The routes file's destinations and rules; None: nothing is forwarded.
    routes: Routes | None
    retry_base: float
    retry_max: float
    attempts: int
    lease: float
    timeout: float
    breaker_failures: int


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The validated configuration. Build it with ``Config.from_env``."""

    listener_host: str
    listener_port: int
    plain_listener: bool
    tls_port: int
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    scp_aet: str
    scp_enforce_aet: bool
    allowed_calling_aets: tuple[str, ...]
    files_root: str
    file_mode: int
    dir_mode: int
    group: int | None
    scp_max_pdu_length: int
    scp_strict: bool
    scp_promiscuous: bool
    scp_uncompressed_only: bool
    max_associations: int
    path_template: str
    fsync: FsyncPolicy
    duplicates: DuplicatesPolicy
    required_attributes: tuple[str, ...]
    inflate_max_mib: int
    inflate_max_ratio: int
    artim_timeout: float
    idle_timeout: float
    write_timeout: float
    shutdown_timeout: float
    event_queue: int
    ack: AckMode
    db_connection: str | None
    db_pool: int
    registration_backlog: int
    registration_timeout: float
    pacs_address: str
    cfind_timeout: float
    cfind_retries: int
    series_idle_timeout: float
    hooks: str | None
    hook_queue: int
    nats_address: str | None
    nats_root_subject: str
    progress_interval: float
    forward: ForwardConfig
    http_host: str
    http_port: int | None
    health_max_journal_backlog: int
    log_level: str
    log_format: str

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, warn_unknown: bool = True
    ) -> "Config":
        """Reads every variable of ``VARIABLES`` from ``environ`` (default ``os.environ``),
        using the default for those not set. Raises ConfigError listing every invalid value.
        With ``warn_unknown``, logs a warning naming unknown ``OXIDIP_*`` variables (the CLI
        turns it off and calls ``warn_unknown_variables`` once logging is set up)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for variable in VARIABLES:
            raw = env.get(variable.name)
            try:
                values[variable.field] = variable.read(variable.default if raw is None else raw)
            except ConfigError as error:
                problems.extend(error.problems)
        problems.extend(_listener_problems(values) if not problems else [])
        forward = {
            field.removeprefix("forward."): values.pop(field)
            for field in list(values)
            if field.startswith("forward.")
        }
        if not problems:
            problems.extend(_forward_problems(forward))
        if problems:
            raise ConfigError(problems)
        if warn_unknown:
            warn_unknown_variables(env)
        return cls(**values, forward=ForwardConfig(**forward))

    def core(self) -> CoreConfig:
        """The part the Rust receiver needs, with ``files_root`` made absolute."""
        tls = None
        if self.tls_cert is not None and self.tls_key is not None:
            tls = TlsListener(
                port=self.tls_port,
                cert=os.path.abspath(self.tls_cert),
                key=os.path.abspath(self.tls_key),
                ca=None if self.tls_ca is None else os.path.abspath(self.tls_ca),
            )
        return CoreConfig(
            host=self.listener_host,
            port=self.listener_port,
            plain_listener=self.plain_listener,
            tls=tls,
            aet=self.scp_aet,
            enforce_called_aet=self.scp_enforce_aet,
            allowed_calling_aets=list(self.allowed_calling_aets),
            max_pdu_length=self.scp_max_pdu_length,
            strict=self.scp_strict,
            promiscuous=self.scp_promiscuous,
            uncompressed_only=self.scp_uncompressed_only,
            max_associations=self.max_associations,
            files_root=os.path.abspath(self.files_root),
            path_template=self.path_template,
            fsync=self.fsync,
            duplicates=self.duplicates,
            required_attributes=list(self.required_attributes),
            inflate_max_mib=self.inflate_max_mib,
            inflate_max_ratio=self.inflate_max_ratio,
            artim_timeout=self.artim_timeout,
            idle_timeout=self.idle_timeout,
            write_timeout=self.write_timeout,
            event_queue_size=self.event_queue,
            ack=self.ack,
            file_mode=self.file_mode,
            dir_mode=self.dir_mode,
            group=self.group,
        )


_TLS_FILE_VARIABLES = {"cert": "OXIDIP_TLS_CERT", "key": "OXIDIP_TLS_KEY", "ca": "OXIDIP_TLS_CA"}


def _listener_problems(values: Mapping[str, Any]) -> list[str]:
    """What the listener variables get wrong together: the TLS files go in pairs and must
    load (the receiver's own check: certificate and key PEM, the key the certificate's, the
    CA usable), and some listener must be left."""
    cert, key, ca = values["tls_cert"], values["tls_key"], values["tls_ca"]
    if cert is not None and key is None:
        return ["OXIDIP_TLS_KEY='': required when OXIDIP_TLS_CERT is set"]
    if key is not None and cert is None:
        return ["OXIDIP_TLS_CERT='': required when OXIDIP_TLS_KEY is set"]
    if cert is None:
        if ca is not None:
            return [f"OXIDIP_TLS_CA={ca!r}: needs OXIDIP_TLS_CERT and OXIDIP_TLS_KEY"]
        if not values["plain_listener"]:
            no_listener = (
                "OXIDIP_PLAIN_LISTENER='false': no listener left; set OXIDIP_TLS_CERT and"
                " OXIDIP_TLS_KEY for the TLS one"
            )
            return [no_listener]
        return []
    if values["plain_listener"] and values["tls_port"] == values["listener_port"] != 0:
        port = values["tls_port"]
        return [f"OXIDIP_TLS_PORT='{port}': OXIDIP_LISTENER_PORT, the plain listener, has it"]
    problem = _core.check_tls(cert, key, ca)
    if problem is None:
        return []
    which, reason = problem
    name = _TLS_FILE_VARIABLES[which]
    return [f"{name}={values[name.removeprefix(PREFIX).lower()]!r}: {reason}"]


def _forward_problems(values: dict[str, Any]) -> list[str]:
    """What the forwarding variables get wrong together, and the routes file's mistakes (it
    is read here, its path replaced by what it says)."""
    if values["retry_max"] < values["retry_base"]:
        problem = (
            f"OXIDIP_FORWARD_RETRY_MAX='{values['retry_max']:g}': less than"
            f" OXIDIP_FORWARD_RETRY_BASE ({values['retry_base']:g})"
        )
        return [problem]
    path = values["routes"]
    if path is None:
        return []
    try:
        values["routes"] = Routes.load(path)
    except RoutesError as error:
        return [f"OXIDIP_ROUTES={path!r}: {problem}" for problem in error.problems]
    return []


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of ``OXIDIP_*`` variables in ``environ`` that oxidip does not know, sorted."""
    env = os.environ if environ is None else environ
    return sorted(name for name in env if name.startswith(PREFIX) and name not in _BY_NAME)


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> None:
    """Logs one warning per unknown ``OXIDIP_*`` variable: most likely a typo, which would
    otherwise silently leave the setting at its default."""
    for name in unknown_variables(environ):
        fields: dict[str, str] = {"variable": name}
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        if close:
            fields["did_you_mean"] = close[0]
        log.warning("unknown configuration variable ignored", extra=fields)
