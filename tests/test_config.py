"""Configuration from OXIDIP_* variables, and the CLI's handling of it."""

import json
import logging
import operator
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from oxidip import _core
from oxidip._boundary import (
    AckMode,
    Attributes,
    CoreConfig,
    DuplicatesPolicy,
    FsyncPolicy,
    TlsListener,
)
from oxidip.bench.pki import Pki, make_pki
from oxidip.config import VARIABLES, Config, ConfigError, unknown_variables
from tests.helpers.process import clean_env, run_oxidip

README = Path(__file__).resolve().parent.parent / "README.md"

DEFAULTS: dict[str, Any] = {
    "listener_host": "0.0.0.0",
    "listener_port": 11111,
    "plain_listener": True,
    "tls_port": 2762,
    "tls_cert": None,
    "tls_key": None,
    "tls_ca": None,
    "scp_aet": "OXIDIP",
    "scp_enforce_aet": False,
    "allowed_calling_aets": (),
    "files_root": "./data",
    "file_mode": 0o640,
    "dir_mode": 0o750,
    "group": None,
    "scp_max_pdu_length": 131072,
    "scp_strict": False,
    "scp_promiscuous": False,
    "scp_uncompressed_only": False,
    "max_associations": 1000,
    "path_template": _core.DEFAULT_PATH_TEMPLATE,
    "fsync": "none",
    "duplicates": "overwrite",
    "required_attributes": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
    "inflate_max_mib": 4096,
    "inflate_max_ratio": 200,
    "artim_timeout": 30.0,
    "idle_timeout": 300.0,
    "write_timeout": 30.0,
    "shutdown_timeout": 30.0,
    "event_queue": 10000,
    "ack": "stored",
    "db_connection": None,
    "db_pool": 4,
    "registration_backlog": 20000,
    "registration_timeout": 10.0,
    "pacs_address": "",
    "cfind_timeout": 10.0,
    "cfind_retries": 2,
    "series_idle_timeout": 60.0,
    "hooks": None,
    "hook_queue": 10000,
    "nats_address": None,
    "nats_root_subject": "",
    "progress_interval": 0.5,
    "forward.routes": None,
    "forward.retry_base": 10.0,
    "forward.retry_max": 900.0,
    "forward.attempts": 10,
    "forward.lease": 60.0,
    "forward.timeout": 30.0,
    "forward.breaker_failures": 3,
    "http_host": "0.0.0.0",
    "http_port": None,
    "health_max_journal_backlog": 100000,
    "log_level": "INFO",
    "log_format": "text",
}

BOOLEANS = [
    "OXIDIP_SCP_ENFORCE_AET",
    "OXIDIP_SCP_STRICT",
    "OXIDIP_SCP_PROMISCUOUS",
    "OXIDIP_SCP_UNCOMPRESSED_ONLY",
]

