"""Checks shared by the robustness tests."""

from pathlib import Path

from pydicom.dataset import Dataset

from oxidip import InstanceStored
from tests.helpers.dicom import encode_dataset, make_dataset, read_part10, temp_files
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE, Context, RawClient
from tests.helpers.receiver import RunningReceiver, of_type
from tests.helpers.senders import scu, status_of


def assert_receiver_works(rx: RunningReceiver, calling_aet: str = "AFTERWARDS") -> Path:
    """A normal pynetdicom association still stores an instance: status 0000, the file at
    the event's path with the bytes sent. Returns the path."""
    ds = make_dataset()
    since = rx.mark()
    ae = scu(calling_aet)
    ae.add_requested_context(SECONDARY_CAPTURE, [EXPLICIT_LE])
    assoc = ae.associate(rx.host, rx.port, ae_title="OXIDIP")
    assert assoc.is_established, "a normal association is no longer accepted"
    try:
        status = status_of(assoc.send_c_store(ds))
    finally:
        assoc.release()
    assert status == 0x0000, f"a normal C-STORE now gets {status}"
    stored = rx.wait_stored(1, since=since)
    (event,) = [e for e in stored if e.attributes.SOPInstanceUID == ds.SOPInstanceUID]
    path = Path(event.path)
    assert read_part10(path).dataset == encode_dataset(ds, EXPLICIT_LE)
    return path


def raw_store(
    rx: RunningReceiver,
    ds: Dataset | None = None,
    *,
    data: bytes | None = None,
    sop_class: str | None = None,
    sop_instance: str | None = None,
    calling_aet: str = "RAWSTORE",
    transfer_syntax: str = EXPLICIT_LE,
) -> tuple[int, str | None]:
    """One C-STORE over a raw association (so that the command and the dataset can
    disagree); returns (status, error comment)."""
    if data is None:
        assert ds is not None
        data = encode_dataset(ds, transfer_syntax)
    sop_class = sop_class or (str(ds.SOPClassUID) if ds is not None else SECONDARY_CAPTURE)
    sop_instance = sop_instance or str(ds.SOPInstanceUID)
    with RawClient(rx.host, rx.port) as client:
        ac = client.associate_ok(
            calling=calling_aet, contexts=[Context(1, sop_class, [transfer_syntax])]
        )
        assert ac.contexts[1].result == 0, ac.contexts
        rsp = client.c_store(1, sop_class, sop_instance, data)
        client.release()
    return rsp.status, rsp.error_comment


def assert_nothing_stored(rx: RunningReceiver, sop_instance: str) -> None:
    """No file for the instance anywhere in the tree, no InstanceStored, no temp file."""
    leftovers = [p for p in rx.root.rglob("*") if p.is_file() and sop_instance in p.name]
    assert not leftovers, f"files left for {sop_instance}: {leftovers}"
    assert not [
        e
        for e in of_type(rx.snapshot(), InstanceStored)
        if e.attributes.SOPInstanceUID == sop_instance
    ]
    assert temp_files(rx.root) == [], f"temp files left: {temp_files(rx.root)}"
