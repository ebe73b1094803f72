"""pydicom's corpus (every structurally valid Part 10 storage instance of ``test_files`` and
``charset_files``; see ``tests/helpers/corpus.py`` for the rule and the excluded files) sent
by dcmtk storescu and by pynetdicom, each in the file's own transfer syntax.

For every instance: the stored file is Part 10 with the right file meta, its dataset bytes are
exactly the bytes sent, pydicom reads it, the InstanceStored event carries the attributes
pydicom sees, and the path follows the template (the simple one exactly, the default one
including its SeriesInstanceUID hash).

What was sent: pynetdicom sends the file's dataset bytes unchanged; storescu re-encodes
datasets (explicit lengths, recomputed group lengths), so the same storescu run is first sent
to a pynetdicom capture SCP and those bytes are the reference.
"""

from pathlib import Path

import pydicom
import pytest

from oxidip import InstanceFailed, InstanceStored, _core
from tests.helpers import corpus
from tests.helpers.corpus import EXCLUDED, STORESCU_EXCLUDED, CorpusFile
from tests.helpers.dicom import (
    SIMPLE_TEMPLATE,
    assert_inside,
    attributes_as_dict,
    check_file_meta,
    compare_attributes,
    default_path,
    encode_file_meta,
    exact_charset,
    expected_attributes,
    read_part10,
    read_raw_dataset,
    simple_path,
    source_dataset_bytes,
    stored_files,
    temp_files,
)
from tests.helpers.receiver import RunningReceiver, of_type
from tests.helpers.senders import (
    CaptureScp,
    chunked_file_sending,
    scu,
    status_of,
    storescu,
    storescu_config,
)
from tests.test_read_for_sending import read_for_sending

SELECTED = corpus.selected()
#: Sent to receivers with the default configuration: every file that has the Study and
#: Series Instance UIDs the receiver requires by default (see ``test_unidentified_files``).
CORPUS = [f for f in SELECTED if f.identified]
UNIDENTIFIED = [f for f in SELECTED if not f.identified]
TEMPLATES = {"simple": SIMPLE_TEMPLATE, "default": None}


def test_corpus_selection_is_explicit() -> None:
    """The selection rule and the documented exclusions agree file for file."""
    rule = {}
    for path in corpus.all_paths():
        why = corpus.why_excluded(path)
        if why is not None:
            rule[corpus.rel(path)] = why
    missing_from_list = {k: v for k, v in rule.items() if k not in EXCLUDED}
    listed_but_selected = sorted(set(EXCLUDED) - set(rule))
    assert not missing_from_list, f"excluded by the rule but not listed: {missing_from_list}"
    assert not listed_but_selected, (
        f"listed as excluded but the rule selects: {listed_but_selected}"
    )
    selected = {f.rel for f in SELECTED}
    assert set(STORESCU_EXCLUDED) <= selected
    # All the transfer syntax families the issue names are covered.
    syntaxes = {f.transfer_syntax for f in SELECTED}
    for ts in (
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.1.99",  # deflated
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE
    ):
        assert ts in syntaxes, ts


def test_files_without_patient_id_are_sent_with_the_defaults() -> None:
    """PatientID is Type 2: the corpus files where it is empty or absent (14 in pydicom 3.0)
    are among those the round tests send to receivers with the default configuration, so
    they must be stored like any other (they were refused with C001 when the default
    required PatientID)."""
    without = [f.rel for f in CORPUS if f.patient_id is None]
    assert len(without) >= 10, without


def _start(start_receiver, template: str) -> RunningReceiver:
    """A receiver with the default configuration (required attributes included)."""
    overrides: dict[str, object] = {}
    if TEMPLATES[template] is not None:
        overrides["PATH_TEMPLATE"] = TEMPLATES[template]
    return start_receiver(**overrides)


def _calling_aet(prefix: str, index: int) -> str:
    return f"{prefix}{index}"


def _verify_round(
    rx: RunningReceiver,
    template: str,
    calling_aet: str,
    sent: dict[str, tuple[CorpusFile, str, bytes]],
    since: int,
) -> None:
    """``sent``: SOP Instance UID -> (file, transfer syntax, dataset bytes as sent)."""
    closed = rx.wait_closed(1, since=since, timeout=120)
    events = rx.snapshot()[since:]
    failed = of_type(events, InstanceFailed)
    assert not failed, f"{calling_aet}: instances refused: {failed}"
    stored = {e.attributes.SOPInstanceUID: e for e in of_type(events, InstanceStored)}
    assert closed[0].outcome == "released", closed[0]
    assert closed[0].instances_stored == len(sent), closed[0]
    problems: list[str] = []
    for uid, (cf, ts, data) in sent.items():
        event = stored.get(uid)
        if event is None:
            problems.append(f"{cf.rel}: no InstanceStored event")
            continue
        try:
            _verify_instance(rx, template, calling_aet, cf, ts, data, event)
        except AssertionError as error:
            problems.append(f"{cf.rel} ({ts}): {error}")
    assert not problems, f"{len(problems)} of {len(sent)} instances wrong:\n" + "\n".join(problems)