GOOD: list[tuple[str, str, Any]] = [
    ("OXIDIP_LISTENER_HOST", "127.0.0.1", "127.0.0.1"),
    ("OXIDIP_LISTENER_HOST", "::", "::"),
    ("OXIDIP_LISTENER_HOST", " 10.0.0.1 ", "10.0.0.1"),
    ("OXIDIP_LISTENER_PORT", "0", 0),
    ("OXIDIP_LISTENER_PORT", "104", 104),
    ("OXIDIP_LISTENER_PORT", "65535", 65535),
    ("OXIDIP_SCP_AET", "A", "A"),
    ("OXIDIP_SCP_AET", "ABCDEFGHIJKLMNOP", "ABCDEFGHIJKLMNOP"),
    ("OXIDIP_SCP_AET", "  MY AE  ", "MY AE"),  # leading/trailing spaces are not significant
    ("OXIDIP_SCP_AET", "lower-case_ok.1", "lower-case_ok.1"),
    ("OXIDIP_ALLOWED_CALLING_AETS", "", ()),
    ("OXIDIP_ALLOWED_CALLING_AETS", "PACS", ("PACS",)),
    ("OXIDIP_ALLOWED_CALLING_AETS", "PACS, CT_1 ,MR", ("PACS", "CT_1", "MR")),
    ("OXIDIP_ALLOWED_CALLING_AETS", "PACS,PACS", ("PACS",)),
    ("OXIDIP_FILES_ROOT", "/srv/dicom", "/srv/dicom"),
    ("OXIDIP_FILES_ROOT", "relative/dir", "relative/dir"),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "0", 0),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "4096", 4096),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "16384", 16384),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "134217728", 134217728),
    ("OXIDIP_MAX_ASSOCIATIONS", "1", 1),
    ("OXIDIP_MAX_ASSOCIATIONS", "100000", 100000),
    ("OXIDIP_PATH_TEMPLATE", "{SOPInstanceUID}.dcm", "{SOPInstanceUID}.dcm"),
    ("OXIDIP_FSYNC", "none", "none"),
    ("OXIDIP_FSYNC", "file", "file"),
    ("OXIDIP_FSYNC", "File-And-Directory", "file-and-directory"),
    ("OXIDIP_DUPLICATES", "overwrite", "overwrite"),
    ("OXIDIP_DUPLICATES", "keep-first", "keep-first"),
    ("OXIDIP_DUPLICATES", "REJECT", "reject"),
    ("OXIDIP_REQUIRED_ATTRIBUTES", "", ()),
    ("OXIDIP_REQUIRED_ATTRIBUTES", "SOPInstanceUID", ("SOPInstanceUID",)),
    (
        "OXIDIP_REQUIRED_ATTRIBUTES",
        "PatientID, StudyDate,NumberOfSeriesRelatedInstances",
        ("PatientID", "StudyDate", "NumberOfSeriesRelatedInstances"),
    ),
    ("OXIDIP_INFLATE_MAX_MIB", "1", 1),
    ("OXIDIP_INFLATE_MAX_MIB", "1048576", 1048576),
    ("OXIDIP_INFLATE_MAX_RATIO", "1", 1),
    ("OXIDIP_INFLATE_MAX_RATIO", " 1000000 ", 1000000),
    ("OXIDIP_ARTIM_TIMEOUT", "0.5", 0.5),
    ("OXIDIP_ARTIM_TIMEOUT", "120", 120.0),
    ("OXIDIP_IDLE_TIMEOUT", "0", 0.0),
    ("OXIDIP_IDLE_TIMEOUT", "3600", 3600.0),
    ("OXIDIP_WRITE_TIMEOUT", "0.5", 0.5),
    ("OXIDIP_WRITE_TIMEOUT", "30", 30.0),
    ("OXIDIP_SHUTDOWN_TIMEOUT", "0", 0.0),
    ("OXIDIP_SHUTDOWN_TIMEOUT", "2.5", 2.5),
    ("OXIDIP_EVENT_QUEUE", "1", 1),
    ("OXIDIP_EVENT_QUEUE", "1000000", 1000000),
    ("OXIDIP_LOG_LEVEL", "debug", "DEBUG"),
    ("OXIDIP_LOG_LEVEL", "Warning", "WARNING"),
    ("OXIDIP_LOG_LEVEL", "ERROR", "ERROR"),
    ("OXIDIP_LOG_FORMAT", "json", "json"),
    ("OXIDIP_LOG_FORMAT", "TEXT", "text"),
]
GOOD += [
    ("OXIDIP_FILE_MODE", "0600", 0o600),
    ("OXIDIP_FILE_MODE", " 664", 0o664),
    ("OXIDIP_FILE_MODE", "0777", 0o777),
    ("OXIDIP_DIR_MODE", "0700", 0o700),
    ("OXIDIP_GROUP", "", None),
    ("OXIDIP_GROUP", "0", 0),
    ("OXIDIP_GROUP", "root", 0),
    ("OXIDIP_GROUP", "54321", 54321),
]
GOOD += [
    ("OXIDIP_ACK", "Registered", "registered"),
    ("OXIDIP_DB_CONNECTION", "postgresql://u@127.0.0.1/db", "postgresql://u@127.0.0.1/db"),
    ("OXIDIP_DB_CONNECTION", " ", None),
    ("OXIDIP_DB_POOL", "16", 16),
    ("OXIDIP_REGISTRATION_BACKLOG", "1", 1),
    ("OXIDIP_REGISTRATION_TIMEOUT", "0.5", 0.5),
    ("OXIDIP_PACS_ADDRESS", "PACS=10.0.0.5:104", "PACS=10.0.0.5:104"),
    ("OXIDIP_CFIND_TIMEOUT", "2.5", 2.5),
    ("OXIDIP_CFIND_RETRIES", "0", 0),
    ("OXIDIP_SERIES_IDLE_TIMEOUT", "0", 0.0),
    ("OXIDIP_HOOKS", "my_site.hooks", "my_site.hooks"),
    ("OXIDIP_HOOK_QUEUE", "100", 100),
    ("OXIDIP_NATS_ADDRESS", "nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("OXIDIP_NATS_ADDRESS", "localhost:4222", "localhost:4222"),
    ("OXIDIP_NATS_ROOT_SUBJECT", "chris.pacs", "chris.pacs"),
    ("OXIDIP_PROGRESS_INTERVAL", "1", 1.0),
    ("OXIDIP_HTTP_HOST", "::", "::"),
    ("OXIDIP_HTTP_HOST", "127.0.0.1", "127.0.0.1"),
    ("OXIDIP_HTTP_PORT", "", None),
    ("OXIDIP_HTTP_PORT", " ", None),
    ("OXIDIP_HTTP_PORT", "0", 0),
    ("OXIDIP_HTTP_PORT", "8080", 8080),
    ("OXIDIP_HEALTH_MAX_JOURNAL_BACKLOG", "0", 0),
    ("OXIDIP_HEALTH_MAX_JOURNAL_BACKLOG", "500", 500),
    ("OXIDIP_ROUTES", "", None),
    ("OXIDIP_FORWARD_RETRY_BASE", "0.5", 0.5),
    ("OXIDIP_FORWARD_RETRY_MAX", "10", 10.0),  # the base's default: equal is fine
    ("OXIDIP_FORWARD_ATTEMPTS", "1", 1),
    ("OXIDIP_FORWARD_LEASE", "5", 5.0),
    ("OXIDIP_FORWARD_TIMEOUT", "2.5", 2.5),
    ("OXIDIP_FORWARD_BREAKER_FAILURES", "1", 1),
    # Alone: the TLS files need each other, and "false" needs the TLS listener (see below).
    ("OXIDIP_PLAIN_LISTENER", "yes", True),
    ("OXIDIP_TLS_PORT", "0", 0),
    ("OXIDIP_TLS_PORT", "11112", 11112),
    ("OXIDIP_TLS_CERT", "", None),
    ("OXIDIP_TLS_KEY", " ", None),
    ("OXIDIP_TLS_CA", "", None),
]
GOOD += [(name, raw, True) for name in BOOLEANS for raw in ("true", "1", "yes", "on", "TRUE")]
GOOD += [(name, raw, False) for name in BOOLEANS for raw in ("false", "0", "no", "off", "Off")]

BAD: list[tuple[str, str]] = [
    ("OXIDIP_LISTENER_HOST", ""),
    ("OXIDIP_LISTENER_HOST", "localhost"),
    ("OXIDIP_LISTENER_HOST", "256.0.0.1"),
    ("OXIDIP_LISTENER_PORT", "abc"),
    ("OXIDIP_LISTENER_PORT", ""),
    ("OXIDIP_LISTENER_PORT", "-1"),
    ("OXIDIP_LISTENER_PORT", "65536"),
    ("OXIDIP_LISTENER_PORT", "11111.0"),
    ("OXIDIP_LISTENER_PORT", "1e3"),
    ("OXIDIP_SCP_AET", ""),
    ("OXIDIP_SCP_AET", "    "),
    ("OXIDIP_SCP_AET", "ABCDEFGHIJKLMNOPQ"),
    ("OXIDIP_SCP_AET", "BACK\\SLASH"),
    ("OXIDIP_SCP_AET", "TAB\tAE"),
    ("OXIDIP_SCP_AET", "ÄRZTE"),
    ("OXIDIP_ALLOWED_CALLING_AETS", "PACS,,CT"),
    ("OXIDIP_ALLOWED_CALLING_AETS", "PACS,"),
    ("OXIDIP_ALLOWED_CALLING_AETS", "PACS,THIS_IS_WAY_TOO_LONG"),
    ("OXIDIP_FILES_ROOT", ""),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "4095"),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "1"),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "134217729"),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "-5"),
    ("OXIDIP_SCP_MAX_PDU_LENGTH", "16k"),
    ("OXIDIP_MAX_ASSOCIATIONS", "0"),
    ("OXIDIP_MAX_ASSOCIATIONS", "100001"),
    ("OXIDIP_MAX_ASSOCIATIONS", "many"),
    ("OXIDIP_PATH_TEMPLATE", "{SOPInstanceUID"),
    ("OXIDIP_FSYNC", "always"),
    ("OXIDIP_FSYNC", ""),
    ("OXIDIP_DUPLICATES", "keep_first"),
    ("OXIDIP_DUPLICATES", "skip"),
    ("OXIDIP_REQUIRED_ATTRIBUTES", "PatientId"),
    ("OXIDIP_REQUIRED_ATTRIBUTES", "PixelData"),
    ("OXIDIP_REQUIRED_ATTRIBUTES", "SOPInstanceUID,,PatientID"),
    ("OXIDIP_INFLATE_MAX_MIB", "0"),
    ("OXIDIP_INFLATE_MAX_MIB", "1048577"),
    ("OXIDIP_INFLATE_MAX_MIB", "4G"),
    ("OXIDIP_INFLATE_MAX_RATIO", "0"),
    ("OXIDIP_INFLATE_MAX_RATIO", "1000001"),
    ("OXIDIP_INFLATE_MAX_RATIO", "200:1"),
    ("OXIDIP_ARTIM_TIMEOUT", "0"),
    ("OXIDIP_ARTIM_TIMEOUT", "-1"),
    ("OXIDIP_ARTIM_TIMEOUT", "30s"),
    ("OXIDIP_ARTIM_TIMEOUT", "inf"),
    ("OXIDIP_ARTIM_TIMEOUT", "nan"),
    ("OXIDIP_IDLE_TIMEOUT", "-0.5"),
    ("OXIDIP_IDLE_TIMEOUT", "1e400"),
    ("OXIDIP_IDLE_TIMEOUT", "99999999999"),
    ("OXIDIP_WRITE_TIMEOUT", "0"),
    ("OXIDIP_WRITE_TIMEOUT", "-1"),
    ("OXIDIP_SHUTDOWN_TIMEOUT", "soon"),
    ("OXIDIP_EVENT_QUEUE", "0"),
    ("OXIDIP_EVENT_QUEUE", "1000001"),
    ("OXIDIP_LOG_LEVEL", "TRACE"),
    ("OXIDIP_LOG_LEVEL", "WARN"),
    ("OXIDIP_LOG_FORMAT", "yaml"),
]
BAD += [
    ("OXIDIP_FILE_MODE", "640x"),
    ("OXIDIP_FILE_MODE", "0648"),
    ("OXIDIP_FILE_MODE", "0440"),  # the owner could not write it
    ("OXIDIP_FILE_MODE", "4640"),
    ("OXIDIP_FILE_MODE", "rw-r-----"),
    ("OXIDIP_DIR_MODE", "0650"),  # the owner could not enter it
    ("OXIDIP_DIR_MODE", "2750"),  # the setgid bit comes with OXIDIP_GROUP
    ("OXIDIP_DIR_MODE", ""),
    ("OXIDIP_GROUP", "no-such-group-oxidip"),
    ("OXIDIP_GROUP", "-1"),
    ("OXIDIP_GROUP", "99999999999"),
]
BAD += [
    ("OXIDIP_ACK", "committed"),
    ("OXIDIP_DB_CONNECTION", "mysql://x"),
    ("OXIDIP_DB_POOL", "0"),
    ("OXIDIP_REGISTRATION_BACKLOG", "0"),
    ("OXIDIP_REGISTRATION_TIMEOUT", "0"),
    ("OXIDIP_PACS_ADDRESS", "PACS=host"),
    ("OXIDIP_CFIND_TIMEOUT", "0"),
    ("OXIDIP_CFIND_RETRIES", "11"),
    ("OXIDIP_SERIES_IDLE_TIMEOUT", "-1"),
    ("OXIDIP_HOOKS", "my-site/hooks"),
    ("OXIDIP_HOOK_QUEUE", "0"),
    ("OXIDIP_NATS_ADDRESS", "http://x y"),
    ("OXIDIP_NATS_ROOT_SUBJECT", "a..b"),
    ("OXIDIP_PROGRESS_INTERVAL", "x"),
    ("OXIDIP_HTTP_HOST", "localhost"),
    ("OXIDIP_HTTP_PORT", "65536"),
    ("OXIDIP_HTTP_PORT", "http"),
    ("OXIDIP_HEALTH_MAX_JOURNAL_BACKLOG", "-1"),
    ("OXIDIP_ROUTES", "/nonexistent/routes.toml"),
    ("OXIDIP_FORWARD_RETRY_BASE", "0"),
    ("OXIDIP_FORWARD_RETRY_MAX", "15m"),
    ("OXIDIP_FORWARD_ATTEMPTS", "0"),
    ("OXIDIP_FORWARD_LEASE", "-1"),
    ("OXIDIP_FORWARD_TIMEOUT", "3601"),
    ("OXIDIP_FORWARD_BREAKER_FAILURES", "0"),
    ("OXIDIP_PLAIN_LISTENER", "maybe"),
    ("OXIDIP_TLS_PORT", "65536"),
    ("OXIDIP_TLS_CERT", "/nonexistent/server.crt"),
    ("OXIDIP_TLS_KEY", "/nonexistent/server.key"),
    ("OXIDIP_TLS_CA", "/"),
]
BAD += [(name, raw) for name in BOOLEANS for raw in ("", "maybe", "2", "y", "enabled")]


