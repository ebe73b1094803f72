"""``oxidip pull``'s Python-only parts: queries (pacsnpull JSON and -k flags), bad
arguments and configuration (exit 2 naming the flag or variable), the failure words of
final statuses, and the progress display when not on a terminal."""

import io
import json
import logging
from pathlib import Path

import pytest

from oxidip import cli
from oxidip.nodes import NodeDirectory, RemoteNode
from oxidip.pull.command import UsageError, resolve_pacs
from oxidip.pull.find import decode_identifier, encode_identifier, text_of
from oxidip.pull.progress import LogDisplay, TerminalDisplay, bar, series_line
from oxidip.pull.query import (
    Level,
    Query,
    QueryError,
    canonical,
    load_queries,
    queries_of_canonical,
    query_from_keys,
)
from oxidip.pull.retrieve import Counts, Verdict, start_failed, status_words
from oxidip.registry import PullSeriesRow, PullSeriesState


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "queries.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_pacsnpull_queries_are_read_with_their_levels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"PatientID": "123", "QueryRetrieveLevel": "PATIENT"},
            {
                "AccessionNumber": "A*",
                "StudyDate": "20240101-20240131",
                "QueryRetrieveLevel": "STUDY",
            },
            {"PatientID": "9", "Modality": "CT", "QueryRetrieveLevel": "series"},
            {"StudyDate": "20240101"},  # no level: implied
            {"PatientID": "9", "SeriesDescription": "*AX*"},
        ],
    )
    queries = load_queries(path)
    assert [q.level for q in queries] == [
        Level.PATIENT,
        Level.STUDY,
        Level.SERIES,
        Level.STUDY,
        Level.SERIES,
    ]
    assert queries[1].keys == {"AccessionNumber": "A*", "StudyDate": "20240101-20240131"}
    assert queries_of_canonical(canonical(queries)) == queries
    # The same queries written otherwise are the same pull.
    reordered = [Query(q.level, dict(reversed(q.keys.items()))) for q in queries]
    assert canonical(reordered) == canonical(queries)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected a JSON list of query objects"),
        ([42], "query 1: expected an object"),
        ([{"PatientId": "1"}], "'PatientId' is not a DICOM keyword"),
        ([{"PatientID": "1", "QueryRetrieveLevel": "IMAGE"}], "QueryRetrieveLevel 'IMAGE'"),
        ([{"QueryRetrieveLevel": "STUDY"}], "no matching key"),
        ([{"PatientID": ["1"]}], "must be a string"),
        ([{"ReferencedStudySequence": ""}], "is a sequence"),
    ],
)
def test_bad_query_files_say_what_is_wrong(tmp_path: Path, data: object, words: str) -> None:
    with pytest.raises(QueryError, match=words):
        load_queries(write(tmp_path, data))


def test_keys_from_flags() -> None:
    query = query_from_keys(["PatientID=123", "StudyDate=20240101-20240131", "Modality=CT"])
    assert query.level is Level.SERIES  # Modality matches series
    assert query.keys["StudyDate"] == "20240101-20240131"
    assert query_from_keys(["PatientID=1", "QueryRetrieveLevel=PATIENT"]).level is Level.PATIENT
    with pytest.raises(QueryError, match="expected Keyword=value"):
        query_from_keys(["PatientID"])
    with pytest.raises(QueryError, match="given twice"):
        query_from_keys(["PatientID=1", "PatientID=2"])


def test_identifiers_keep_wildcards_and_ranges() -> None:
    raw = encode_identifier(
        {"QueryRetrieveLevel": "STUDY", "StudyDate": "20240101-20240131", "PatientID": "A*",
         "StudyInstanceUID": ""}
    )  # fmt: skip
    ds = decode_identifier(raw)
    assert text_of(ds, "StudyDate") == "20240101-20240131"
    assert text_of(ds, "PatientID") == "A*"
    assert text_of(ds, "StudyInstanceUID") == ""
    assert ds[0x0020000D] == b""  # StudyInstanceUID: sent empty (universal matching)


