"""Retrieves in progress (``_core.move``, ``Receiver.get``, ``_core.Retrieval``) against real
peers: Orthanc as the PACS, C-MOVE to a running receiver whose AE title it knows and C-GET
through the receiver's store path, pending responses seen as they come and every instance
stored byte for byte as Orthanc holds it; a pynetdicom C-GET SCP that waits for our
C-CANCEL-RQ, and one that refuses us the SCP role of storage."""

import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from oxidip import _core
from tests.conftest import StartReceiver
from tests.helpers.dicom import (
    EXPLICIT_LE,
    SECONDARY_CAPTURE,
    encode_dataset,
    make_dataset,
    source_dataset_bytes,
)
from tests.helpers.orthanc import OrthancServer
from tests.helpers.receiver import RunningReceiver
from tests.helpers.retrieval import drain, finished, load_series, series_identifier
from tests.helpers.retrieve_scp import Misbehaviour, RetrieveScp

OUR_AET = "OXIDIP"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PENDING = 0xFF00
CANCEL = 0xFE00
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the module; our AE title is a modality (its port set once a receiver
    listens), so it answers our requests and can send to it."""
    with OrthancServer(
        tmp_path_factory.mktemp("orthanc"), modalities={"oxidip": (OUR_AET, "127.0.0.1", 1)}
    ) as server:
        yield server


def get(
    rx: RunningReceiver,
    host: str,
    port: int,
    called_aet: str,
    identifier: Dataset,
    idle_timeout: float = TIMEOUT,
) -> _core.Retrieval:
    """A C-GET of secondary capture instances, explicit VR little endian only (stored as
    sent), into ``rx``."""
    return rx.rx._core.get(
        host,
        port,
        called_aet,
        STUDY_ROOT_GET,
        encode_dataset(identifier, EXPLICIT_LE),
        EXPLICIT_LE,
        [SECONDARY_CAPTURE],
        [EXPLICIT_LE],
        TIMEOUT,
        idle_timeout,
    )


def assert_stored_as_orthanc_holds(
    orthanc: OrthancServer, rx: RunningReceiver, instances: list[Dataset], since: int
) -> None:
    """Every instance registered by ``rx`` (sent by Orthanc), its data set byte for byte
    Orthanc's."""
    stored = rx.wait_stored(len(instances), since=since)
    assert sorted(e.attributes.SOPInstanceUID for e in stored) == sorted(
        ds.SOPInstanceUID for ds in instances
    )
    held = {
        orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]: i
        for s in orthanc.series()
        for i in s["Instances"]
    }
    with tempfile.TemporaryDirectory() as scratch:
        for event in stored:
            assert event.calling_aet == orthanc.aet
            original = Path(scratch, "orthanc.dcm")
            original.write_bytes(orthanc_file(orthanc, held[event.attributes.SOPInstanceUID]))
            assert source_dataset_bytes(event.path) == source_dataset_bytes(original)


def orthanc_file(orthanc: OrthancServer, instance_id: str) -> bytes:
    """The Part 10 file Orthanc holds (``GET /instances/{id}/file``)."""
    with urllib.request.urlopen(f"{orthanc.url}/instances/{instance_id}/file", timeout=30) as r:
        data: bytes = r.read()
    return data


def test_move_from_orthanc_to_the_receiver_reports_progress(
    orthanc: OrthancServer, start_receiver: StartReceiver
) -> None:
    study_uid, series_uid, instances = load_series(orthanc, 3)
    rx = start_receiver(AET=OUR_AET)
    orthanc.add_modality("oxidip", OUR_AET, rx.host, rx.port)
    since = rx.mark()
    retrieval = _core.move(
        orthanc.host,
        orthanc.dicom_port,
        OUR_AET,
        orthanc.aet,
        STUDY_ROOT_MOVE,
        encode_dataset(series_identifier(study_uid, series_uid), EXPLICIT_LE),
        EXPLICIT_LE,
        OUR_AET,
        TIMEOUT,
        TIMEOUT,
    )
    progress = drain(retrieval)
    result = retrieval.result
    assert result is not None, retrieval.error
    assert (result.status, result.completed, result.failed) == (0, len(instances), 0)
    assert progress, "Orthanc sends a pending response per sub-operation"
    assert {p.status for p in progress} == {PENDING}
    assert [p.remaining for p in progress] == sorted((p.remaining for p in progress), reverse=True)
    assert retrieval.instances_received == 0, "a C-MOVE's instances come to the receiver"
    assert_stored_as_orthanc_holds(orthanc, rx, instances, since)


