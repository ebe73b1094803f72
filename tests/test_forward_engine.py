"""The forwarding engine (``_core.Forwarder``, ``_core.echo``) driven directly against real
peers: dcmtk ``storescp +B`` (bit-preserving: what it writes is what came on the wire) for
byte-identical data sets on one association per job and for a refused presentation context,
pynetdicom Storage SCPs answering each status class, aborting in the middle of a job or
rejecting the association (permanent, transient), and a port where nothing listens. Each
outcome must be classified as ``/work/issue11-spec.md`` section 1 says (PS3.4 C.4.2)."""

import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification

from oxidip import _core
from oxidip._boundary import (
    DeliveryResult,
    ForwardDestination,
    ForwarderConfig,
    ForwardItem,
    ForwardJob,
    ForwardOutcome,
    ItemOutcome,
    JobEnded,
    JobEndKind,
    StoredDataSet,
)
from tests.helpers.dicom import make_dataset, source_dataset_bytes, write_part10
from tests.helpers.nats import closed_port, free_port
from tests.helpers.tools import dcmtk_env, require_tool, wait_listening

HOST = "127.0.0.1"
_OUTCOMES = msgspec.msgpack.Decoder(list[ForwardOutcome])
_STORED = msgspec.msgpack.Decoder(StoredDataSet)

#: pydicom's own test files (bundled, no download), each in its stored transfer syntax.
TEST_FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "examples_overlay.dcm",
]


def stored_item(item_id: int, path: Path) -> ForwardItem:
    """The item of a Part 10 file, its UIDs as the registry would know them (its meta)."""
    stored = _STORED.decode(_core.read_stored_for_sending(str(path)))
    return ForwardItem(
        item_id,
        str(path),
        stored.sop_class_uid,
        stored.sop_instance_uid,
        stored.transfer_syntax_uid,
    )


def small_files(directory: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, count + 1):
        path = directory / f"{number}.dcm"
        write_part10(path, make_dataset(instance_number=number, pixel_bytes=4000))
        paths.append(path)
    return paths


