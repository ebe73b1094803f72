"""Shared fixtures: in-process receivers on free ports with their own storage roots, always
stopped at the end of the test (even when it fails); the registry database of a test, once
SQLite and once a PostgreSQL database of its own."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.dicom import SIMPLE_TEMPLATE
from tests.helpers.e2e import postgres_database
from tests.helpers.receiver import RunningReceiver, build_env

StartReceiver = Callable[..., RunningReceiver]


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[StartReceiver]:
    """Factory: ``start_receiver(SCP_STRICT=True, ...)`` starts a receiver configured like
    ``Config.from_env`` with ``OXIDIP_``-prefixed overrides (the prefix may be left out), on
    127.0.0.1 and a free port, storing under a fresh directory of ``tmp_path``."""
    from oxidip import Config

    running: list[RunningReceiver] = []

    def start(**overrides: object) -> RunningReceiver:
        root = tmp_path / f"storage{len(running)}"
        root.mkdir()
        config = Config.from_env(build_env(root, overrides))
        receiver = RunningReceiver(config, root)
        running.append(receiver)
        return receiver

    yield start
    errors = []
    for receiver in reversed(running):
        try:
            receiver.stop()
        except Exception as error:  # noqa: BLE001 - stop the others, then report
            errors.append(error)
    if errors:
        raise errors[0]


@pytest.fixture
def receiver(start_receiver: StartReceiver) -> RunningReceiver:
    """A receiver with defaults, except the simple path template (exact paths)."""
    return start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The registry connection of a test: None (SQLite under the storage root), then the URL
    of a fresh PostgreSQL database (dropped afterwards)."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_database() as url:
        yield url
