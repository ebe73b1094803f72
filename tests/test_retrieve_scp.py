"""The misbehaving Q/R SCP of ``tests.helpers.retrieve_scp`` does what it says, checked with
requestors that are not ``oxidip pull``: oxidip's C-FIND and C-GET (``_core.find``,
``Receiver.get``), dcmtk ``movescu`` to ``storescp``, and pynetdicom's C-MOVE."""

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from oxidip import _core
from tests.conftest import StartReceiver
from tests.helpers.dicom import EXPLICIT_LE, SECONDARY_CAPTURE, encode_dataset, read_raw_dataset
from tests.helpers.e2e import Series
from tests.helpers.forwarding import Storescp
from tests.helpers.pull import all_series, make_archive
from tests.helpers.retrieval import drain, series_identifier
from tests.helpers.retrieve_scp import Misbehaviour, RetrieveScp
from tests.helpers.senders import scu
from tests.helpers.tools import run_dcmtk

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
TIMEOUT = 10.0


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _find(scp: RetrieveScp, query: Dataset) -> list[Dataset]:
    found = _core.find(
        scp.host,
        scp.port,
        "OXIDIP",
        scp.aet,
        STUDY_ROOT_FIND,
        encode_dataset(query, EXPLICIT_LE),
        EXPLICIT_LE,
        TIMEOUT,
    )
    assert found.status == 0, found.comment
    return [read_raw_dataset(m, EXPLICIT_LE) for m in found.matches]


@pytest.mark.parametrize("counts", [True, False])
def test_find_walks_studies_and_series_with_counts_or_without(counts: bool) -> None:
    archive = make_archive(2, 2, (3, 1))
    with RetrieveScp(
        [ds for s in all_series(archive) for ds in s.datasets], series_counts=counts
    ) as scp:
        studies = _find(scp, _identifier("STUDY", PatientID="PULL-1", StudyInstanceUID=""))
        assert {s.StudyInstanceUID for s in studies} == {a.study_instance_uid for a in archive[:2]}
        wildcard = _find(scp, _identifier("STUDY", PatientID="PULL-*", StudyInstanceUID=""))
        assert len(wildcard) == 4
        study = archive[0]
        query = _identifier(
            "SERIES", StudyInstanceUID=study.study_instance_uid, SeriesInstanceUID=""
        )
        query.NumberOfSeriesRelatedInstances = ""
        series = _find(scp, query)
    by_uid = {str(ds.SeriesInstanceUID): ds for ds in series}
    assert set(by_uid) == {s.series_instance_uid for s in study.series}
    for s in study.series:
        match = by_uid[s.series_instance_uid]
        if counts:
            assert int(match.NumberOfSeriesRelatedInstances) == len(s)
        else:
            assert "NumberOfSeriesRelatedInstances" not in match


def test_move_sends_the_series_to_the_destination_and_counts_it(tmp_path: Path) -> None:
    archive = make_archive(1, 1, (3, 2))
    first, second = all_series(archive)
    with (
        Storescp(tmp_path / "out") as storescp,
        RetrieveScp(
            [ds for s in all_series(archive) for ds in s.datasets],
            destinations={"STORESCP": ("127.0.0.1", storescp.port)},
        ) as scp,
    ):
        query = tmp_path / "q.dcm"
        pydicom.dcmwrite(
            query,
            _identifier(
                "SERIES",
                StudyInstanceUID=first.study_instance_uid,
                SeriesInstanceUID=first.series_instance_uid,
            ),
            implicit_vr=True,
            little_endian=True,
        )
        done = run_dcmtk(
            [
                "movescu",
                "-S",
                "-aet",
                "MOVESCU",
                "-aec",
                scp.aet,
                "-aem",
                "STORESCP",
                "-td",
                "30",
                "127.0.0.1",
                str(scp.port),
                str(query),
            ],
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert set(storescp.files()) == set(first.sop_instance_uids)
    assert dict(scp.retrieves) == {first.series_instance_uid: 1}
    assert scp.moves == 1 and second.series_instance_uid not in scp.retrieves


def test_move_to_an_unknown_destination_is_a801() -> None:
    archive = make_archive(1, 1, (1,))
    [series] = all_series(archive)
    with RetrieveScp(series.datasets) as scp:
        ae = scu("MOVER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.2")
        assoc = ae.associate(scp.host, scp.port, ae_title=scp.aet)
        assert assoc.is_established
        try:
            identifier = _identifier(
                "SERIES",
                StudyInstanceUID=series.study_instance_uid,
                SeriesInstanceUID=series.series_instance_uid,
            )
            statuses = [
                int(status.Status)
                for status, _ in assoc.send_c_move(
                    identifier, "NOWHERE", "1.2.840.10008.5.1.4.1.2.2.2"
                )
            ]
        finally:
            assoc.release()
    assert statuses == [0xA801]


def _get(
    rx_start: StartReceiver,
    scp: RetrieveScp,
    series: Series,
    idle_timeout: float = TIMEOUT,
) -> _core.Retrieval:
    """A C-GET of ``series`` into a new receiver, watched to its end."""
    rx = rx_start(AET="OXIDIP")
    identifier = series_identifier(series.study_instance_uid, series.series_instance_uid)
    retrieval = rx.rx._core.get(
        scp.host,
        scp.port,
        scp.aet,
        STUDY_ROOT_GET,
        encode_dataset(identifier, EXPLICIT_LE),
        EXPLICIT_LE,
        [SECONDARY_CAPTURE],
        [EXPLICIT_LE],
        TIMEOUT,
        idle_timeout,
    )
    drain(retrieval)
    return retrieval


def test_get_with_failing_sub_operations_ends_b000_with_the_list(
    start_receiver: StartReceiver,
) -> None:
    archive = make_archive(1, 1, (4,))
    [series] = all_series(archive)
    lost = series.sop_instance_uids[:2]
    rule = Misbehaviour("fail", failing=frozenset(lost))
    with RetrieveScp(series.datasets, misbehaviour={series.series_instance_uid: rule}) as scp:
        result = _get(start_receiver, scp, series).result
        assert result is not None
        assert (result.status, result.completed, result.failed) == (0xB000, 2, 2)
        failed = read_raw_dataset(result.identifier or b"", EXPLICIT_LE).FailedSOPInstanceUIDList
        assert sorted(failed) == sorted(lost)
        assert scp.retrieves[series.series_instance_uid] == 1
        # Only the first retrieve misbehaves.
        again = _get(start_receiver, scp, series).result
        assert again is not None
        assert (again.status, again.completed, again.failed) == (0, 4, 0)


def test_a_stalled_get_goes_silent_until_the_requestor_gives_up(
    start_receiver: StartReceiver,
) -> None:
    archive = make_archive(1, 1, (3,))
    [series] = all_series(archive)
    rule = Misbehaviour("stall", after=1, honour_cancel=False)
    with RetrieveScp(series.datasets, misbehaviour={series.series_instance_uid: rule}) as scp:
        retrieval = _get(start_receiver, scp, series, idle_timeout=1.0)
        assert retrieval.result is None and retrieval.error, "aborted by the idle timeout"
        assert scp.stalled.is_set() and scp.sent_in_series(series.series_instance_uid) == 1
    assert retrieval.instances_received == 1


def test_a_get_model_refused_is_not_even_asked(start_receiver: StartReceiver) -> None:
    archive = make_archive(1, 1, (2,))
    [series] = all_series(archive)
    with RetrieveScp(series.datasets, get="refuse-model") as scp, pytest.raises(OSError):
        _get(start_receiver, scp, series)
    assert scp.gets == 0 and not scp.sent