def pydicom_files(directory: Path, names: Sequence[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        found = get_testdata_file(name)
        assert isinstance(found, str), name
        paths.append(Path(shutil.copy(found, directory / name)))
    return paths


def job(job_id: int, port: int, called_aet: str, items: list[ForwardItem]) -> ForwardJob:
    destination = ForwardDestination(
        name="dest", called_aet=called_aet, host=HOST, port=port, calling_aet="OXIDIP"
    )
    return ForwardJob(job_id=job_id, destination=destination, items=items)


def engine(max_associations: int = 4, timeout: float = 10.0) -> _core.Forwarder:
    config = ForwarderConfig(timeout=timeout, max_pdu_length=0, max_associations=max_associations)
    return _core.Forwarder(msgspec.msgpack.encode(config))


def until_ended(forwarder: _core.Forwarder, jobs: int) -> list[ForwardOutcome]:
    """Every outcome until ``jobs`` jobs have ended (at most 30 s)."""
    outcomes: list[ForwardOutcome] = []
    for _ in range(300):
        outcomes += _OUTCOMES.decode(forwarder.next_outcomes(1000, 0.1))
        if sum(isinstance(o, JobEnded) for o in outcomes) == jobs:
            assert forwarder.running == 0
            return outcomes
    raise AssertionError(f"jobs did not end within 30 s: {outcomes}")


def forward(jobs: list[ForwardJob], timeout: float = 10.0) -> list[ForwardOutcome]:
    """Submits ``jobs`` to a new engine; every outcome until each job has ended."""
    forwarder = engine(timeout=timeout)
    forwarder.submit(msgspec.msgpack.encode(jobs))
    return until_ended(forwarder, len(jobs))


def items_of(outcomes: list[ForwardOutcome]) -> list[ItemOutcome]:
    return [o for o in outcomes if isinstance(o, ItemOutcome)]


def ends_of(outcomes: list[ForwardOutcome]) -> list[JobEnded]:
    return [o for o in outcomes if isinstance(o, JobEnded)]


def delivered(job_id: int, item_id: int) -> ItemOutcome:
    return ItemOutcome(job_id, item_id, DeliveryResult.DELIVERED, 0, "")


OK = JobEnded(job_id=1, end=JobEndKind.OK, error="")

# --- dcmtk storescp ---------------------------------------------------------------------------


@dataclass
class Storescp:
    port: int
    out: Path
    log: Path

    def associations(self) -> int:
        # "Association Received" is logged for any connection (wait_listening's probe too).
        return self.log.read_text().count("Association Acknowledged")

    def files(self) -> list[Path]:
        return sorted(self.out.iterdir())


@contextmanager
def storescp(tmp_path: Path, *options: str) -> Iterator[Storescp]:
    """``storescp +B`` (bit-preserving) writing to a directory of its own, verbose log kept."""
    out, log = tmp_path / "storescp", tmp_path / "storescp.log"
    out.mkdir()
    port = free_port()
    args = [require_tool("storescp"), "-v", "+B", *options, "-aet", "STORESCP"]
    with (
        log.open("w") as sink,
        subprocess.Popen(
            [*args, "-od", str(out), str(port)], env=dcmtk_env(), stdout=sink, stderr=sink
        ) as proc,
    ):
        try:
            wait_listening(HOST, port, proc)
            yield Storescp(port, out, log)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_jobs_reach_storescp_byte_for_byte_each_on_one_association(tmp_path: Path) -> None:
    small = small_files(tmp_path / "small", 20)
    # +xa: every transfer syntax accepted, the JPEG ones included.
    files = pydicom_files(tmp_path / "pydicom", TEST_FILES)
    with storescp(tmp_path, "+xa") as scp:
        assert _core.echo(HOST, scp.port, "OXIDIP", "STORESCP", 5.0) == 0
        first = job(1, scp.port, "STORESCP", [stored_item(n, p) for n, p in enumerate(small)])
        second = job(2, scp.port, "STORESCP", [stored_item(n, p) for n, p in enumerate(files)])
        outcomes = forward([first, second])
        received = scp.files()
        associations = scp.associations()
    assert sorted(items_of(outcomes), key=lambda o: (o.job_id, o.item_id)) == [
        *(delivered(1, n) for n in range(len(small))),
        *(delivered(2, n) for n in range(len(files))),
    ]
    assert sorted(ends_of(outcomes), key=lambda o: o.job_id) == [OK, JobEnded(2, JobEndKind.OK, "")]
    # The echo's association, then one per job.
    assert associations == 3, scp.log.read_text()[-2000:]
    sent = {
        _STORED.decode(_core.read_stored_for_sending(str(p))).sop_instance_uid: p
        for p in [*small, *files]
    }
    assert len(received) == len(sent)
    for path in received:
        uid = _STORED.decode(_core.read_stored_for_sending(str(path))).sop_instance_uid
        assert source_dataset_bytes(path) == source_dataset_bytes(sent[uid]), path.name


def test_a_syntax_the_destination_refuses_fails_that_item_and_is_not_reencoded(
    tmp_path: Path,
) -> None:
    files = pydicom_files(tmp_path / "pydicom", ["CT_small.dcm", "JPEG2000.dcm", "MR_small.dcm"])
    items = [stored_item(n, p) for n, p in enumerate(files)]
    # Without +xa storescp takes uncompressed syntaxes only.
    with storescp(tmp_path) as scp:
        outcomes = forward([job(1, scp.port, "STORESCP", items)])
        received = scp.files()
    refused = (
        "destination accepted no presentation context for Secondary Capture Image Storage "
        "in JPEG 2000 Image Compression"
    )
    assert items_of(outcomes) == [
        delivered(1, 0),
        ItemOutcome(1, 1, DeliveryResult.FAILED, None, refused),
        delivered(1, 2),
    ]
    assert ends_of(outcomes) == [OK]
    assert len(received) == 2


def test_missing_changed_and_unsendable_files_fail_before_being_sent(tmp_path: Path) -> None:
    [kept, moved, changed] = small_files(tmp_path / "files", 3)
    # A deflated data set of odd length, not padded as PS3.5 A.5 asks.
    [odd] = pydicom_files(tmp_path / "pydicom", ["image_dfl.dcm"])
    items = [stored_item(n, p) for n, p in enumerate([kept, moved, changed, odd])]
    moved.unlink()
    write_part10(changed, make_dataset())
    now_in_changed = stored_item(0, changed).sop_instance_uid
    with storescp(tmp_path, "+xa") as scp:
        outcomes = forward([job(1, scp.port, "STORESCP", items)])
        assert len(scp.files()) == 1
    assert items_of(outcomes) == [
        delivered(1, 0),
        ItemOutcome(1, 1, DeliveryResult.FAILED, None, f"file missing: {moved}"),
        ItemOutcome(
            1,
            2,
            DeliveryResult.FAILED,
            None,
            f"file changed: SOP Instance UID {now_in_changed} in file {changed}, "
            f"the registry has {items[2].sop_instance_uid}",
        ),
        ItemOutcome(
            1,
            3,
            DeliveryResult.FAILED,
            None,
            f"file not sendable: its data set has an odd length (4303 bytes): {odd}",
        ),
    ]
    assert ends_of(outcomes) == [OK]


# --- pynetdicom SCPs ----------------------------------------------------------------------


@dataclass
class Hold:
    """For the answer "hold": set once a C-STORE is held; the answer waits for ``release``."""

    reached: threading.Event
    release: threading.Event


@contextmanager
def pynetdicom_scp(
    answers: Sequence[int | tuple[int, str] | str],
    *,
    require_called_aet: bool = False,
    maximum_associations: int = 10,
    hold: Hold | None = None,
) -> Iterator[int]:
    """A Storage SCP (AE title DEST) answering the n-th C-STORE with ``answers[n]``: a
    status, a (status, ErrorComment), "abort" (A-ABORT instead of a response) or "hold"
    (success once ``hold.release`` is set, at most 30 s later). Yields its port."""
    lock = threading.Lock()
    count = [0]

    def on_store(event: evt.Event) -> int | Dataset:
        with lock:
            answer = answers[count[0]]
            count[0] += 1
        if answer == "abort":
            event.assoc.abort()
            return 0xA700
        if answer == "hold":
            assert hold is not None
            hold.reached.set()
            hold.release.wait(30)
            return 0x0000
        if isinstance(answer, tuple):
            rsp = Dataset()
            rsp.Status, rsp.ErrorComment = answer
            return rsp
        assert isinstance(answer, int)
        return answer

    ae = AE(ae_title="DEST")
    ae.require_called_aet = require_called_aet
    ae.maximum_associations = maximum_associations
    for context in _sop_classes():
        ae.add_supported_context(context, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    server = ae.start_server((HOST, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield server.server_address[1]
    finally:
        if hold is not None:
            hold.release.set()
        server.shutdown()


def _sop_classes() -> list[str]:
    return ["1.2.840.10008.5.1.4.1.1.7"]  # Secondary Capture: make_dataset's


def test_each_status_class_is_classified_and_out_of_resources_stops_the_job(
    tmp_path: Path,
) -> None:
    files = small_files(tmp_path / "files", 6)
    answers: list[int | tuple[int, str] | str] = [
        0x0000,
        (0xB000, "coerced"),
        0x0122,
        (0xC000, "cannot parse"),
        0x0001,
        (0xA700, "disk full"),
    ]
    with pynetdicom_scp(answers) as port:
        outcomes = forward([job(1, port, "DEST", [stored_item(n, p) for n, p in enumerate(files)])])
    assert items_of(outcomes) == [
        delivered(1, 0),
        ItemOutcome(1, 1, DeliveryResult.WARNING, 0xB000, "coerced"),
        ItemOutcome(1, 2, DeliveryResult.FAILED, 0x0122, "Refused: SOP Class not supported"),
        ItemOutcome(1, 3, DeliveryResult.FAILED, 0xC000, "cannot parse"),
        ItemOutcome(
            1,
            4,
            DeliveryResult.WARNING,
            0x0001,
            "Warning: Requested optional Attributes are not supported",
        ),
    ]
    error = "C-STORE answered A700 (Refused: Out of Resources): disk full"
    assert ends_of(outcomes) == [JobEnded(1, JobEndKind.TRANSIENT, error)]


def test_an_abort_in_the_middle_of_a_job_is_transient(tmp_path: Path) -> None:
    files = small_files(tmp_path / "files", 5)
    with pynetdicom_scp([0x0000, 0x0000, "abort"]) as port:
        outcomes = forward([job(1, port, "DEST", [stored_item(n, p) for n, p in enumerate(files)])])
    assert items_of(outcomes) == [delivered(1, 0), delivered(1, 1)]
    [end] = ends_of(outcomes)
    assert end.end == JobEndKind.TRANSIENT
    # The A-ABORT as such, or (pynetdicom closing at once) the connection reset after it.
    assert "after 2 of 5 instances" in end.error, end
    assert end.error.startswith(("association aborted by the peer", "connection")), end


def test_rejections_permanent_and_transient_and_connection_refused(tmp_path: Path) -> None:
    [path] = small_files(tmp_path / "files", 1)
    items = [stored_item(0, path)]
    nowhere = closed_port()
    with (
        pynetdicom_scp([], require_called_aet=True) as strict,
        pynetdicom_scp([], maximum_associations=1) as busy,
    ):
        # The busy one's only association, held while the job calls.
        holder = AE(ae_title="HOLDER")
        holder.add_requested_context(Verification)
        held = holder.associate(HOST, busy, ae_title="DEST")
        assert held.is_established
        try:
            outcomes = forward(
                [
                    job(1, strict, "NOT-DEST", items),
                    job(2, busy, "DEST", items),
                    job(3, nowhere, "DEST", items),
                ]
            )
        finally:
            held.release()
    assert items_of(outcomes) == []
    assert sorted(ends_of(outcomes), key=lambda o: o.job_id) == [
        JobEnded(
            1,
            JobEndKind.PERMANENT,
            "association rejected (permanent): called AE title not recognized",
        ),
        JobEnded(2, JobEndKind.TRANSIENT, "association rejected (transient): local limit exceeded"),
        JobEnded(3, JobEndKind.TRANSIENT, f"connection refused by {HOST}:{nowhere}"),
    ]


def test_echo_says_why_when_there_is_no_association() -> None:
    nowhere = closed_port()
    with pytest.raises(OSError, match=f"^connection refused by {HOST}:{nowhere}$"):
        _core.echo(HOST, nowhere, "OXIDIP", "DEST", 5.0)
    with pynetdicom_scp([], require_called_aet=True) as port:
        assert _core.echo(HOST, port, "OXIDIP", "DEST", 5.0) == 0
        with pytest.raises(OSError, match="rejected \\(permanent\\): called AE title"):
            _core.echo(HOST, port, "OXIDIP", "OTHER", 5.0)


def test_cancel_aborts_a_job_in_the_middle_of_an_item(tmp_path: Path) -> None:
    files = small_files(tmp_path / "files", 3)
    hold = Hold(threading.Event(), threading.Event())
    forwarder = engine()
    with pynetdicom_scp([0x0000, "hold", 0x0000], hold=hold) as port:
        items = [stored_item(n, p) for n, p in enumerate(files)]
        forwarder.submit(msgspec.msgpack.encode([job(1, port, "DEST", items)]))
        assert hold.reached.wait(10), "the second C-STORE reached the peer"
        forwarder.cancel([7, 1])
        outcomes = until_ended(forwarder, 1)
    assert items_of(outcomes) == [delivered(1, 0)]
    assert ends_of(outcomes) == [JobEnded(1, JobEndKind.CANCELLED, "cancelled")]


def test_stop_ends_every_job_and_aborts_what_outlives_its_timeout(tmp_path: Path) -> None:
    files = small_files(tmp_path / "files", 2)
    hold = Hold(threading.Event(), threading.Event())
    # One association at once: one job waits for the other's.
    forwarder = engine(max_associations=1)
    with pynetdicom_scp([0x0000, "hold"], hold=hold) as port:
        items = [stored_item(n, p) for n, p in enumerate(files)]
        forwarder.submit(
            msgspec.msgpack.encode([job(1, port, "DEST", items), job(2, port, "DEST", items)])
        )
        assert hold.reached.wait(10)
        forwarder.stop(0.3)
        # Every job has ended once stop returns: its JobEnded is among the outcomes.
        assert forwarder.running == 0
        outcomes = _OUTCOMES.decode(forwarder.next_outcomes(100, 0.0))
        # Jobs submitted now end at once.
        forwarder.submit(msgspec.msgpack.encode([job(3, port, "DEST", items)]))
        late = until_ended(forwarder, 1)
    # Either job may have had the association first: the one that sent an item.
    [sent] = items_of(outcomes)
    assert sent == delivered(sent.job_id, 0)
    other = 3 - sent.job_id
    stopped = "stopped: the forwarder is shutting down"
    timed_out = "stopped: the forwarder's stop timeout passed (association aborted)"
    assert sorted(ends_of(outcomes), key=lambda o: o.job_id != sent.job_id) == [
        JobEnded(sent.job_id, JobEndKind.CANCELLED, timed_out),
        JobEnded(other, JobEndKind.CANCELLED, stopped),
    ]
    assert late == [JobEnded(3, JobEndKind.CANCELLED, stopped)]
