"""Orthanc (Debian's package) as the sending PACS: the fixture starts it, it answers the
expected-count C-FIND with the right NumberOfSeriesRelatedInstances, and it pushes series to
an in-process receiver."""

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from oxidip.completeness import ExpectedCount, ExpectedCountLookup
from oxidip.nodes import RemoteNode
from tests.conftest import StartReceiver
from tests.helpers.dicom import make_dataset
from tests.helpers.orthanc import OrthancServer

OUR_AET = "OXIDIP"


@dataclass(frozen=True)
class LoadedSeries:
    study_instance_uid: str
    series_instance_uid: str
    orthanc_id: str
    sop_instance_uids: tuple[str, ...]


def part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def load_series(orthanc: OrthancServer, sizes: list[list[int]]) -> list[LoadedSeries]:
    """Uploads one study per inner list, with one series of each size (fresh UIDs, small
    instances) and returns what was loaded."""
    loaded = []
    for study_index, study in enumerate(sizes):
        study_uid = generate_uid()
        for series_number, size in enumerate(study, start=1):
            series_uid = generate_uid()
            sops = []
            orthanc_series = set()
            for instance_number in range(1, size + 1):
                ds = make_dataset(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    series_number=series_number,
                    instance_number=instance_number,
                    patient_id=f"ORTHANC{study_index}",
                )
                orthanc.upload(part10(ds))
                sops.append(str(ds.SOPInstanceUID))
            for s in orthanc.series():
                if s["MainDicomTags"]["SeriesInstanceUID"] == series_uid:
                    orthanc_series.add(s["ID"])
                    assert len(s["Instances"]) == size
            (orthanc_id,) = orthanc_series
            loaded.append(LoadedSeries(study_uid, series_uid, orthanc_id, tuple(sops)))
    return loaded


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the module (it takes seconds to stop); tests use fresh UIDs. The
    receiver's AE title is a modality, so Orthanc answers its C-FINDs (the port does not
    matter: nothing is pushed to this one)."""
    with OrthancServer(
        tmp_path_factory.mktemp("orthanc"), modalities={"oxidip": (OUR_AET, "127.0.0.1", 1)}
    ) as server:
        yield server


def lookup_all(
    address: RemoteNode, calling_aet: str, series: list[LoadedSeries], **options: float
) -> dict[str, ExpectedCount]:
    lookup = ExpectedCountLookup(
        {address.aet: address},
        calling_aet,
        timeout=options.get("timeout", 10.0),
        retries=int(options.get("retries", 1)),
    )
    try:
        for s in series:
            lookup.request(address.aet, s.study_instance_uid, s.series_instance_uid)
        results: list[ExpectedCount] = []
        while len(results) < len(series):
            got = lookup.wait(60)
            assert got, f"no result within 60 s ({len(results)} of {len(series)})"
            results += got
    finally:
        lookup.close()
    return {r.series_instance_uid: r for r in results}


def test_fixture_starts_and_stops_a_fresh_orthanc(tmp_path: Path) -> None:
    with OrthancServer(tmp_path, modalities={"rx": ("RX", "127.0.0.1", 104)}) as orthanc:
        proc = orthanc.proc
        assert proc is not None and proc.poll() is None
        system = orthanc.get("/system")
        assert system["DicomAet"] == "ORTHANC"
        assert (system["DicomPort"], system["HttpPort"]) == (orthanc.dicom_port, orthanc.http_port)
        assert orthanc.version == system["Version"]
        assert orthanc.address == RemoteNode("ORTHANC", "127.0.0.1", orthanc.dicom_port)
        assert orthanc.series() == []
        assert orthanc.get("/modalities?expand")["rx"]["AET"] == "RX"
        assert (tmp_path / "storage").is_dir() and (tmp_path / "index").is_dir()
    assert proc.poll() is not None, "Orthanc still runs after the context"
    assert orthanc.proc is None


def test_orthanc_answers_expected_counts(orthanc: OrthancServer) -> None:
    loaded = load_series(orthanc, [[3, 7], [5]])
    results = lookup_all(orthanc.address, OUR_AET, loaded)
    for s in loaded:
        result = results[s.series_instance_uid]
        assert result.status == "known", result
        assert result.expected == len(s.sop_instance_uids), result
        assert "ORTHANC" in result.detail


def test_series_orthanc_does_not_have_is_unknown(orthanc: OrthancServer) -> None:
    (loaded,) = load_series(orthanc, [[2]])
    missing = LoadedSeries(loaded.study_instance_uid, generate_uid(), "", ())
    results = lookup_all(orthanc.address, OUR_AET, [missing])
    result = results[missing.series_instance_uid]
    assert (result.status, result.expected) == ("unknown", None)
    assert "0 matches" in result.detail


def test_orthanc_refuses_calling_aets_it_does_not_know(orthanc: OrthancServer) -> None:
    """Orthanc accepts the association of an AE title missing from DicomModalities, then
    aborts at the C-FIND: an error, not a count."""
    (loaded,) = load_series(orthanc, [[2]])
    results = lookup_all(orthanc.address, "STRANGER", [loaded], retries=0)
    result = results[loaded.series_instance_uid]
    assert (result.status, result.expected) == ("error", None)
    assert "aborted" in result.detail
    assert "DicomModalities" in orthanc.log_text(), "Orthanc says why"
    # known once it is a modality
    orthanc.add_modality("stranger", "STRANGER", "127.0.0.1", 1)
    results = lookup_all(orthanc.address, "STRANGER", [loaded])
    assert results[loaded.series_instance_uid].expected == 2


def test_orthanc_pushes_series_to_the_receiver(
    orthanc: OrthancServer, start_receiver: StartReceiver
) -> None:
    """The fixture for the end-to-end test: a receiver started after Orthanc is added as a
    modality, and every instance of every series pushed arrives, one association per push."""
    loaded = load_series(orthanc, [[3, 4], [6]])
    rx = start_receiver()
    orthanc.add_modality("receiver", OUR_AET, rx.host, rx.port)
    since = rx.mark()
    assert orthanc.echo("receiver")
    for s in loaded:
        answer = orthanc.store_series("receiver", s.orthanc_id)
        assert answer["InstancesCount"] == len(s.sop_instance_uids), answer
        assert answer["FailedInstancesCount"] == 0, answer
    total = sum(len(s.sop_instance_uids) for s in loaded)
    stored = rx.wait_stored(total, since=since)
    by_series: dict[str, set[str]] = {}
    for event in stored:
        assert event.calling_aet == "ORTHANC"
        assert event.attributes.SeriesInstanceUID is not None
        assert event.attributes.SOPInstanceUID is not None
        by_series.setdefault(event.attributes.SeriesInstanceUID, set()).add(
            event.attributes.SOPInstanceUID
        )
        assert Path(event.path).is_file()
    assert by_series == {s.series_instance_uid: set(s.sop_instance_uids) for s in loaded}
    # the C-ECHO and one association per store, each released
    closed = rx.wait_closed(len(loaded) + 1, since=since)
    assert all(c.outcome == "released" for c in closed), closed
    assert sorted(c.instances_stored for c in closed) == sorted(
        [0] + [len(s.sop_instance_uids) for s in loaded]
    )


def test_asynchronous_store_is_a_job(orthanc: OrthancServer, start_receiver: StartReceiver) -> None:
    (loaded,) = load_series(orthanc, [[3]])
    rx = start_receiver()
    orthanc.add_modality("receiver", OUR_AET, rx.host, rx.port)
    answer = orthanc.store_series("receiver", loaded.orthanc_id, synchronous=False)
    job = orthanc.wait_job(answer["ID"])
    assert job["State"] == "Success", job
    stored = rx.wait_stored(3)
    assert {e.attributes.SOPInstanceUID for e in stored} == set(loaded.sop_instance_uids)