def _verify_instance(
    rx: RunningReceiver,
    template: str,
    calling_aet: str,
    cf: CorpusFile,
    ts: str,
    data: bytes,
    event: InstanceStored,
) -> None:
    path = Path(event.path)
    assert path.is_absolute(), f"event path not absolute: {event.path}"
    rel = assert_inside(rx.root, path)
    assert path.is_file(), f"no file at {path}"
    assert path.stat().st_size == event.size, f"size {event.size} != file {path.stat().st_size}"
    assert event.transfer_syntax == ts
    assert event.calling_aet == calling_aet
    assert event.called_aet == "OXIDIP"

    stored = read_part10(path)
    check_file_meta(
        stored,
        sop_class=cf.sop_class,
        sop_instance=cf.sop_instance,
        transfer_syntax=ts,
        calling_aet=calling_aet,
        implementation_class_uid=_core.IMPLEMENTATION_CLASS_UID,
        implementation_version=_core.IMPLEMENTATION_VERSION_NAME,
    )
    if stored.dataset != data:
        first = next(
            (i for i, (a, b) in enumerate(zip(stored.dataset, data, strict=False)) if a != b),
            min(len(stored.dataset), len(data)),
        )
        raise AssertionError(
            f"dataset bytes differ from those sent: {len(stored.dataset)} stored, "
            f"{len(data)} sent, first difference at {first}"
        )
    # Read back for sending it on: the UIDs it was stored under, the data set's byte range.
    sending = read_for_sending(path)
    assert (sending.sop_class_uid, sending.sop_instance_uid) == (cf.sop_class, cf.sop_instance)
    assert sending.transfer_syntax_uid == ts
    assert (sending.offset, sending.len) == (event.size - len(data), len(data))
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == cf.sop_instance
    assert ds.file_meta.TransferSyntaxUID == ts

    sent_ds = read_raw_dataset(data, ts)
    expected = expected_attributes(sent_ds)
    exact = exact_charset(sent_ds)
    diffs = compare_attributes(attributes_as_dict(event.attributes), expected, exact=exact)
    assert not diffs, "attributes: " + "; ".join(diffs)

    render = simple_path if template == "simple" else default_path
    if exact or all(v is None or v.isascii() for v in expected.values()):
        want = render(calling_aet, expected)
        assert rel.as_posix() == want, f"path {rel.as_posix()!r} != {want!r}"
    else:  # text the issue does not require decoding exactly: the shape only
        assert rel.parts[0] == calling_aet and rel.name.endswith(f"{cf.sop_instance}.dcm"), rel


def _check_storage_clean(rx: RunningReceiver, expected_files: int) -> None:
    assert temp_files(rx.root) == [], "temporary files left behind"
    assert len(stored_files(rx.root)) == expected_files


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_corpus_pynetdicom(start_receiver, tmp_path: Path, template: str) -> None:
    """Each round (unique SOP Instance UIDs) is one pynetdicom association proposing each
    (SOP class, transfer syntax) of its files; the dataset bytes are sent as in the file."""
    rx = _start(start_receiver, template)
    total = _send_pynetdicom_rounds(rx, template, CORPUS, tmp_path, "PYNET")
    _check_storage_clean(rx, total)


def test_unidentified_files(start_receiver, tmp_path: Path) -> None:
    """The corpus files without Study and Series Instance UIDs (Type 1 in their IODs): by
    default refused with C001 naming both; stored byte for byte once only the SOP Instance
    UID is required."""
    assert UNIDENTIFIED, "pydicom's corpus has files without Study/Series Instance UIDs"
    rx = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE)
    ae = scu("UNIDENTIFIED")
    for sop_class, ts in dict.fromkeys((f.sop_class, f.transfer_syntax) for f in UNIDENTIFIED):
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate(rx.host, rx.port, ae_title="OXIDIP")
    assert assoc.is_established
    try:
        for cf in UNIDENTIFIED:
            result = assoc.send_c_store(cf.path)
            assert status_of(result) == 0xC001, cf.rel
            assert result.ErrorComment == "missing StudyInstanceUID, SeriesInstanceUID", cf.rel
    finally:
        assoc.release()
    assert stored_files(rx.root) == []
    relaxed = start_receiver(PATH_TEMPLATE=SIMPLE_TEMPLATE, REQUIRED_ATTRIBUTES="SOPInstanceUID")
    total = _send_pynetdicom_rounds(relaxed, "simple", UNIDENTIFIED, tmp_path, "UNID")
    _check_storage_clean(relaxed, total)


