"""User hooks (``OXIDIP_HOOKS``): loading, calls, errors, ordering, back-pressure, close."""

import importlib
import itertools
import logging
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from oxidip import hooks as hooks_module
from oxidip._boundary import Attributes, InstanceStored
from oxidip.hooks import HookError, Hooks
from oxidip.logs import TextFormatter
from tests.helpers.polling import wait_until

_names = itertools.count()

MakeModule = Callable[[str], str]


class Row(msgspec.Struct):
    """Stands for ``oxidip.registry.SeriesRow``."""

    series_instance_uid: str
    study_instance_uid: str = "1.2.3"
    calling_aet: str = "PACS"
    expected: int | None = 2
    received: int = 2
    state: str = "complete"


def instance(sop: str, series: str = "1.2.3.4") -> InstanceStored:
    return InstanceStored(
        association_id=1,
        path=f"/data/{sop}.dcm",
        size=1234,
        attributes=Attributes(
            SOPInstanceUID=sop, SeriesInstanceUID=series, StudyInstanceUID="1.2.3"
        ),
        calling_aet="PACS",
        called_aet="OXIDIP",
        peer="127.0.0.1:5000",
        transfer_syntax="1.2.840.10008.1.2.1",
        received_at=1.0,
        stored_at=2.0,
        duplicate=False,
    )


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeModule]:
    """Writes a hooks module with the given source under a unique name, importable for the
    test; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(source: str) -> str:
        name = f"oxidip_test_hooks_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


@pytest.fixture
def opened() -> Iterator[list[Hooks]]:
    """Hooks to close at the end of the test, whatever happens."""
    hooks: list[Hooks] = []
    yield hooks
    for h in hooks:
        h.close(1)


def module(name: str) -> ModuleType:
    return sys.modules[name]


# A module recording every call, with a gate that on_instance waits on.
RECORDING = """
    import threading

    CALLS = []
    GATE = threading.Event()
    GATE.set()

    def on_instance(event):
        GATE.wait()
        CALLS.append(("instance", event.attributes.SOPInstanceUID))

    def on_series_complete(series):
        CALLS.append(("complete", series.series_instance_uid))

    def on_series_finalized(series):
        CALLS.append(("finalized", series.series_instance_uid))

    def register(instances):
        CALLS.append(("register", [i.attributes.SOPInstanceUID for i in instances],
                      threading.get_ident()))
