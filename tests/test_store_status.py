"""C-STORE statuses and what is (not) left on disk: A700 when storage fails (the server keeps
working), A900 when the data set's UIDs disagree with the command, C000 when it cannot be
parsed, C001 when a required attribute is missing, 0111 for duplicates under "reject", and
where hostile tag values land (always inside the root, sanitised).

Tests run as root in CI, where permissions do not stop writes: storage failures are made with
a regular file where a directory must be (ENOTDIR), which stops root too.
"""

import shutil
import struct
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from oxidip import InstanceFailed, InstanceStored
from tests.helpers.checks import assert_nothing_stored, assert_receiver_works, raw_store
from tests.helpers.dicom import (
    SIMPLE_TEMPLATE,
    TEMP_DIR_NAME,
    assert_inside,
    default_path,
    encode_dataset,
    explicit_le_element,
    hash7,
    make_dataset,
    read_part10,
    safe_component,
    sanitise,
    simple_path,
    stored_files,
    temp_files,
)
from tests.helpers.pdu import EXPLICIT_LE, SECONDARY_CAPTURE
from tests.helpers.receiver import RunningReceiver, of_type


def _failure(rx: RunningReceiver, since: int, uid: str) -> InstanceFailed:
    events = rx.wait_for(
        lambda evs: any(
            isinstance(e, InstanceFailed) and e.sop_instance_uid == uid for e in evs[since:]
        ),
        what=f"InstanceFailed for {uid}",
    )
    (event,) = [e for e in of_type(events[since:], InstanceFailed) if e.sop_instance_uid == uid]
    return event


# --- A700: storage failures ----------------------------------------------------------------


def test_a700_when_the_target_directory_cannot_be_created(receiver: RunningReceiver) -> None:
    """A regular file named like the calling AE's directory: the final path cannot be made
    (ENOTDIR, even for root). A700, no file, no temp file; other senders still work."""
    (receiver.root / "BLOCKED").write_bytes(b"not a directory")
    ds = make_dataset()
    since = receiver.mark()
    status, comment = raw_store(receiver, ds, calling_aet="BLOCKED")
    assert status == 0xA700, (hex(status), comment)
    failure = _failure(receiver, since, str(ds.SOPInstanceUID))
    assert failure.status == 0xA700 and failure.calling_aet == "BLOCKED"
    assert (receiver.root / "BLOCKED").read_bytes() == b"not a directory"
    assert_nothing_stored(receiver, str(ds.SOPInstanceUID))
    assert_receiver_works(receiver, calling_aet="FINE")


def test_a700_when_the_temp_directory_is_gone(receiver: RunningReceiver) -> None:
    """The temporary directory replaced by a regular file after start: the temp file cannot
    be created. A700; once the directory is back, instances are stored again."""
    tmp = receiver.root / TEMP_DIR_NAME
    assert tmp.is_dir(), f"expected the temp directory at {tmp}"
    shutil.rmtree(tmp)
    tmp.write_bytes(b"in the way")
    ds = make_dataset()
    since = receiver.mark()
    try:
        status, comment = raw_store(receiver, ds)
        assert status == 0xA700, (hex(status), comment)
        assert _failure(receiver, since, str(ds.SOPInstanceUID)).status == 0xA700
        assert stored_files(receiver.root) == []
    finally:
        tmp.unlink()
        tmp.mkdir()
    assert_receiver_works(receiver)


# --- A900: UIDs differ from the command ------------------------------------------------------


@pytest.mark.parametrize("which", ["instance", "class"])
def test_a900_when_uids_differ_from_the_command(receiver: RunningReceiver, which: str) -> None:
    ds = make_dataset()
    since = receiver.mark()
    command_instance = generate_uid() if which == "instance" else str(ds.SOPInstanceUID)
    command_class = "1.2.840.10008.5.1.4.1.1.2" if which == "class" else SECONDARY_CAPTURE
    status, comment = raw_store(
        receiver,
        ds,
        sop_class=command_class,
        sop_instance=command_instance,
    )
    assert status == 0xA900, (hex(status), comment)
    assert _failure(receiver, since, command_instance).status == 0xA900
    assert_nothing_stored(receiver, str(ds.SOPInstanceUID))
    assert_nothing_stored(receiver, command_instance)
    assert_receiver_works(receiver)