def _send_pynetdicom_rounds(
    rx: RunningReceiver, template: str, files_all: list[CorpusFile], tmp_path: Path, prefix: str
) -> int:
    """Sends ``files_all`` round by round, each checked; returns how many were stored."""
    fixed = tmp_path / f"fixed-meta-{prefix}"
    fixed.mkdir()
    total = 0
    for index, files in enumerate(corpus.rounds(files_all)):
        aet = _calling_aet(prefix, index)
        ae = scu(aet)
        for sop_class, ts in dict.fromkeys((f.sop_class, f.transfer_syntax) for f in files):
            ae.add_requested_context(sop_class, [ts])
        sent: dict[str, tuple[CorpusFile, str, bytes]] = {}
        since = rx.mark()
        assoc = ae.associate(rx.host, rx.port, ae_title="OXIDIP")
        assert assoc.is_established, f"round {index}: association not established"
        try:
            with chunked_file_sending():
                for cf in files:
                    path = _with_matching_meta(cf, fixed)
                    status = status_of(assoc.send_c_store(path))
                    assert status == 0x0000, f"{cf.rel}: status {status}"
                    sent[cf.sop_instance] = (cf, cf.transfer_syntax, source_dataset_bytes(cf.path))
        finally:
            assoc.release()
        _verify_round(rx, template, aet, sent, since)
        total += len(files)
    return total


def _with_matching_meta(cf: CorpusFile, directory: Path) -> Path:
    """pynetdicom takes the command's Affected SOP Instance UID from (0002,0003); a few corpus
    files disagree with their own dataset there (rtdose*, rtplan*, chrJapMulti*, badVR): those
    are sent from a copy whose meta matches the dataset, the dataset bytes unchanged."""
    if cf.meta_sop_instance == cf.sop_instance:
        return cf.path
    copy = directory / cf.rel.replace("/", "__")
    meta = encode_file_meta(
        sop_class=cf.sop_class, sop_instance=cf.sop_instance, transfer_syntax=cf.transfer_syntax
    )
    copy.write_bytes(meta + source_dataset_bytes(cf.path))
    return copy


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_corpus_storescu(start_receiver, tmp_path: Path, template: str) -> None:
    """Each round is one storescu run with an association profile proposing each file's own
    transfer syntax only; the same run against a capture SCP gives the bytes storescu sends."""
    rx = _start(start_receiver, template)
    files_all = [f for f in CORPUS if f.rel not in STORESCU_EXCLUDED]
    total = 0
    for index, files in enumerate(corpus.rounds(files_all)):
        aet = _calling_aet("DCMTK", index)
        cfg = tmp_path / f"round{index}.cfg"
        profile = storescu_config(((f.sop_class, f.transfer_syntax) for f in files), cfg)
        paths = [f.path for f in files]

        with CaptureScp([f.sop_class for f in files]) as capture:
            result = storescu(
                "127.0.0.1",
                capture.port,
                paths,
                calling_aet=aet,
                called_aet="CAPTURE",
                config=(cfg, profile),
            )
        assert result.returncode == 0, result.stderr
        reference = {c.sop_instance: c for c in capture.received}
        assert len(reference) == len(files), (
            f"capture SCP got {len(capture.received)} of {len(files)}: {result.stderr[-2000:]}"
        )

        since = rx.mark()
        result = storescu(rx.host, rx.port, paths, calling_aet=aet, config=(cfg, profile))
        assert result.returncode == 0, result.stderr[-4000:]
        sent = {}
        for cf in files:
            ref = reference[cf.sop_instance]
            assert ref.transfer_syntax == cf.transfer_syntax, (cf.rel, ref.transfer_syntax)
            sent[cf.sop_instance] = (cf, ref.transfer_syntax, ref.data)
        _verify_round(rx, template, aet, sent, since)
        total += len(files)
    _check_storage_clean(rx, total)


def test_default_template_hash_is_per_series(start_receiver) -> None:
    """Under the default template, instances of one series share the hash component (7 hex
    digits) and different series get different ones (the dicomdirtests tree: several
    patients, studies and series)."""
    files = [f for f in CORPUS if f.rel.startswith("test_files/dicomdirtests/")]
    rx = start_receiver()
    ae = scu("HASHTEST")
    for sop_class, ts in dict.fromkeys((f.sop_class, f.transfer_syntax) for f in files):
        ae.add_requested_context(sop_class, [ts])
    since = rx.mark()
    assoc = ae.associate(rx.host, rx.port, ae_title="OXIDIP")
    assert assoc.is_established
    try:
        with chunked_file_sending():
            for f in files:
                assert status_of(assoc.send_c_store(f.path)) == 0, f.rel
    finally:
        assoc.release()
    stored = rx.wait_stored(len(files), since=since)
    by_series: dict[str | None, set[str]] = {}
    for e in stored:
        by_series.setdefault(e.attributes.SeriesInstanceUID, set()).add(Path(e.path).parent.name)
    assert len(by_series) >= 5
    digests = {}
    for uid, names in by_series.items():
        assert len(names) == 1, f"series {uid} spread over {names}"
        digest = names.pop().rsplit("-", 1)[1]
        assert len(digest) == 7 and all(c in "0123456789abcdef" for c in digest), digest
        digests[uid] = digest
    assert len(set(digests.values())) == len(digests), "two series share a hash"
