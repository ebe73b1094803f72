"""What a pull says at its end, per series (expected, received, state, where, why), and what
``--find-only`` lists (CSV as pacsnpull's find writes it, or JSON lines)."""

import csv
import io
import os
from collections.abc import Sequence

import msgspec

from oxidip.registry import FoundSeries, PullSeriesRow, Received

__all__ = ["FIND_COLUMNS", "SeriesResult", "find_csv", "find_json", "result_of", "table"]


class SeriesResult(msgspec.Struct, frozen=True):
    """One series of a pull as ``--json`` prints it (one object per line)."""

    pull: int
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_description: str
    #: NumberOfSeriesRelatedInstances from the C-FIND; None: the PACS did not say.
    expected: int | None
    #: Instances registered from the PACS's AE title.
    received: int
    #: complete, incomplete, unknown, failed (pending or running when stopped before).
    state: str
    attempts: int
    #: The directory of its files ("" when none was registered).
    path: str
    #: Why it is not complete, in words.
    error: str
    #: The last retrieval's sub-operation counts (None: the PACS did not say).
    completed: int | None
    failed: int | None
    warning: int | None


def result_of(row: PullSeriesRow, received: Received | None, files_root: str) -> SeriesResult:
    path = ""
    if received is not None and received.path:
        path = os.path.dirname(os.path.join(files_root, received.path))
    return SeriesResult(
        pull=row.pull_id,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        modality=row.modality,
        series_description=row.series_description,
        expected=row.expected,
        received=received.count if received is not None else 0,
        state=row.state.value,
        attempts=row.attempts,
        path=path,
        error="" if row.state.value == "complete" else row.last_error,
        completed=row.completed,
        failed=row.failed,
        warning=row.warning,
    )


def table(results: Sequence[SeriesResult]) -> str:
    """The report for people: one line per series, aligned."""
    header = ["STATE", "RECEIVED", "SERIES INSTANCE UID", "MODALITY", "WHERE / WHY"]
    lines = [header]
    for r in results:
        expected = "?" if r.expected is None else str(r.expected)
        where = r.path if r.state == "complete" else " ".join(r.error.split()) or r.path
        lines.append(
            [r.state, f"{r.received}/{expected}", r.series_instance_uid, r.modality, where]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


#: ``--find-only`` columns (FoundSeries fields).
FIND_COLUMNS = tuple(FoundSeries.__struct_fields__)


def find_csv(found: Sequence[FoundSeries]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIND_COLUMNS)
    for series in found:
        row = msgspec.structs.asdict(series)
        row["expected"] = "" if series.expected is None else series.expected
        writer.writerow([row[column] for column in FIND_COLUMNS])
    return out.getvalue()


def find_json(found: Sequence[FoundSeries]) -> str:
    encoder = msgspec.json.Encoder()
    return "".join(encoder.encode(series).decode() + "\n" for series in found)
