"""Expected series sizes by C-FIND (``oxidip.completeness``): lookups against PACS stand-ins
that answer right, empty, wrongly, with failures, slowly or not at all. Timing assertions are bounds derived from the configured timeout (structure:
concurrent, not serial; non-blocking), not benchmarks."""

import functools
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from oxidip.completeness import STUDY_ROOT_FIND, ExpectedCount, ExpectedCountLookup
from oxidip.nodes import NodeDirectory, RemoteNode
from tests.helpers.query_scp import ClosedPort, QueryScp, SilentServer

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
OUR_AET = "OXIDIP"
SENDER = "SENDER"


def one_result(lookup: ExpectedCountLookup, timeout: float = 30.0) -> ExpectedCount:
    results = lookup.wait(timeout)
    assert len(results) == 1, f"expected one result within {timeout} s, got {results}"
    return results[0]


def all_results(lookup: ExpectedCountLookup, count: int, timeout: float) -> list[ExpectedCount]:
    deadline = time.monotonic() + timeout
    results: list[ExpectedCount] = []
    while len(results) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        results += lookup.wait(remaining)
    assert len(results) == count, f"{len(results)} of {count} results within {timeout} s"
    return results


def lookup_once(address: RemoteNode, **options: float) -> ExpectedCount:
    """One lookup for SERIES sent by SENDER (whose PACS is ``address``)."""
    settings: dict[str, float] = {"timeout": 2.0, "retries": 0}
    settings.update(options)
    lookup = ExpectedCountLookup(
        {SENDER: address},
        OUR_AET,
        timeout=settings["timeout"],
        retries=int(settings["retries"]),
    )
    try:
        lookup.request(SENDER, STUDY, SERIES)
        return one_result(lookup)
    finally:
        lookup.close()


# --- answers ----------------------------------------------------------------------------------


def test_known_count_and_the_query_sent() -> None:
    with QueryScp({SERIES: 7}, aet="THEPACS") as scp:
        result = lookup_once(scp.address)
        assert result == ExpectedCount(
            SERIES, 7, "known", "PACS THEPACS answered NumberOfSeriesRelatedInstances=7", SENDER
        )
        assert scp.calling_aets == [OUR_AET]
        (query,) = scp.queries
        assert query.QueryRetrieveLevel == "SERIES"
        assert query.StudyInstanceUID == STUDY
        assert query.SeriesInstanceUID == SERIES
        assert "NumberOfSeriesRelatedInstances" in query
        assert query.NumberOfSeriesRelatedInstances in (None, "")
    assert STUDY_ROOT_FIND == "1.2.840.10008.5.1.4.1.2.2.1"


def test_a_count_already_known_is_answered_without_asking() -> None:
    """``oxidip pull`` gives its in-process receiver the counts its own C-FIND found: the
    PACS is not asked the same again (it is asked for any other series)."""
    with QueryScp({SERIES: 7}, aet="THEPACS") as scp:
        lookup = ExpectedCountLookup({SENDER: scp.address}, OUR_AET, timeout=2.0, retries=0)
        try:
            known = ExpectedCount(SERIES, 5, "known", "5: from oxidip pull's C-FIND", SENDER)
            lookup.already_known([known])
            lookup.request(SENDER, STUDY, SERIES)
            assert one_result(lookup) == known
            assert scp.queries == []
            lookup.request("OTHER", STUDY, SERIES)  # another sender's series: not that one
            assert one_result(lookup).status == "unknown"
        finally:
            lookup.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_pacs_address() -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    with QueryScp({SERIES: 9}, host="::1") as scp:
        addresses = NodeDirectory.parse(f"{SENDER}=[::1]:{scp.port}")
        result = lookup_once(addresses[SENDER])
    assert (result.status, result.expected) == ("known", 9)


def test_zero_is_unknown() -> None:
    """We only ask about series we are receiving: a PACS counting 0 does not hold it."""
    with QueryScp({SERIES: 0}) as scp:
        result = lookup_once(scp.address)
    assert (result.status, result.expected) == ("unknown", None)
    assert "NumberOfSeriesRelatedInstances=0" in result.detail


