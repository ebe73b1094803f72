"""The stall watchdog of ``oxidip pull`` (``oxidip.pull.retrieve.watch``) on a real C-GET: a
pynetdicom SCP that sends one instance and then nothing until it is cancelled is cancelled
once no progress came for ``stall`` seconds (the attempt is transient, said in words), and a
pull stopping (SIGINT) cancels its retrieval at once without counting an attempt."""

import threading
import time

import pytest
from pydicom.uid import generate_uid

from oxidip.nodes import RemoteNode
from oxidip.pull.find import EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT, encode_identifier
from oxidip.pull.retrieve import Counts, Verdict, watch
from tests.conftest import StartReceiver
from tests.helpers.dicom import EXPLICIT_LE, SECONDARY_CAPTURE, make_dataset
from tests.helpers.retrieve_scp import Misbehaviour, RetrieveScp


@pytest.mark.parametrize("stopping", [False, True])
def test_a_stalled_get_is_cancelled(start_receiver: StartReceiver, stopping: bool) -> None:
    rx = start_receiver(AET="OXIDIP")
    study, series = generate_uid(), generate_uid()
    instances = [
        make_dataset(study_uid=study, series_uid=series, instance_number=n) for n in (1, 2, 3)
    ]
    identifier = encode_identifier(
        {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study, "SeriesInstanceUID": series}
    )
    seen: list[tuple[Counts, int]] = []
    stop = threading.Event()
    waits = {series: Misbehaviour("stall", after=1)}
    with RetrieveScp(instances, misbehaviour=waits) as scp:
        retrieval = rx.rx.core.get(
            scp.host,
            scp.port,
            scp.aet,
            STUDY_ROOT.get,
            identifier,
            EXPLICIT_VR_LITTLE_ENDIAN,
            [SECONDARY_CAPTURE],
            [EXPLICIT_LE],
            5.0,
            30.0,
        )
        if stopping:
            stop.set()
        started = time.monotonic()
        attempt = watch(
            retrieval,
            method="get",
            pacs=RemoteNode(scp.aet, scp.host, scp.port),
            destination="OXIDIP",
            stall=1.0,
            cancel_grace=10.0,
            registered=lambda: 0,
            on_progress=lambda counts, registered: seen.append((counts, registered)),
            stop=stop,
        )
        elapsed = time.monotonic() - started
        assert scp.cancelled.is_set()
    assert elapsed < 8, "cancelled after the stall, not at the SCP's patience or idle timeout"
    if stopping:
        assert attempt.verdict is Verdict.STOPPED
        return
    assert attempt.verdict is Verdict.TRANSIENT
    assert attempt.words.startswith("stalled: no progress for 1 s"), attempt.words
    assert attempt.counts.completed == 1, "the final response's counts"
    assert any(counts.completed == 1 for counts, _ in seen), "progress was reported"