def test_pacs_resolution() -> None:
    directory = NodeDirectory.parse("ORTHANC=127.0.0.1:4242,OTHER=10.0.0.1:104")
    assert resolve_pacs("OTHER", directory, None).port == 104
    assert resolve_pacs("X=host:11112", directory, None).host == "host"
    assert resolve_pacs(None, directory, "ORTHANC").port == 4242
    assert resolve_pacs(None, NodeDirectory.parse("A=h:1"), None).aet == "A"
    with pytest.raises(UsageError, match="--pacs: say which PACS"):
        resolve_pacs(None, directory, None)
    with pytest.raises(UsageError, match="--pacs: 'NOPE' is not in OXIDIP_PACS_ADDRESS"):
        resolve_pacs("NOPE", directory, None)
    with pytest.raises(UsageError, match="--pacs 'X=host'"):
        resolve_pacs("X=host", directory, None)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["pull", "-k", "PatientID=1", "--concurrency", "0"], "--concurrency: '0': at least 1"),
        (["pull", "-k", "PatientID=1", "--stall", "soon"], "--stall: 'soon' is not"),
        (["pull", "-k", "PatientID=1", "--method", "post"], "--method: invalid choice"),
        (["pull"], "give one of: a QUERIES.json file, -k Keyword=value flags, --resume ID"),
        (["pull", "-k", "PatientID"], "-k 'PatientID': expected Keyword=value"),
        (["pull", "-k", "PatientID=1", "--pacs", "NOPE"], "'NOPE' is not in OXIDIP_PACS_ADDRESS"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(
    argv: list[str],
    words: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OXIDIP_FILES_ROOT", str(tmp_path))
    monkeypatch.setenv("OXIDIP_PACS_ADDRESS", "ORTHANC=127.0.0.1:4242")
    assert exit_status(argv) == 2
    assert words in capsys.readouterr().err


def exit_status(argv: list[str]) -> object:
    try:
        return cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


def test_bad_configuration_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OXIDIP_PACS_ADDRESS", "ORTHANC=127.0.0.1")
    assert exit_status(["pull", "-k", "PatientID=1"]) == 2
    assert "OXIDIP_PACS_ADDRESS" in capsys.readouterr().err


def test_failure_words_of_final_statuses() -> None:
    verdict, words = status_words(0xA801, "", method="move", destination="OXIDIP", failed=[])
    assert verdict is Verdict.PERMANENT
    assert "move destination OXIDIP unknown to the PACS (A801)" in words
    assert "add OXIDIP -> host:port" in words and "DICOM modalities" in words
    verdict, words = status_words(
        0xB000, "", method="move", destination="OXIDIP", failed=["1.2.3", "1.2.4", "1.2.5", "1.2.6"]
    )
    assert verdict is Verdict.TRANSIENT
    assert "Failed SOP Instance UID List: 4: 1.2.3, 1.2.4, 1.2.5, ..." in words
    verdict, words = status_words(0xA702, "busy", method="get", destination="X", failed=[])
    assert (verdict, words) == (
        Verdict.TRANSIENT,
        "the PACS is out of resources (0xA702) (busy): retried later",
    )
    verdict, words = status_words(0xC000, "", method="get", destination="X", failed=[])
    assert (verdict, words) == (Verdict.PERMANENT, "the PACS could not process the C-GET (0xC000)")
    pacs = RemoteNode("PACS", "127.0.0.1", 4242)
    refused = start_failed(OSError("1.2 (the peer refused the information model)"), "get", pacs)
    assert refused.verdict is Verdict.PERMANENT
    assert refused.words.startswith("the PACS refused C-GET: try --method move")
    none = start_failed(OSError("the peer accepted none of the 3 storage"), "get", pacs)
    assert none.words.startswith("the PACS refused C-GET: try --method move")
    lost = start_failed(OSError("connection refused"), "move", pacs)
    assert (lost.verdict, lost.words) == (
        Verdict.TRANSIENT,
        "C-MOVE from PACS at 127.0.0.1:4242: connection refused",
    )
    assert status_words(0, "", method="move", destination="X", failed=[]) == (Verdict.DONE, "")


def row(uid: str, expected: int | None) -> PullSeriesRow:
    return PullSeriesRow(
        1, uid, "1.1", "P", "CT", "axial", expected, PullSeriesState.RUNNING, 1, None, "",
        None, None, None, None, "p", None,
    )  # fmt: skip


def test_unknown_totals_are_shown_as_unknown_never_as_done() -> None:
    assert bar(5, None).strip("[]").strip() == "?"
    assert bar(5, 10) == "[" + "#" * 12 + "." * 12 + "]"
    assert series_line(row("1.2", None), Counts(), 4) == "4/? registered 4"
    # Pending responses give a total when the C-FIND did not.
    assert series_line(row("1.2", None), Counts(6, 4, 0, 0), 3) == "4/10 registered 3"
    assert series_line(row("1.2", 12), Counts(None, 5, 1, 0), 5) == "5/12 registered 5 failed 1"


def test_log_lines_when_not_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    rows = [row("1.2.1", 3), row("1.2.2", None)]
    display = LogDisplay(rows)
    with caplog.at_level(logging.INFO, logger="oxidip.pull"):
        display.started(rows[0])
        display.progress("1.2.1", Counts(1, 2, 0, 0), 2)  # within LOG_EVERY: no line
        display.ended("1.2.1", "complete", 3, "")
        display.started(rows[1])
        display.ended("1.2.2", "unknown", 2, "no count")
        display.close()
    messages = [(r.getMessage(), getattr(r, "state", None)) for r in caplog.records]
    assert messages == [
        ("series retrieval started", None),
        ("series retrieval ended", "complete"),
        ("series retrieval started", None),
        ("series retrieval ended", "unknown"),
    ]
    assert caplog.records[0].expected == 3  # type: ignore[attr-defined]
    assert caplog.records[2].expected == "unknown"  # type: ignore[attr-defined]
    assert caplog.records[3].overall.endswith("5/? instances, 2/2 series ended")  # type: ignore[attr-defined]


def test_terminal_bars_end_with_the_overall_line() -> None:
    rows = [row("1.2.1", 4)]
    out = io.StringIO()
    display = TerminalDisplay(rows, out)
    display.started(rows[0])
    display.progress("1.2.1", Counts(2, 2, 0, 0), 2)
    display.ended("1.2.1", "complete", 4, "")
    display.close()
    text = out.getvalue()
    assert "complete   1.2.1 CT axial\n" in text
    assert text.endswith("[" + "#" * 24 + "] 4/4 instances, 1/1 series ended\n")