def test_several_matches_use_the_first() -> None:
    with QueryScp({SERIES: 4}, mode="several") as scp:
        result = lookup_once(scp.address)
    assert (result.status, result.expected) == ("known", 4)
    assert "2 matches" in result.detail and "first" in result.detail


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("empty", "empty NumberOfSeriesRelatedInstances"),
        ("absent", "without NumberOfSeriesRelatedInstances"),
        ("no-match", "0 matches"),
        ("count", "0 matches"),  # the SCP knows counts for other series only
    ],
)
def test_no_usable_answer_is_unknown(mode: str, says: str) -> None:
    with QueryScp({"1.2.3.other": 3}, mode=mode) as scp:  # type: ignore[arg-type]
        result = lookup_once(scp.address, retries=2)
        assert scp.finds == 1, "an answer without a count is not retried"
    assert result.series_instance_uid == SERIES
    assert (result.status, result.expected) == ("unknown", None)
    assert says in result.detail


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
@pytest.mark.filterwarnings("ignore:Value .* is not valid for elements with a VR of IS")
@pytest.mark.parametrize("value", ["abc", "-3", "2.5", "1\\2"])
def test_garbage_count_is_unknown(value: str) -> None:
    with QueryScp(mode="garbage", value=value) as scp:
        result = lookup_once(scp.address)
    assert (result.status, result.expected) == ("unknown", None)
    assert repr(value) in result.detail and "not a non-negative integer" in result.detail


@pytest.mark.parametrize("status", [0xA700, 0xC000])
def test_failure_status_is_an_error_after_retries(status: int) -> None:
    with QueryScp(mode="failure", status=status) as scp:
        result = lookup_once(scp.address, retries=2)
        assert scp.finds == 3, f"{scp.finds} C-FINDs, expected 1 + 2 retries"
        assert scp.associations == 3
    assert (result.status, result.expected) == ("error", None)
    assert f"0x{status:04X}" in result.detail
    assert "query SCP told to fail" in result.detail
    assert "after 3 attempts" in result.detail


def test_slow_answer_times_out_and_is_retried() -> None:
    timeout = 0.5
    with QueryScp({SERIES: 3}, delay=timeout * 6) as scp:
        started = time.monotonic()
        result = lookup_once(scp.address, timeout=timeout, retries=1)
        elapsed = time.monotonic() - started
        assert scp.finds == 2
    assert (result.status, result.expected) == ("error", None)
    assert "timed out" in result.detail and "C-FIND response" in result.detail
    assert "after 2 attempts" in result.detail
    # two attempts of one timeout each, plus the backoff, not the SCP's delay
    assert elapsed < 2 * timeout + ExpectedCountLookup.max_backoff + 2.0


def test_silent_server_times_out_and_is_retried() -> None:
    timeout = 0.5
    with SilentServer() as server:
        result = lookup_once(server.address, timeout=timeout, retries=2)
        assert server.connections == 3
    assert (result.status, result.expected) == ("error", None)
    assert "timed out" in result.detail and "association request" in result.detail
    assert "after 3 attempts" in result.detail
    assert f"127.0.0.1:{server.port}" in result.detail


def test_closed_port_is_an_error_after_retries() -> None:
    with ClosedPort() as port:
        result = lookup_once(port.address, retries=2)
    assert (result.status, result.expected) == ("error", None)
    assert "could not connect" in result.detail and "after 3 attempts" in result.detail


def test_unknown_calling_aet_is_unknown_at_once() -> None:
    with QueryScp({SERIES: 3}) as scp:
        lookup = ExpectedCountLookup({SENDER: scp.address}, OUR_AET)
        try:
            lookup.request("STRANGER", STUDY, SERIES)
            # no wait: the result is there as soon as request() returns
            results = lookup.poll()
            assert lookup.pending == 0
        finally:
            lookup.close()
        assert scp.associations == 0
    assert len(results) == 1
    assert (results[0].status, results[0].expected) == ("unknown", None)
    assert "STRANGER" in results[0].detail


def test_calling_aet_lookup_ignores_padding() -> None:
    with QueryScp({SERIES: 2}) as scp:
        lookup = ExpectedCountLookup({SENDER: scp.address}, OUR_AET)
        try:
            lookup.request(SENDER + "  ", STUDY, SERIES)
            result = one_result(lookup)
        finally:
            lookup.close()
    assert (result.status, result.expected) == ("known", 2)


def test_results_come_per_series() -> None:
    counts = {f"{SERIES}.{i}": i + 1 for i in range(10)}
    with QueryScp(counts) as scp:
        lookup = ExpectedCountLookup({SENDER: scp.address}, OUR_AET, workers=3)
        try:
            for series in counts:
                lookup.request(SENDER, STUDY, series)
            results = all_results(lookup, len(counts), 60)
            assert lookup.pending == 0
            assert lookup.poll() == []
        finally:
            lookup.close()
    assert {r.series_instance_uid: r.expected for r in results} == counts
    assert {r.status for r in results} == {"known"}


# --- never in the way -------------------------------------------------------------------------