def test_move_to_a_destination_orthanc_does_not_know_ends_with_its_status(
    orthanc: OrthancServer, start_receiver: StartReceiver
) -> None:
    study_uid, series_uid, _ = load_series(orthanc, 1)
    rx = start_receiver(AET=OUR_AET)
    orthanc.add_modality("oxidip", OUR_AET, rx.host, rx.port)
    retrieval = _core.move(
        orthanc.host,
        orthanc.dicom_port,
        OUR_AET,
        orthanc.aet,
        STUDY_ROOT_MOVE,
        encode_dataset(series_identifier(study_uid, series_uid), EXPLICIT_LE),
        EXPLICIT_LE,
        "NOBODY",
        TIMEOUT,
        TIMEOUT,
    )
    result = finished(retrieval)
    # PS3.4 C.4.2.1.5: A801, move destination unknown (Orthanc may say C000 instead).
    assert result.status in (0xA801, 0xC000), hex(result.status)


def test_get_from_orthanc_stores_every_instance_with_progress(
    orthanc: OrthancServer, start_receiver: StartReceiver
) -> None:
    study_uid, series_uid, instances = load_series(orthanc, 4)
    rx = start_receiver(AET=OUR_AET)
    orthanc.add_modality("oxidip", OUR_AET, rx.host, rx.port)
    since = rx.mark()
    retrieval = get(
        rx, orthanc.host, orthanc.dicom_port, orthanc.aet, series_identifier(study_uid, series_uid)
    )
    progress = drain(retrieval)
    result = retrieval.result
    assert result is not None, retrieval.error
    assert (result.status, result.completed, result.failed) == (0, len(instances), 0)
    assert [p.remaining for p in progress][-1:] == [0], progress
    assert retrieval.instances_received == len(instances)
    assert_stored_as_orthanc_holds(orthanc, rx, instances, since)


def test_get_cancelled_while_the_peer_waits_ends_with_cancel(
    start_receiver: StartReceiver,
) -> None:
    """The SCP sends one instance, then nothing until our C-CANCEL-RQ: it comes at once,
    names the C-GET, and the operation ends with Cancel (FE00), the instance stored."""
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = [
        make_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=n)
        for n in (1, 2, 3)
    ]
    rx = start_receiver(AET=OUR_AET)
    since = rx.mark()
    waits = {series_uid: Misbehaviour("stall", after=1)}
    with RetrieveScp(instances, misbehaviour=waits) as scp:
        retrieval = get(rx, scp.host, scp.port, scp.aet, series_identifier(study_uid, series_uid))
        first = retrieval.next_progress(TIMEOUT)
        assert first is not None, retrieval.error
        assert (first.status, first.remaining, first.completed) == (PENDING, 2, 1)
        retrieval.cancel()
        assert scp.cancelled.wait(TIMEOUT), "the C-CANCEL-RQ reached the SCP"
        result = finished(retrieval)
    assert result.status == CANCEL
    assert retrieval.instances_received == 1
    assert [e.attributes.SOPInstanceUID for e in rx.wait_stored(1, since=since)] == [
        instances[0].SOPInstanceUID
    ]


@pytest.mark.parametrize("ending", ["abort", "idle"])
def test_get_of_a_peer_that_stops_answering_ends_in_words(
    start_receiver: StartReceiver, ending: str
) -> None:
    """The SCP sends one instance, then nothing: our A-ABORT, or the idle timeout, ends the
    operation without a final response, and ``error`` says which."""
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = [
        make_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=n) for n in (1, 2)
    ]
    rx = start_receiver(AET=OUR_AET)
    idle = 0.5 if ending == "idle" else TIMEOUT
    waits = {series_uid: Misbehaviour("stall", after=1)}
    with RetrieveScp(instances, misbehaviour=waits) as scp:
        identifier = series_identifier(study_uid, series_uid)
        retrieval = get(rx, scp.host, scp.port, scp.aet, identifier, idle_timeout=idle)
        assert retrieval.next_progress(TIMEOUT) is not None, retrieval.error
        if ending == "abort":
            retrieval.abort()
        drain(retrieval, deadline=TIMEOUT)
    assert retrieval.result is None
    expected = {
        "abort": "aborted at our request (A-ABORT) before the final response",
        "idle": "the peer sent nothing for 0.5 s (idle timeout): association aborted",
    }
    assert retrieval.error == expected[ending]
    assert retrieval.instances_received == 1
    assert not scp.cancelled.is_set()


def test_get_refused_the_scp_role_of_storage_is_an_error_in_words(
    start_receiver: StartReceiver,
) -> None:
    rx = start_receiver(AET=OUR_AET)
    with RetrieveScp([make_dataset()], get="no-roles") as scp:
        with pytest.raises(OSError, match="accepted none of the 1 storage SOP classes"):
            get(rx, scp.host, scp.port, scp.aet, series_identifier(generate_uid(), generate_uid()))
        assert scp.gets == 0, "nothing asked that could not be answered"


def test_move_without_an_association_is_an_oserror() -> None:
    with pytest.raises(OSError):
        _core.move(
            "127.0.0.1", 1, OUR_AET, "PACS", STUDY_ROOT_MOVE, b"", EXPLICIT_LE, OUR_AET, 2.0, 2.0
        )