def value(config: Config, name: str) -> Any:
    """The value of variable ``name`` in ``config`` (``forward.lease`` for a group's)."""
    (variable,) = (variable for variable in VARIABLES if variable.name == name)
    return operator.attrgetter(variable.field)(config)


def fields(config: Config) -> dict[str, Any]:
    """Every field of ``config``, those of its groups' structs as ``group.field``."""
    found: dict[str, Any] = {}
    for name, field in msgspec.structs.asdict(config).items():
        if isinstance(field, msgspec.Struct):
            found.update({f"{name}.{k}": v for k, v in msgspec.structs.asdict(field).items()})
        else:
            found[name] = field
    return found


def test_defaults() -> None:
    assert fields(Config.from_env({})) == DEFAULTS


def test_every_variable_has_a_field_and_a_default_test() -> None:
    names = {variable.name for variable in VARIABLES}
    assert {variable.field for variable in VARIABLES} == set(fields(Config.from_env({})))
    assert {variable.field for variable in VARIABLES} == set(DEFAULTS)
    assert names == {name for name, _, _ in GOOD} == {name for name, _ in BAD}


@pytest.mark.parametrize(("name", "raw", "expected"), GOOD)
def test_good_value(name: str, raw: str, expected: Any) -> None:
    config = Config.from_env({name: raw})
    assert value(config, name) == expected


