"""Our requestor against a real PACS (Orthanc, built on dcmtk): C-FIND with its matches, and
C-GET whose instances come back as C-STOREs on the association we opened (SCP role
negotiated, PS3.7 D.3.3.4) and go through the receiver's store path: files in place,
journaled, reported as events with Orthanc as the sender."""

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
    read_raw_dataset,
    source_dataset_bytes,
)
from tests.helpers.orthanc import OrthancServer
from tests.helpers.receiver import RunningReceiver
from tests.helpers.retrieval import finished, load_series, series_identifier

OUR_AET = "OXIDIP"
IMPLICIT_LE = "1.2.840.10008.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
TIMEOUT = 10.0


def find(orthanc: OrthancServer, query: Dataset, calling_aet: str = OUR_AET) -> _core.FindResult:
    """C-FIND on Orthanc's Study Root model, the query in explicit VR little endian."""
    return _core.find(
        orthanc.host,
        orthanc.dicom_port,
        calling_aet,
        orthanc.aet,
        STUDY_ROOT_FIND,
        encode_dataset(query, EXPLICIT_LE),
        EXPLICIT_LE,
        TIMEOUT,
    )


def retrieve(
    rx: RunningReceiver,
    orthanc: OrthancServer,
    identifier: Dataset,
    sop_classes: list[str],
    transfer_syntaxes: list[str],
) -> _core.RetrieveResult:
    """C-GET from Orthanc's Study Root model into ``rx``, as its AE title, to its end."""
    retrieval = rx.rx._core.get(
        orthanc.host,
        orthanc.dicom_port,
        orthanc.aet,
        STUDY_ROOT_GET,
        encode_dataset(identifier, EXPLICIT_LE),
        EXPLICIT_LE,
        sop_classes,
        transfer_syntaxes,
        TIMEOUT,
        TIMEOUT,
    )
    return finished(retrieval)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the module; our AE title is a modality, so it answers our C-FINDs
    and C-GETs (the port is set once a receiver listens)."""
    with OrthancServer(
        tmp_path_factory.mktemp("orthanc"), modalities={"oxidip": (OUR_AET, "127.0.0.1", 1)}
    ) as server:
        yield server


def test_find_against_orthanc_yields_each_match(orthanc: OrthancServer) -> None:
    study_uid, series_uid, instances = load_series(orthanc, 3)
    query = series_identifier(study_uid, series_uid)
    query.NumberOfSeriesRelatedInstances = ""
    query.Modality = ""
    found = find(orthanc, query)
    assert (found.status, found.comment) == (0, "")
    assert len(found.matches) == 1
    match = read_raw_dataset(found.matches[0], EXPLICIT_LE)
    assert match.SeriesInstanceUID == series_uid
    assert int(match.NumberOfSeriesRelatedInstances) == len(instances)
    assert match.Modality == "OT"

    # A study level query over two series of one study: a match per series.
    _, other_series, _ = load_series(orthanc, 1)
    everything = Dataset()
    everything.QueryRetrieveLevel = "SERIES"
    everything.StudyInstanceUID = study_uid
    everything.SeriesInstanceUID = ""
    found = find(orthanc, everything)
    assert found.status == 0
    series = {read_raw_dataset(m, EXPLICIT_LE).SeriesInstanceUID for m in found.matches}
    assert series == {series_uid}, "the other series belongs to another study"
    assert other_series not in series


def test_find_refused_by_orthanc_is_an_error(orthanc: OrthancServer) -> None:
    """Orthanc aborts the C-FIND of an AE title it does not know: an OSError saying so."""
    query = series_identifier(generate_uid(), generate_uid())
    with pytest.raises(OSError, match="aborted"):
        find(orthanc, query, calling_aet="STRANGER")


def test_get_from_orthanc_stores_through_the_receivers_store_path(
    orthanc: OrthancServer, start_receiver: StartReceiver
) -> None:
    study_uid, series_uid, instances = load_series(orthanc, 4)
    rx = start_receiver(AET=OUR_AET)
    orthanc.add_modality("oxidip", OUR_AET, rx.host, rx.port)
    since = rx.mark()
    identifier = series_identifier(study_uid, series_uid)
    result = retrieve(rx, orthanc, identifier, [SECONDARY_CAPTURE], [EXPLICIT_LE, IMPLICIT_LE])
    assert (result.status, result.comment) == (0, ""), result.comment
    assert (result.completed, result.failed, result.warning) == (len(instances), 0, 0)
    stored = rx.wait_stored(len(instances), since=since)
    by_uid = {ds.SOPInstanceUID: ds for ds in instances}
    assert {e.attributes.SOPInstanceUID for e in stored} == set(by_uid)
    for event in stored:
        # Orthanc sent them: the sender of the store path (path template, file meta).
        assert (event.calling_aet, event.called_aet) == ("ORTHANC", OUR_AET)
        path = Path(event.path)
        assert path.is_file() and path.is_relative_to(rx.root)
        sent = by_uid[event.attributes.SOPInstanceUID]
        kept = read_raw_dataset(source_dataset_bytes(path), event.transfer_syntax)
        assert kept.SOPInstanceUID == sent.SOPInstanceUID
        assert kept.PixelData == sent.PixelData
        assert event.journal_seq >= 0
    # The C-GET's association is not one the receiver accepted: no AssociationClosed.
    assert rx.closed(since) == []


def test_get_of_nothing_ends_with_no_instances(
    orthanc: OrthancServer, start_receiver: StartReceiver
) -> None:
    rx = start_receiver(AET=OUR_AET)
    orthanc.add_modality("oxidip", OUR_AET, rx.host, rx.port)
    nothing = series_identifier(generate_uid(), generate_uid())
    result = retrieve(rx, orthanc, nothing, [SECONDARY_CAPTURE], [EXPLICIT_LE])
    # Orthanc 1.10 answers a retrieve that matches nothing with C000 (unable to process).
    assert (result.status, result.completed) == (0xC000, 0)


def test_get_of_a_sop_class_not_proposed_fails_without_breaking_the_association(
    orthanc: OrthancServer, start_receiver: StartReceiver
) -> None:
    """No storage context for the series' SOP class: Orthanc cannot send its instances and
    fails the C-GET (with the Failed SOP Instance UID List in the command set of its final
    response, which is a dcmtk quirk the channel tolerates): a result, not an abort."""
    study_uid, series_uid, _ = load_series(orthanc, 2)
    rx = start_receiver(AET=OUR_AET)
    orthanc.add_modality("oxidip", OUR_AET, rx.host, rx.port)
    since = rx.mark()
    identifier = series_identifier(study_uid, series_uid)
    result = retrieve(rx, orthanc, identifier, [CT_IMAGE], [EXPLICIT_LE])
    assert (result.status, result.completed) == (0xC000, 0)
    assert result.failed
    assert rx.stored(since) == [] and rx.failed(since) == []