def test_slow_lookups_run_concurrently() -> None:
    """N lookups against a PACS that answers each C-FIND after ``delay`` all end in about one
    delay with N workers, far below the N delays a serial lookup would take."""
    n, delay = 8, 1.0
    counts = {f"{SERIES}.{i}": i + 1 for i in range(n)}
    with QueryScp(counts, delay=delay) as scp:
        lookup = ExpectedCountLookup(
            {SENDER: scp.address}, OUR_AET, timeout=delay * 10, retries=0, workers=n
        )
        try:
            started = time.monotonic()
            for series in counts:
                lookup.request(SENDER, STUDY, series)
            results = all_results(lookup, n, n * delay * 3)
            elapsed = time.monotonic() - started
        finally:
            lookup.close()
    assert {r.series_instance_uid: r.expected for r in results} == counts
    assert elapsed < delay * n / 2, f"{n} lookups of {delay} s took {elapsed:.2f} s"


def test_hanging_lookups_time_out_concurrently() -> None:
    """N lookups against a PACS that never answers all give up after about one timeout."""
    n, timeout = 6, 1.0
    with SilentServer() as server:
        lookup = ExpectedCountLookup(
            {SENDER: server.address}, OUR_AET, timeout=timeout, retries=0, workers=n
        )
        try:
            started = time.monotonic()
            for i in range(n):
                lookup.request(SENDER, STUDY, f"{SERIES}.{i}")
            results = all_results(lookup, n, n * timeout * 3)
            elapsed = time.monotonic() - started
        finally:
            lookup.close()
    assert {r.status for r in results} == {"error"}
    assert timeout * 0.9 <= elapsed < timeout * n / 2, f"took {elapsed:.2f} s"


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def test_request_never_blocks_on_a_hanging_pacs() -> None:
    timeout = 5.0
    with SilentServer() as server:
        lookup = ExpectedCountLookup(
            {SENDER: server.address}, OUR_AET, timeout=timeout, retries=2, workers=2
        )
        try:
            durations = [
                timed(functools.partial(lookup.request, SENDER, STUDY, f"{SERIES}.{i}"))
                for i in range(200)
            ]
            # the workers are now stuck in association requests that get no answer
            deadline = time.monotonic() + 5
            while server.connections < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.connections == 2
            durations += [timed(lambda: lookup.request(SENDER, STUDY, SERIES)) for _ in range(50)]
            assert lookup.pending == 250
            assert timed(lookup.poll) < timeout / 100
            assert lookup.poll() == []
        finally:
            closing = timed(lookup.close)
    assert max(durations) < timeout / 50, f"slowest request() took {max(durations):.3f} s"
    assert sum(durations) < timeout / 5
    assert closing < 1.0


def test_queue_full_is_an_error_at_once() -> None:
    with SilentServer() as server:
        lookup = ExpectedCountLookup(
            {SENDER: server.address}, OUR_AET, timeout=5, retries=0, workers=1, max_pending=3
        )
        try:
            for i in range(5):
                lookup.request(SENDER, STUDY, f"{SERIES}.{i}")
            assert lookup.pending == 3
            results = lookup.poll()
        finally:
            lookup.close()
    assert [(r.series_instance_uid, r.status) for r in results] == [
        (f"{SERIES}.3", "error"),
        (f"{SERIES}.4", "error"),
    ]
    assert all("lookup queue full" in r.detail for r in results)


def test_close_while_lookups_hang_returns_promptly() -> None:
    timeout, n = 10.0, 4
    with SilentServer() as server:
        lookup = ExpectedCountLookup(
            {SENDER: server.address}, OUR_AET, timeout=timeout, retries=2, workers=n
        )
        for i in range(n * 3):
            lookup.request(SENDER, STUDY, f"{SERIES}.{i}")
        deadline = time.monotonic() + 5
        while server.connections < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.connections == n, "the workers did not all start a lookup"
        closing = timed(lookup.close)
        assert closing < 1.0, f"close() took {closing:.2f} s"
        assert lookup.pending == 0
        # the abandoned lookups end soon (their associations are aborted), with no result
        workers = [t for t in threading.enumerate() if t.name.startswith("oxidip-cfind-")]
        for thread in workers:
            thread.join(timeout / 2)
        assert not [t for t in workers if t.is_alive()], "workers still running after close()"
        assert lookup.poll() == []
        assert server.connections == n, "lookups were still attempted after close()"
        # requests after close are answered, not queued
        lookup.request(SENDER, STUDY, SERIES)
        (late,) = lookup.poll()
        assert late.status == "error" and "closed" in late.detail


def test_invalid_settings_are_refused() -> None:
    options: dict[str, int]
    for options in ({"timeout": 0}, {"retries": -1}, {"workers": 0}, {"max_pending": 0}):
        with pytest.raises(ValueError):
            ExpectedCountLookup({}, OUR_AET, **options)


def test_the_receiver_loads_pydicom_and_pynetdicom_only_to_ask_a_pacs() -> None:
    # A fresh interpreter: this one has them loaded by the tests already.
    script = (
        "import sys, oxidip.cli\n"
        "print(sorted(m for m in ('numpy', 'pydicom', 'pynetdicom') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