@pytest.mark.parametrize(("name", "raw"), BAD)
def test_bad_value_names_variable_value_and_what_it_accepts(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({name: raw})
    message = str(caught.value)
    assert caught.value.problems == [message]
    if name == "OXIDIP_DB_CONNECTION":
        # A database URL may hold a password: never repeated.
        assert message.startswith(f"{name}=(value not shown")
        assert raw not in message
    else:
        assert message.startswith(f"{name}={raw!r}: ")
    assert "expected " in message


def test_policies_are_enums_that_cross_the_boundary_as_their_words() -> None:
    config = Config.from_env(
        {"OXIDIP_FSYNC": "File", "OXIDIP_DUPLICATES": "keep-first", "OXIDIP_ACK": "REGISTERED"}
    )
    assert config.fsync is FsyncPolicy.FILE
    assert config.duplicates is DuplicatesPolicy.KEEP_FIRST
    assert config.ack is AckMode.REGISTERED
    # The receiver reads plain strings (rust/server/config.rs): the wire format is the words.
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(config.core()))
    assert (wire["fsync"], wire["duplicates"], wire["ack"]) == ("file", "keep-first", "registered")
    assert {type(wire[key]) for key in ("fsync", "duplicates", "ack")} == {str}


def test_forward_retry_max_is_at_least_the_base() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"OXIDIP_FORWARD_RETRY_BASE": "60", "OXIDIP_FORWARD_RETRY_MAX": "30"})
    assert caught.value.problems == [
        "OXIDIP_FORWARD_RETRY_MAX='30': less than OXIDIP_FORWARD_RETRY_BASE (60)"
    ]