# --- C000: cannot be parsed -----------------------------------------------------------------


def test_c000_when_the_dataset_cannot_be_parsed(receiver: RunningReceiver) -> None:
    """An element whose length runs past the end of the data set, before the attributes the
    receiver needs."""
    uid = generate_uid()
    data = explicit_le_element(0x0008_0016, "UI", SECONDARY_CAPTURE.encode())
    data += struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", 0xFFF0) + uid.encode()
    since = receiver.mark()
    status, comment = raw_store(receiver, data=data, sop_instance=uid)
    assert status == 0xC000, (hex(status), comment)
    assert _failure(receiver, since, uid).status == 0xC000
    assert_nothing_stored(receiver, uid)
    assert_receiver_works(receiver)


# --- C001: required attributes --------------------------------------------------------------


def test_c001_names_the_missing_required_attributes(receiver: RunningReceiver) -> None:
    ds = make_dataset(StudyInstanceUID=None, SeriesInstanceUID=None)
    since = receiver.mark()
    status, comment = raw_store(receiver, ds)
    assert status == 0xC001, (hex(status), comment)
    assert comment == "missing StudyInstanceUID, SeriesInstanceUID", comment
    failure = _failure(receiver, since, str(ds.SOPInstanceUID))
    assert failure.status == 0xC001 and "SeriesInstanceUID" in failure.comment
    assert_nothing_stored(receiver, str(ds.SOPInstanceUID))
    assert_receiver_works(receiver)


def test_c001_for_an_empty_required_value(receiver: RunningReceiver) -> None:
    ds = make_dataset(SeriesInstanceUID="")
    status, comment = raw_store(receiver, ds)
    assert status == 0xC001 and comment == "missing SeriesInstanceUID", (hex(status), comment)
    assert_nothing_stored(receiver, str(ds.SOPInstanceUID))


@pytest.mark.parametrize("patient_id", ["", None], ids=["empty", "absent"])
def test_patient_id_is_not_required_by_default(start_receiver, patient_id: str | None) -> None:
    """PatientID is Type 2 (it may be empty): by default only the UIDs that identify an
    instance are required, and the default template renders the missing value as its
    placeholder."""
    rx = start_receiver()
    ds = make_dataset(patient_id=patient_id)
    status, comment = raw_store(rx, ds, calling_aet="NOPATIENT")
    assert status == 0x0000, (hex(status), comment)
    (event,) = rx.wait_stored(1)
    assert event.attributes.PatientID is None
    rel = Path(event.path).relative_to(rx.root).as_posix()
    assert rel.startswith("NOPATIENT/PatientID-Doe_Jane-19700101/"), rel
    assert read_part10(event.path).dataset == encode_dataset(ds)


def test_required_attributes_are_configurable(start_receiver) -> None:
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, REQUIRED_ATTRIBUTES="AccessionNumber")
    missing = make_dataset(AccessionNumber=None)
    status, comment = raw_store(rx, missing)
    assert status == 0xC001 and comment and "AccessionNumber" in comment, (hex(status), comment)
    no_patient = make_dataset(patient_id=None)
    status, comment = raw_store(rx, no_patient)
    assert status == 0x0000, (hex(status), comment)


def test_nothing_required(start_receiver) -> None:
    """With no required attributes, an instance without Study/Series UIDs is stored; the
    template renders the missing values as their keywords."""
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, REQUIRED_ATTRIBUTES="")
    ds = make_dataset(StudyInstanceUID=None, SeriesInstanceUID=None, patient_id=None)
    status, comment = raw_store(rx, ds, calling_aet="BARE")
    assert status == 0x0000, (hex(status), comment)
    (event,) = rx.wait_stored(1)
    rel = Path(event.path).relative_to(rx.root).as_posix()
    assert rel == f"BARE/StudyInstanceUID/SeriesInstanceUID/{ds.SOPInstanceUID}.dcm"


# --- duplicates -----------------------------------------------------------------------------


def _two_versions() -> tuple[object, object]:
    first = make_dataset(StudyDescription="first")
    second = make_dataset(
        study_uid=first.StudyInstanceUID,
        series_uid=first.SeriesInstanceUID,
        sop_instance_uid=first.SOPInstanceUID,
        StudyDescription="second",
    )
    return first, second