"""


# --- loading -----------------------------------------------------------------------------


def test_no_module_means_no_hooks() -> None:
    for path in (None, "", "  "):
        hooks = Hooks.load(path)
        assert not hooks.replaces_registry
        assert hooks.names == []
        hooks.register([instance("1")])
        hooks.instance_stored([instance("1")])
        hooks.series_complete(Row("1.2"))
        hooks.series_finalized(Row("1.2"))
        assert hooks.backlog == 0
        hooks.close(1)


def test_missing_module() -> None:
    with pytest.raises(HookError, match=r"hooks module 'no_such_oxidip_hooks' not found"):
        Hooks.load("no_such_oxidip_hooks")
    with pytest.raises(HookError, match=r"'oxidip\.no_such' not found"):
        Hooks.load("oxidip.no_such")


def test_module_failing_to_import(make_module: MakeModule) -> None:
    broken = make_module("import no_such_dependency_of_hooks\n")
    with pytest.raises(HookError, match=r"importing hooks module .* failed: ModuleNotFoundError"):
        Hooks.load(broken)
    raising = make_module("raise RuntimeError('misconfigured hooks')\n")
    with pytest.raises(HookError, match=r"failed: RuntimeError: misconfigured hooks"):
        Hooks.load(raising)
    syntax = make_module("def on_instance(:\n")
    with pytest.raises(HookError, match=r"failed: SyntaxError"):
        Hooks.load(syntax)


def test_module_without_hooks(make_module: MakeModule) -> None:
    name = make_module("def on_something_else(x):\n    pass\n")
    with pytest.raises(HookError, match=r"defines none of on_instance, on_series_complete"):
        Hooks.load(name)


def test_invalid_hooks(make_module: MakeModule) -> None:
    with pytest.raises(HookError, match=r"on_instance must be a function, not int"):
        Hooks.load(make_module("on_instance = 3\n"))
    with pytest.raises(HookError, match=r'REGISTER_MODE must be "add" or "replace", not \'x\''):
        Hooks.load(make_module("REGISTER_MODE = 'x'\ndef register(i):\n    pass\n"))
    with pytest.raises(HookError, match=r'REGISTER_MODE is "replace" but there is no register'):
        Hooks.load(make_module("REGISTER_MODE = 'replace'\ndef on_instance(e):\n    pass\n"))


def test_each_hook_is_called(make_module: MakeModule, opened: list[Hooks]) -> None:
    name = make_module(RECORDING)
    hooks = Hooks.load(name)
    opened.append(hooks)
    assert hooks.names == ["on_instance", "on_series_complete", "on_series_finalized", "register"]
    assert not hooks.replaces_registry
    hooks.register([instance("1"), instance("2")])
    hooks.instance_stored([instance("1"), instance("2")])
    hooks.series_complete(Row("1.2.3.4"))
    hooks.series_finalized(Row("1.2.3.4"))
    hooks.close(5)
    calls = module(name).CALLS
    assert calls == [
        ("register", ["1", "2"], threading.get_ident()),  # in the caller's thread
        ("instance", "1"),
        ("instance", "2"),
        ("complete", "1.2.3.4"),
        ("finalized", "1.2.3.4"),
    ]


def test_only_some_hooks(make_module: MakeModule, opened: list[Hooks]) -> None:
    name = make_module(
        """
        CALLS = []
        def on_series_finalized(series):
            CALLS.append(series.state)
        """
    )
    hooks = Hooks.load(name)
    opened.append(hooks)
    assert hooks.names == ["on_series_finalized"]
    hooks.register([instance("1")])
    hooks.instance_stored([instance("1")])
    hooks.series_complete(Row("1.2"))
    hooks.series_finalized(Row("1.2", state="incomplete"))
    hooks.close(5)
    assert module(name).CALLS == ["incomplete"]


def test_register_modes(make_module: MakeModule, opened: list[Hooks]) -> None:
    add = Hooks.load(make_module("REGISTER_MODE = 'add'\ndef register(i):\n    pass\n"))
    replace = Hooks.load(make_module("REGISTER_MODE = 'replace'\ndef register(i):\n    pass\n"))
    opened += [add, replace]
    assert not add.replaces_registry
    assert replace.replaces_registry


def test_register_exceptions_propagate(make_module: MakeModule, opened: list[Hooks]) -> None:
    name = make_module(
        """
        def register(instances):
            raise ConnectionError("backend down")
        """
    )
    hooks = Hooks.load(name)
    opened.append(hooks)
    with pytest.raises(ConnectionError, match="backend down"):
        hooks.register([instance("1")])


# --- errors, order -----------------------------------------------------------------------


def test_exceptions_are_logged_with_uids_and_processing_continues(
    make_module: MakeModule, opened: list[Hooks], caplog: pytest.LogCaptureFixture
) -> None:
    name = make_module(
        """
        CALLS = []
        def on_instance(event):
            if event.attributes.SOPInstanceUID == "1.9.3":
                raise ValueError("cannot handle this one")
            CALLS.append(event.attributes.SOPInstanceUID)

        def on_series_complete(series):
            raise KeyError("series hook broken")

        def on_series_finalized(series):
            CALLS.append("finalized " + series.series_instance_uid)
        """
    )
    hooks = Hooks.load(name)
    opened.append(hooks)
    with caplog.at_level(logging.INFO, logger="oxidip.hooks"):
        hooks.instance_stored([instance(f"1.9.{i}", series="1.8.7") for i in range(1, 6)])
        hooks.series_complete(Row("1.8.7"))
        hooks.series_finalized(Row("1.8.7"))
        hooks.close(5)
    assert module(name).CALLS == ["1.9.1", "1.9.2", "1.9.4", "1.9.5", "finalized 1.8.7"]

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, caplog.text
    instance_error, series_error = errors
    for record in errors:
        assert record.name == "oxidip.hooks"
        assert record.getMessage() == "hook failed"
        assert record.exc_info is not None
        assert record.__dict__["series_instance_uid"] == "1.8.7"
        assert record.__dict__["calling_aet"] == "PACS"
    assert instance_error.__dict__["hook"] == f"{name}.on_instance"
    assert instance_error.__dict__["sop_instance_uid"] == "1.9.3"
    assert series_error.__dict__["hook"] == f"{name}.on_series_complete"
    # What a user sees in oxidip's log: the hook, the UIDs and the traceback.
    text = TextFormatter().format(instance_error)
    assert f"hook={name}.on_instance" in text
    assert "sop_instance_uid=1.9.3" in text
    assert "series_instance_uid=1.8.7" in text
    assert "ValueError: cannot handle this one" in text
    assert "Traceback" in text


def test_system_exit_in_a_hook_does_not_stop_the_worker(
    make_module: MakeModule, opened: list[Hooks], caplog: pytest.LogCaptureFixture
) -> None:
    name = make_module(
        """
        import sys
        CALLS = []
        def on_instance(event):
            if event.attributes.SOPInstanceUID == "1":
                sys.exit(3)
            CALLS.append(event.attributes.SOPInstanceUID)
        """
    )
    hooks = Hooks.load(name)
    opened.append(hooks)
    with caplog.at_level(logging.ERROR, logger="oxidip.hooks"):
        hooks.instance_stored([instance("1"), instance("2")])
        hooks.close(5)
    assert module(name).CALLS == ["2"]
    assert "SystemExit" in caplog.text


def test_order_is_preserved(make_module: MakeModule, opened: list[Hooks]) -> None:
    name = make_module(RECORDING)
    hooks = Hooks.load(name, queue_size=7)  # small: producers wait now and then
    opened.append(hooks)
    expected: list[tuple[str, str]] = []
    for batch in range(40):
        events = [instance(f"{batch}.{i}") for i in range(batch % 5)]
        hooks.instance_stored(events)
        expected += [("instance", f"{batch}.{i}") for i in range(batch % 5)]
        if batch % 3 == 0:
            hooks.series_complete(Row(f"s{batch}"))
            expected.append(("complete", f"s{batch}"))
        hooks.series_finalized(Row(f"s{batch}"))
        expected.append(("finalized", f"s{batch}"))
    hooks.close(10)
    assert module(name).CALLS == expected
    assert hooks.peak_backlog <= 7


# --- back-pressure, backlog, close --------------------------------------------------------


def test_slow_hook_fills_the_bounded_queue_and_the_producer_blocks(
    make_module: MakeModule, opened: list[Hooks]
) -> None:
    name = make_module(RECORDING)
    gate: threading.Event = module_gate(name)
    gate.clear()
    hooks = Hooks.load(name, queue_size=4)
    opened.append(hooks)

    done = threading.Event()

    def produce() -> None:
        hooks.instance_stored([instance(str(i)) for i in range(20)])
        hooks.series_finalized(Row("s"))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    # The worker holds the first call (blocked in the hook); 4 more fill the queue.
    wait_until(lambda: hooks.backlog == 4)
    samples = []
    for _ in range(30):
        samples.append(hooks.backlog)
        time.sleep(0.01)
    assert not done.is_set(), "the producer should be waiting for room"
    assert max(samples) == 4
    assert hooks.producers_waited >= 1

    gate.set()
    assert done.wait(10)
    producer.join(10)
    hooks.close(10)
    calls = module(name).CALLS
    assert calls == [("instance", str(i)) for i in range(20)] + [("finalized", "s")]
    assert hooks.peak_backlog == 4  # never more than the queue size
    assert hooks.dropped == 0


def module_gate(name: str) -> threading.Event:
    importlib.import_module(name)
    gate: Any = module(name).GATE
    assert isinstance(gate, threading.Event)
    return gate


def test_backlog_over_half_is_logged_at_most_every_10_s(
    make_module: MakeModule, opened: list[Hooks], caplog: pytest.LogCaptureFixture
) -> None:
    name = make_module(RECORDING)
    gate = module_gate(name)
    gate.clear()
    hooks = Hooks.load(name, queue_size=10)
    opened.append(hooks)
    with caplog.at_level(logging.WARNING, logger="oxidip.hooks"):
        hooks.instance_stored([instance("0")])  # taken by the worker, which waits
        wait_until(lambda: hooks.backlog == 0)
        hooks.instance_stored([instance(str(i)) for i in range(1, 6)])  # 5: half, no warning
        assert not [r for r in caplog.records if r.getMessage() == "hooks backlog"]
        hooks.instance_stored([instance("6")])  # 6 > 5
        hooks.instance_stored([instance("7")])
        hooks.instance_stored([instance("8")])
    warnings = [r for r in caplog.records if r.getMessage() == "hooks backlog"]
    assert len(warnings) == 1, caplog.text
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].__dict__["backlog"] == 6
    assert warnings[0].__dict__["queue_size"] == 10
    assert warnings[0].__dict__["hooks_module"] == name
    gate.set()
    hooks.close(5)
    assert len(module(name).CALLS) == 9


def test_backlog_warning_repeats_after_the_interval(
    make_module: MakeModule,
    opened: list[Hooks],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hooks_module, "BACKLOG_WARNING_INTERVAL", 0.2)
    name = make_module(RECORDING)
    gate = module_gate(name)
    gate.clear()
    hooks = Hooks.load(name, queue_size=6)
    opened.append(hooks)
    with caplog.at_level(logging.WARNING, logger="oxidip.hooks"):
        hooks.instance_stored([instance(str(i)) for i in range(5)])  # the worker holds one
        wait_until(lambda: hooks.backlog == 4)  # over 3: warned
        hooks.instance_stored([instance("a")])  # too soon for another
        time.sleep(0.3)
        hooks.instance_stored([instance("b")])  # warning again
    warnings = [r for r in caplog.records if r.getMessage() == "hooks backlog"]
    assert len(warnings) == 2, caplog.text
    assert warnings[-1].__dict__["backlog"] == 6
    gate.set()
    hooks.close(5)


def test_close_drains_the_queue(make_module: MakeModule, opened: list[Hooks]) -> None:
    name = make_module(
        """
        import time
        CALLS = []
        def on_instance(event):
            time.sleep(0.002)
            CALLS.append(event.attributes.SOPInstanceUID)
        """
    )
    hooks = Hooks.load(name, queue_size=100)
    opened.append(hooks)
    hooks.instance_stored([instance(str(i)) for i in range(80)])
    assert hooks.backlog > 0
    hooks.close(10)
    assert module(name).CALLS == [str(i) for i in range(80)]
    assert hooks.dropped == 0
    # Calls after close are dropped, not run and not blocking.
    hooks.instance_stored([instance("late")])
    assert hooks.dropped == 1
    hooks.close(1)  # idempotent


def test_close_gives_up_after_its_timeout_and_releases_producers(
    make_module: MakeModule, opened: list[Hooks], caplog: pytest.LogCaptureFixture
) -> None:
    name = make_module(RECORDING)
    gate = module_gate(name)
    gate.clear()
    hooks = Hooks.load(name, queue_size=3)
    opened.append(hooks)
    producer = threading.Thread(
        target=hooks.instance_stored, args=([instance(str(i)) for i in range(10)],)
    )
    producer.start()
    wait_until(lambda: hooks.backlog == 3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="oxidip.hooks"):
        hooks.close(0.3)
    assert time.monotonic() - started < 3
    producer.join(5)
    assert not producer.is_alive(), "close must release producers waiting for room"
    assert hooks.dropped == 9  # all but the one the worker holds
    closing = [r for r in caplog.records if "closed before" in r.getMessage()]
    assert closing and closing[0].__dict__["hook_still_running"] is True
    gate.set()  # the held hook finishes; nothing more runs
    time.sleep(0.05)
    assert module(name).CALLS == [("instance", "0")]