def test_port_message() -> None:
    with pytest.raises(ConfigError, match="^OXIDIP_LISTENER_PORT='abc': expected an integer"):
        Config.from_env({"OXIDIP_LISTENER_PORT": "abc"})
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"OXIDIP_LISTENER_PORT": "abc"})
    assert "from 0 to 65535" in str(caught.value)


def test_helpful_details() -> None:
    with pytest.raises(ConfigError, match="did you mean 'PatientID'"):
        Config.from_env({"OXIDIP_REQUIRED_ATTRIBUTES": "PatientId"})
    with pytest.raises(ConfigError, match="17 characters long, at most 16"):
        Config.from_env({"OXIDIP_SCP_AET": "ABCDEFGHIJKLMNOPQ"})
    with pytest.raises(ConfigError, match=r"0 \(no limit\) or an integer from 4096 to 134217728"):
        Config.from_env({"OXIDIP_SCP_MAX_PDU_LENGTH": "100"})
    with pytest.raises(ConfigError, match="one of overwrite, keep-first, reject"):
        Config.from_env({"OXIDIP_DUPLICATES": "skip"})


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"OXIDIP_LISTENER_PORT": "x", "OXIDIP_FSYNC": "y", "OXIDIP_SCP_AET": "A"})
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("OXIDIP_LISTENER_PORT=")
    assert problems[1].startswith("OXIDIP_FSYNC=")