@pytest.mark.parametrize(
    ("policy", "second_status", "kept"),
    [("overwrite", 0x0000, "second"), ("keep-first", 0x0000, "first"), ("reject", 0x0111, "first")],
)
def test_duplicates_policy(start_receiver, policy: str, second_status: int, kept: str) -> None:
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, DUPLICATES=policy)
    first, second = _two_versions()
    assert raw_store(rx, first)[0] == 0x0000
    (event,) = rx.wait_stored(1)
    assert event.duplicate is False
    since = rx.mark()
    status, comment = raw_store(rx, second)
    assert status == second_status, (hex(status), comment)
    if second_status == 0x0000:
        (again,) = rx.wait_stored(1, since=since)
        assert again.duplicate is True
        assert again.path == event.path
    else:
        assert _failure(rx, since, str(first.SOPInstanceUID)).status == second_status
    expected = encode_dataset(first if kept == "first" else second)
    assert read_part10(event.path).dataset == expected
    assert len(stored_files(rx.root)) == 1
    assert temp_files(rx.root) == []


# --- paths ------------------------------------------------------------------------------------


def test_default_template_path(start_receiver) -> None:
    """The default (oxidicom) layout, every component checked, the series hash included;
    empty values render as their keyword."""
    rx = start_receiver()
    series = generate_uid()
    full = make_dataset(series_uid=series, instance_number=7, series_number=3)
    sparse = make_dataset(
        series_uid=series,
        study_uid=full.StudyInstanceUID,
        instance_number=None,
        series_number=None,
        StudyDescription=None,
        AccessionNumber="",
        SeriesDescription=None,
        PatientBirthDate=None,
    )
    for ds in (full, sparse):
        assert raw_store(rx, ds, calling_aet="LAYOUT")[0] == 0x0000
    events = {e.attributes.SOPInstanceUID: e for e in rx.wait_stored(2)}
    rel_full = Path(events[full.SOPInstanceUID].path).relative_to(rx.root).as_posix()
    assert rel_full == (
        "LAYOUT/PAT001-Doe_Jane-19700101/Test_study-ACC42-20240102/"
        f"00003-Test_series-{hash7(series)}/0007-{full.SOPInstanceUID}.dcm"
    )
    rel_sparse = Path(events[sparse.SOPInstanceUID].path).relative_to(rx.root).as_posix()
    assert rel_sparse == (
        "LAYOUT/PAT001-Doe_Jane-PatientBirthDate/StudyDescription-AccessionNumber-20240102/"
        f"SeriesNumber-SeriesDescription-{hash7(series)}/InstanceNumber-{sparse.SOPInstanceUID}.dcm"
    )
    assert default_path("LAYOUT", _attrs(full)) == rel_full


def _attrs(ds: object) -> dict[str, str | None]:
    return {
        "PatientID": str(ds.PatientID),
        "PatientName": str(ds.PatientName),
        "PatientBirthDate": str(ds.PatientBirthDate),
        "StudyDescription": str(ds.StudyDescription),
        "AccessionNumber": str(ds.AccessionNumber),
        "StudyDate": str(ds.StudyDate),
        "SeriesNumber": str(ds.SeriesNumber),
        "SeriesDescription": str(ds.SeriesDescription),
        "SeriesInstanceUID": str(ds.SeriesInstanceUID),
        "InstanceNumber": str(ds.InstanceNumber),
        "SOPInstanceUID": str(ds.SOPInstanceUID),
    }


def _check_components(rel: Path) -> None:
    for part in rel.parts:
        assert part not in (".", ".."), rel
        assert len(part.encode()) <= 255, f"component of {len(part.encode())} bytes"
        bad = [c for c in part if c in '/\\<>:"|?*' or ord(c) < 0x20 or ord(c) == 0x7F]
        assert not bad, f"unsanitised characters {bad} in {part!r}"


@pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length")
def test_hostile_values_stay_inside_the_root(start_receiver) -> None:
    rx = start_receiver()
    values = {
        "PatientID": "../../../etc",
        "PatientName": "..\\/x",
        "StudyDescription": "x\x00y\x01z\x7f",
        "AccessionNumber": ':*?<>|"',
    }
    ds = make_dataset(
        patient_id=values["PatientID"],
        patient_name=values["PatientName"],
        StudyDescription=values["StudyDescription"],
        AccessionNumber=values["AccessionNumber"],
        SeriesDescription="A" * 1000,
    )
    clean = {kw: sanitise(v) for kw, v in values.items()}
    status, comment = raw_store(rx, ds, calling_aet="HOSTILE")
    assert status == 0x0000, (hex(status), comment)
    (event,) = rx.wait_stored(1)
    rel = assert_inside(rx.root, event.path)
    _check_components(rel)
    assert rel.parts[0] == "HOSTILE"
    patient = f"{clean['PatientID']}-{clean['PatientName']}-19700101"
    assert rel.parts[1] == safe_component(patient)
    assert not rel.parts[1].startswith(".")
    assert rel.parts[2] == f"{clean['StudyDescription']}-{clean['AccessionNumber']}-20240102"
    assert rel.parts[3] == f"00001-{'A' * 64}-{hash7(str(ds.SeriesInstanceUID))}"
    assert rel.parts[4] == f"0001-{ds.SOPInstanceUID}.dcm"
    assert Path(event.path).is_file()
    assert stored_files(rx.root) == [Path(event.path)]


@pytest.mark.parametrize("value", ["..", ".", "...", " .. "])
def test_dot_components_are_replaced(start_receiver, value: str) -> None:
    rx = start_receiver(PATH_TEMPLATE="{PatientID}/{SOPInstanceUID}.dcm")
    ds = make_dataset(patient_id=value)
    status, comment = raw_store(rx, ds)
    assert status == 0x0000, (hex(status), comment)
    (event,) = rx.wait_stored(1)
    rel = assert_inside(rx.root, event.path)
    assert len(rel.parts) == 2, rel
    _check_components(rel)
    assert rel.parts[0] == safe_component(sanitise(value))
    assert rel.parts[1] == f"{ds.SOPInstanceUID}.dcm"


@pytest.mark.parametrize(
    ("charset", "name", "description", "in_path"),
    [
        ("ISO_IR 100", "Müller^Jürgen", "Étude", "M_ller_J_rgen-19700101/_tude"),
        (
            "ISO_IR 192",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            "検査",
            "Yamada_Tarou_-19700101/_",
        ),
        ("ISO_IR 144", "Иванов^Иван", "Исследование", "_-19700101/_"),
    ],
)
def test_non_ascii_values(
    start_receiver, charset: str, name: str, description: str, in_path: str
) -> None:
    """Decoded per Specific Character Set into the event's attributes; in the path, the
    documented oxidicom rule collapses non-ASCII runs to "_"."""
    rx = start_receiver()
    ds = make_dataset(patient_name=name, SpecificCharacterSet=charset, StudyDescription=description)
    status, comment = raw_store(rx, ds, calling_aet="UNICODE")
    assert status == 0x0000, (hex(status), comment)
    (event,) = rx.wait_stored(1)
    assert event.attributes.PatientName == name
    assert event.attributes.StudyDescription == description
    assert event.attributes.SpecificCharacterSet == charset
    rel = assert_inside(rx.root, event.path)
    _check_components(rel)
    assert "/".join(rel.parts[1:3]) == f"PAT001-{in_path}-ACC42-20240102"


def test_events_describe_the_stored_instance(receiver: RunningReceiver) -> None:
    ds = make_dataset(pixel_bytes=10000)
    data = encode_dataset(ds, EXPLICIT_LE)
    status, _ = raw_store(receiver, ds, calling_aet="EVENTS")
    assert status == 0
    (event,) = receiver.wait_stored(1)
    closed = receiver.wait_closed(1)[-1]
    assert isinstance(event, InstanceStored)
    assert event.transfer_syntax == EXPLICIT_LE
    assert event.calling_aet == "EVENTS" and event.called_aet == "OXIDIP"
    assert event.peer.startswith("127.0.0.1:")
    assert event.received_at <= event.stored_at
    assert event.association_id == closed.association_id
    assert closed.instances_stored == 1 and closed.outcome == "released"
    assert closed.bytes_received >= len(data)
    assert Path(event.path).relative_to(receiver.root).as_posix() == simple_path(
        "EVENTS",
        {
            "StudyInstanceUID": str(ds.StudyInstanceUID),
            "SeriesInstanceUID": str(ds.SeriesInstanceUID),
            "SOPInstanceUID": str(ds.SOPInstanceUID),
        },
    )
    assert event.size == Path(event.path).stat().st_size