def test_other_environment_variables_are_ignored() -> None:
    assert Config.from_env({"PATH": "/bin", "OXIDIPX": "1", "oxidip_listener_port": "x"}) == (
        Config.from_env({})
    )


def test_unknown_oxidip_variables_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    env = {"OXIDIP_LISTNER_PORT": "104", "OXIDIP_SCP_AET": "A", "OXIDIP_ZZZ": "1"}
    assert unknown_variables(env) == ["OXIDIP_LISTNER_PORT", "OXIDIP_ZZZ"]
    with caplog.at_level(logging.WARNING, logger="oxidip.config"):
        config = Config.from_env(env)
    assert config.listener_port == 11111
    warned = {record.__dict__["variable"]: record for record in caplog.records}
    assert set(warned) == {"OXIDIP_LISTNER_PORT", "OXIDIP_ZZZ"}
    assert warned["OXIDIP_LISTNER_PORT"].__dict__["did_you_mean"] == "OXIDIP_LISTENER_PORT"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="oxidip.config"):
        Config.from_env(env, warn_unknown=False)
    assert not caplog.records


def test_core_config() -> None:
    config = Config.from_env(
        {
            "OXIDIP_LISTENER_HOST": "127.0.0.1",
            "OXIDIP_LISTENER_PORT": "0",
            "OXIDIP_SCP_AET": "ME",
            "OXIDIP_SCP_ENFORCE_AET": "yes",
            "OXIDIP_ALLOWED_CALLING_AETS": "A,B",
            "OXIDIP_FILES_ROOT": "rel",
            "OXIDIP_SCP_MAX_PDU_LENGTH": "0",
            "OXIDIP_SCP_STRICT": "1",
            "OXIDIP_FSYNC": "file",
            "OXIDIP_DUPLICATES": "reject",
            "OXIDIP_REQUIRED_ATTRIBUTES": "SOPInstanceUID",
            "OXIDIP_INFLATE_MAX_MIB": "64",
            "OXIDIP_INFLATE_MAX_RATIO": "50",
            "OXIDIP_IDLE_TIMEOUT": "0",
            "OXIDIP_WRITE_TIMEOUT": "2.5",
            "OXIDIP_EVENT_QUEUE": "5",
        }
    )
    core = config.core()
    assert core == CoreConfig(
        host="127.0.0.1",
        port=0,
        plain_listener=True,
        tls=None,
        aet="ME",
        enforce_called_aet=True,
        allowed_calling_aets=["A", "B"],
        max_pdu_length=0,
        strict=True,
        promiscuous=False,
        uncompressed_only=False,
        max_associations=1000,
        files_root=os.path.join(os.getcwd(), "rel"),
        path_template=_core.DEFAULT_PATH_TEMPLATE,
        fsync="file",
        duplicates="reject",
        required_attributes=["SOPInstanceUID"],
        inflate_max_mib=64,
        inflate_max_ratio=50,
        artim_timeout=30.0,
        idle_timeout=0.0,
        write_timeout=2.5,
        event_queue_size=5,
        ack="stored",
        file_mode=0o640,
        dir_mode=0o750,
        group=None,
    )
    encoded = msgspec.msgpack.encode(core)
    assert msgspec.msgpack.decode(encoded, type=CoreConfig) == core
    # Keys are the Rust field names, floats stay floats even when whole.
    raw = msgspec.msgpack.decode(encoded)
    assert list(raw) == list(msgspec.structs.asdict(core))
    assert isinstance(raw["artim_timeout"], float) and isinstance(raw["idle_timeout"], float)


def test_every_config_is_accepted_by_the_core() -> None:
    _core.Receiver(msgspec.msgpack.encode(Config.from_env({}).core()))
    for name, raw, _ in GOOD:
        _core.Receiver(msgspec.msgpack.encode(Config.from_env({name: raw}).core()))


def test_attributes_struct_matches_extracted_keywords() -> None:
    assert list(Attributes.__struct_fields__) == list(_core.EXTRACTED_KEYWORDS)


def test_readme_documents_every_variable() -> None:
    text = README.read_text()
    for variable in VARIABLES:
        assert f"`{variable.name}`" in text, variable.name


# --- CLI ---------------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound and listening for the duration of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_version(tmp_path: Path) -> None:
    result = run_oxidip("--version", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"oxidip {_core.__version__}"


def test_serve_with_bad_config_exits_2_before_binding(tmp_path: Path, busy_port: int) -> None:
    env = clean_env(
        OXIDIP_LISTENER_HOST="127.0.0.1",
        OXIDIP_LISTENER_PORT=str(busy_port),
        OXIDIP_SCP_MAX_PDU_LENGTH="12",
    )
    result = run_oxidip("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "oxidip: configuration error: OXIDIP_SCP_MAX_PDU_LENGTH='12': "
    ), result.stderr
    assert result.stderr.count("\n") == 1
    # It never tried the (busy) port, nor created the storage directory.
    assert "in use" not in result.stderr.lower() and "listening" not in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("name", "raw"),
    [("OXIDIP_FILE_MODE", "0400"), ("OXIDIP_DIR_MODE", "755x"), ("OXIDIP_GROUP", "no-such-group")],
)
def test_serve_with_a_bad_mode_or_group_exits_2(tmp_path: Path, name: str, raw: str) -> None:
    result = run_oxidip("serve", env=clean_env(**{name: raw}), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"oxidip: configuration error: {name}={raw!r}: "), result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_on_busy_port_fails_to_start(tmp_path: Path, busy_port: int) -> None:
    """The control for the test above: with a good configuration the busy port is noticed."""
    env = clean_env(OXIDIP_LISTENER_HOST="127.0.0.1", OXIDIP_LISTENER_PORT=str(busy_port))
    result = run_oxidip("serve", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "cannot start" in result.stderr
    assert f"port={busy_port}" in result.stderr


def read_lines(stream: Any, lines: "queue.Queue[str | None]") -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_json_logs_listening_and_stops_on_signal(tmp_path: Path, stop_signal: int) -> None:
    env = clean_env(
        OXIDIP_LISTENER_HOST="127.0.0.1",
        OXIDIP_LISTENER_PORT="0",
        OXIDIP_LOG_FORMAT="json",
        OXIDIP_SHUTDOWN_TIMEOUT="5",
        OXIDIP_TYPO_VARIABLE="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "oxidip", "serve"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stderr, lines), daemon=True).start()
    try:
        records: list[dict[str, Any]] = []
        while True:
            line = lines.get(timeout=30)
            assert line is not None, f"exited early: {records}"
            records.append(json.loads(line))
            if records[-1]["msg"] == "listening":
                break
        listening = records[-1]
        assert isinstance(listening["port"], int) and listening["port"] > 0
        assert listening["aet"] == "OXIDIP"
        assert listening["files_root"] == str(tmp_path / "data")
        assert {"ts", "level"} <= set(listening)
        assert any(r.get("variable") == "OXIDIP_TYPO_VARIABLE" for r in records[:-1])
        with socket.create_connection(("127.0.0.1", listening["port"]), timeout=5):
            pass
        process.send_signal(stop_signal)
        assert process.wait(timeout=30) == 0
        while (line := lines.get(timeout=5)) is not None:
            records.append(json.loads(line))
        assert records[-1]["msg"] == "stopped"
        assert process.stdout is not None and process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class FakeReceiver:
    """Stands in for ``oxidip.Receiver`` in ``consume``: a scripted sequence of batches."""

    def __init__(self, batches: list[list[Any]]) -> None:
        self.batches = batches
        self.stopped_with: list[float] = []

    def next_batch(self, max_events: int, timeout: float, linger: float) -> list[Any] | None:
        if self.batches:
            return self.batches.pop(0)
        return None if self.stopped_with else []

    def stop(self, timeout: float) -> None:
        self.stopped_with.append(timeout)


def test_consume_stops_once_drains_and_survives_a_failing_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from oxidip.serve import consume

    fake = FakeReceiver([[1], [], [2, 3]])
    seen: list[Any] = []

    def broken(batch: list[Any]) -> None:
        raise RuntimeError("boom")

    stop = threading.Event()
    stop.set()
    with caplog.at_level(logging.INFO, logger="oxidip"):
        requested = consume(cast(Any, fake), [broken, seen.extend], stop, 7.0, poll=0.01)
    assert requested
    assert fake.stopped_with == [7.0]
    assert seen == [1, 2, 3]
    assert [r.msg for r in caplog.records].count("event handler failed") == 2


# --- TLS listener --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_env(pki: Pki, **overrides: str) -> dict[str, str]:
    env = {"OXIDIP_TLS_CERT": str(pki.server.cert), "OXIDIP_TLS_KEY": str(pki.server.key)}
    env.update({f"OXIDIP_{name}": value for name, value in overrides.items()})
    return env


def only_problem(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    (problem,) = caught.value.problems
    return problem


def test_tls_listener_core_config(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pki.ca.parent)
    env = tls_env(pki, TLS_CA=pki.ca.name, TLS_PORT="0", PLAIN_LISTENER="off")
    core = Config.from_env(env).core()
    assert core.plain_listener is False
    assert core.tls == TlsListener(
        port=0, cert=str(pki.server.cert), key=str(pki.server.key), ca=str(pki.ca)
    )
    assert Config.from_env(tls_env(pki)).core().tls == TlsListener(
        port=2762, cert=str(pki.server.cert), key=str(pki.server.key), ca=None
    )
    _core.Receiver(msgspec.msgpack.encode(core))


def test_tls_files_go_in_pairs_and_some_listener_is_left(pki: Pki) -> None:
    cert, key, ca = str(pki.server.cert), str(pki.server.key), str(pki.ca)
    assert only_problem({"OXIDIP_TLS_CERT": cert}).startswith(
        "OXIDIP_TLS_KEY='': required when OXIDIP_TLS_CERT is set"
    )
    assert only_problem({"OXIDIP_TLS_KEY": key}).startswith("OXIDIP_TLS_CERT='': required")
    assert only_problem({"OXIDIP_TLS_CA": ca}).startswith(f"OXIDIP_TLS_CA={ca!r}: needs")
    assert only_problem({"OXIDIP_PLAIN_LISTENER": "false"}).startswith(
        "OXIDIP_PLAIN_LISTENER='false': no listener left"
    )
    same_port = tls_env(pki, LISTENER_PORT="11112", TLS_PORT="11112")
    assert only_problem(same_port).startswith("OXIDIP_TLS_PORT='11112': ")
    # Without the plain listener, the port is free for TLS.
    Config.from_env({**same_port, "OXIDIP_PLAIN_LISTENER": "false"})


def test_tls_files_that_do_not_load_name_their_variable(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
    )
    cases = [
        # A key where the certificate should be: no CERTIFICATE section.
        (tls_env(pki, TLS_CERT=str(pki.server.key)), "OXIDIP_TLS_CERT", "no CERTIFICATE"),
        (tls_env(pki, TLS_KEY=str(pki.server.cert)), "OXIDIP_TLS_KEY", "no private key"),
        (tls_env(pki, TLS_KEY=str(pki.client.key)), "OXIDIP_TLS_KEY", "does not match"),
        (tls_env(pki, TLS_CA=str(garbage)), "OXIDIP_TLS_CA", "cannot read PEM"),
        (tls_env(pki, TLS_KEY=str(tmp_path)), "OXIDIP_TLS_KEY", "cannot read it"),
    ]
    for env, name, reason in cases:
        problem = only_problem(env)
        assert problem.startswith(f"{name}={env[name]!r}: "), problem
        assert reason in problem, problem


def test_serve_with_a_certificate_but_no_key_exits_2(pki: Pki, tmp_path: Path) -> None:
    env = clean_env(
        OXIDIP_LISTENER_HOST="127.0.0.1",
        OXIDIP_LISTENER_PORT="0",
        OXIDIP_TLS_CERT=str(pki.server.cert),
    )
    result = run_oxidip("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "oxidip: configuration error: OXIDIP_TLS_KEY='': required when OXIDIP_TLS_CERT is set"
    ), result.stderr
    assert not (tmp_path / "data").exists()
    env["OXIDIP_TLS_KEY"] = str(pki.client.key)
    result = run_oxidip("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "configuration error: OXIDIP_TLS_KEY=" in result.stderr, result.stderr
    assert "does not match" in result.stderr
