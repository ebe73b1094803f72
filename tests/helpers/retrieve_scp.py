"""A PACS stand-in for ``oxidip pull``: a pynetdicom Query/Retrieve SCP (C-FIND, C-MOVE and
C-GET, Study Root and Patient Root, PS3.4 annex C) over a set of instances held in memory,
that can misbehave the ways real PACS do (``/work/shared/routing-notes.md``):

- ``stall``: a series' retrieve sends ``after`` instances and then goes silent; it answers a
  C-CANCEL with Cancel (FE00) and the Failed SOP Instance UID List, or, with
  ``honour_cancel=False``, ignores it and stays silent until the association goes (a PACS
  the requestor must abort);
- ``fail``: some instances of a series fail their C-STORE sub-operations (sent with a SOP
  class no storage context carries, so pynetdicom counts them failed): the final response is
  B000 with those UIDs in the Failed SOP Instance UID List (PS3.4 C.4.2.1.4.2);
- a move destination not in ``destinations``: A801 (PS3.4 C.4.2.1.5);
- ``series_counts=False``: SERIES-level C-FIND answers without
  NumberOfSeriesRelatedInstances (some PACS);
- ``get="refuse-model"``: no C-GET presentation context accepted; ``get="no-roles"``: the
  C-GET model is accepted but no storage context in the SCP role, so it has nothing to send
  with (PS3.7 D.3.3.4).

Misbehaviour is per series and for its first ``times`` retrieves only (then the series
behaves), so that a retry can succeed; or, with ``stall_from = n``, the n-th C-MOVE/C-GET
request and every later one stall after one instance, whatever the series (to kill a pull
mid-way; ``stalled`` is set once a retrieve went silent; set ``stall_from`` to None to let
later retrieves through). The SCP counts C-MOVE and C-GET requests per series
(``retrieves``) and C-CANCELs, and stops on exit (a context manager). Listens on 127.0.0.1
and a free port."""

import copy
import fnmatch
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Self

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from oxidip.nodes import RemoteNode

HOST = "127.0.0.1"
#: A SOP class no one proposes: instances sent with it fail their C-STORE sub-operation.
UNSENDABLE_SOP_CLASS = "1.2.826.0.1.3680043.10.1078.9.9"
#: How often a stalled retrieve looks whether it was cancelled or the SCP stopped.
_STALL_POLL = 0.05

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
GetMode = Literal["accept", "refuse-model", "no-roles"]

_UNIQUE_KEYS: dict[str, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
#: Attributes a C-FIND answers at each level (PS3.4 C.6.1.1 and C.6.2.1), besides counts.
_LEVEL_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "STUDY": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyInstanceUID",
        "StudyDescription",
        "ReferringPhysicianName",
    ),
    "SERIES": ("Modality", "SeriesNumber", "SeriesInstanceUID", "SeriesDescription"),
    "IMAGE": ("InstanceNumber", "SOPInstanceUID", "SOPClassUID"),
}


def _connected(event: evt.Event) -> bool:
    """Whether the requestor is still there. ``assoc.is_established`` cannot say: the
    association's reactor runs this handler, so an A-ABORT waits for it; the DUL's state
    machine leaves Sta6 (data transfer) as soon as the peer aborts or closes (PS3.8 9.2)."""
    return bool(event.assoc.dul.state_machine.current_state == "Sta6")


@dataclass(frozen=True)
class Misbehaviour:
    """What a series' retrieves do wrong, for the first ``times`` of them."""

    kind: Literal["stall", "fail"]
    #: ``stall``: instances sent before going silent.
    after: int = 0
    #: ``stall``: answer a C-CANCEL (else stay silent until the association goes).
    honour_cancel: bool = True
    #: ``fail``: SOP Instance UIDs whose sub-operation fails.
    failing: frozenset[str] = frozenset()
    times: int = 1


def _matches(value: object, wanted: str, vr: str) -> bool:
    """PS3.4 C.2.2.2: single value, wildcard (``*``, ``?``), UID list, and date range."""
    text = "" if value is None else str(value)
    if vr == "UI" and "\\" in wanted:
        return text in wanted.split("\\")
    if vr in {"DA", "TM", "DT"} and "-" in wanted:
        low, _, high = wanted.partition("-")
        return (not low or text >= low) and (not high or text <= high)
    if "*" in wanted or "?" in wanted:
        return fnmatch.fnmatchcase(text, wanted.replace("[", "[[]"))
    return text == wanted


class RetrieveScp:
    """See the module docstring. ``datasets``: the instances it holds (each with a file meta
    saying its transfer syntax, as ``tests.helpers.dicom.make_dataset`` makes them);
    ``destinations``: move destination AE title -> (host, port)."""

    def __init__(
        self,
        datasets: Iterable[Dataset],
        *,
        destinations: Mapping[str, tuple[str, int]] | None = None,
        misbehaviour: Mapping[str, Misbehaviour] | None = None,
        series_counts: bool = True,
        get: GetMode = "accept",
        aet: str = "PACS",
    ) -> None:
        self.datasets = list(datasets)
        self.destinations = dict(destinations or {})
        self.misbehaviour = dict(misbehaviour or {})
        self.series_counts = series_counts
        self.aet = aet
        self.host = HOST
        #: SeriesInstanceUID -> C-MOVE / C-GET requests whose identifier selected it.
        self.retrieves: Counter[str] = Counter()
        self.moves = 0
        self.gets = 0
        self.cancels = 0
        #: Set once a C-CANCEL-RQ came (pynetdicom matches it to the request by its Message
        #: ID Being Responded To, PS3.7 9.3.2.3).
        self.cancelled = threading.Event()
        self.stall_from: int | None = None
        self.stalled = threading.Event()
        #: SOPInstanceUID -> C-STORE sub-operations started for it (failing ones included).
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        sop_classes = sorted({str(ds.SOPClassUID) for ds in self.datasets})
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        self.ae = AE(ae_title=aet)
        self.ae.maximum_associations = 16
        for model in (
            StudyRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            PatientRootQueryRetrieveInformationModelMove,
        ):
            self.ae.add_supported_context(model)
        if get != "refuse-model":
            self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
            self.ae.add_supported_context(PatientRootQueryRetrieveInformationModelGet)
        roles: dict[str, bool] = {} if get == "no-roles" else {"scu_role": True, "scp_role": True}
        for sop_class in sop_classes:
            # C-GET: the requestor's storage contexts, SCP role accepted (PS3.7 D.3.3.4).
            self.ae.add_supported_context(sop_class, syntaxes, **roles)  # type: ignore[arg-type]
            # C-MOVE: the sub-association to the move destination proposes these.
            self.ae.add_requested_context(sop_class, syntaxes)
        server = self.ae.start_server(
            (HOST, 0),
            block=False,
            evt_handlers=[
                (evt.EVT_C_FIND, self._on_find),
                (evt.EVT_C_MOVE, self._on_move),
                (evt.EVT_C_GET, self._on_get),
            ],
        )
        assert server is not None  # block=False returns the running server
        self.server = server
        self.port: int = server.server_address[1]

    @property
    def address(self) -> RemoteNode:
        return RemoteNode(aet=self.aet, host=self.host, port=self.port)

    # --- matching ----------------------------------------------------------------------

    def _select(self, query: Dataset, level: str) -> list[Dataset]:
        """Instances whose attributes match every non-empty key of ``query`` (keys above and
        at ``level``; deeper keys are return keys only)."""
        selected = []
        for ds in self.datasets:
            for element in query:
                keyword = element.keyword
                if keyword in {"QueryRetrieveLevel", "SpecificCharacterSet", ""}:
                    continue
                wanted = "" if element.value is None else str(element.value)
                if not wanted or element.VR == "SQ":
                    continue
                if not _matches(ds.get(keyword), wanted, element.VR):
                    break
            else:
                selected.append(ds)
        return selected

    def _answer(self, query: Dataset, level: str, group: Sequence[Dataset]) -> Dataset:
        """One C-FIND match for an entity (``group``: its instances)."""
        first = group[0]
        answer = Dataset()
        answer.QueryRetrieveLevel = level
        depth = _LEVELS.index(level)
        for keyword in (k for lv in _LEVELS[: depth + 1] for k in _LEVEL_KEYS[lv]):
            # Unique keys of this level and those above always (PS3.4 C.4.1.2.1.4).
            if keyword in query or keyword in [_UNIQUE_KEYS[lv] for lv in _LEVELS[: depth + 1]]:
                setattr(answer, keyword, first.get(keyword, ""))
        for element in query:
            keyword = element.keyword
            if keyword and keyword not in answer and element.VR != "SQ":
                counted = self._count(keyword, group)
                if counted is not None:
                    setattr(answer, keyword, counted)
                elif keyword in first:
                    setattr(answer, keyword, first.get(keyword))
                else:
                    setattr(answer, keyword, None)
        return answer

    def _count(self, keyword: str, group: Sequence[Dataset]) -> object:
        if keyword == "NumberOfSeriesRelatedInstances":
            return len(group) if self.series_counts else None
        if keyword in {"NumberOfStudyRelatedInstances", "NumberOfPatientRelatedInstances"}:
            return len(group)
        if keyword == "NumberOfStudyRelatedSeries":
            return len({str(ds.SeriesInstanceUID) for ds in group})
        if keyword == "NumberOfPatientRelatedStudies":
            return len({str(ds.StudyInstanceUID) for ds in group})
        if keyword in {"SOPClassesInStudy", "ModalitiesInStudy"}:
            source = "SOPClassUID" if keyword == "SOPClassesInStudy" else "Modality"
            return sorted({str(ds.get(source, "")) for ds in group})
        return None

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        level = str(query.get("QueryRetrieveLevel", ""))
        if level not in _UNIQUE_KEYS:
            yield 0xA900, None  # Identifier does not match SOP class
            return
        groups: dict[str, list[Dataset]] = {}
        for ds in self._select(query, level):
            groups.setdefault(str(ds.get(_UNIQUE_KEYS[level], "")), []).append(ds)
        for group in groups.values():
            if event.is_cancelled:
                yield 0xFE00, None
                return
            answer = self._answer(query, level, group)
            if not self.series_counts and "NumberOfSeriesRelatedInstances" in answer:
                del answer.NumberOfSeriesRelatedInstances
            yield 0xFF00, answer
        yield 0x0000, None

    # --- retrieving --------------------------------------------------------------------

    def _retrieved(self, event: evt.Event) -> list[Dataset]:
        """The instances a C-MOVE / C-GET identifier selects, counted per series."""
        query = event.identifier
        level = str(query.get("QueryRetrieveLevel", ""))
        selected = self._select(query, level) if level in _UNIQUE_KEYS else []
        with self._lock:
            for series in {str(ds.SeriesInstanceUID) for ds in selected}:
                self.retrieves[series] += 1
        return selected

    def _plan(
        self, selected: list[Dataset], ordinal: int
    ) -> Iterator[tuple[int, Dataset | None] | None]:
        """The sub-operations of the ``ordinal``-th retrieve, in order: each instance to send
        (a copy with the unsendable SOP class for a failing one), and ``None`` where it goes
        silent."""
        for series in dict.fromkeys(str(ds.SeriesInstanceUID) for ds in selected):
            instances = [ds for ds in selected if str(ds.SeriesInstanceUID) == series]
            rule = self.misbehaviour.get(series)
            if self.stall_from is not None and ordinal >= self.stall_from:
                rule = Misbehaviour("stall", after=1, times=ordinal)
            with self._lock:
                active = rule is not None and self.retrieves[series] <= rule.times
            for index, ds in enumerate(instances):
                if active and rule is not None and rule.kind == "stall" and index == rule.after:
                    yield None
                    return
                with self._lock:
                    self.sent[str(ds.SOPInstanceUID)] += 1
                if active and rule is not None and str(ds.SOPInstanceUID) in rule.failing:
                    broken = copy.deepcopy(ds)  # its file meta too; the original intact
                    broken.SOPClassUID = UNSENDABLE_SOP_CLASS
                    yield 0xFF00, broken
                else:
                    yield 0xFF00, ds

    def sent_in_series(self, series_instance_uid: str) -> int:
        """Instances of a series whose C-STORE sub-operation was started at least once."""
        with self._lock:
            return sum(
                1
                for ds in self.datasets
                if str(ds.SeriesInstanceUID) == series_instance_uid
                and self.sent[str(ds.SOPInstanceUID)]
            )

    def _stall(self, event: evt.Event, honour_cancel: bool) -> bool:
        """Silent until cancelled (True: answer Cancel) or the association or SCP ends."""
        counted = False
        while not self._stop.is_set() and _connected(event):
            if event.is_cancelled and not counted:
                counted = True
                with self._lock:
                    self.cancels += 1
                self.cancelled.set()
                if honour_cancel:
                    return True
            self._stop.wait(_STALL_POLL)
        return False

    def _suboperations(
        self, event: evt.Event, selected: list[Dataset], ordinal: int
    ) -> Iterator[tuple[int, Dataset | None]]:
        honour = all(
            rule.honour_cancel
            for series, rule in self.misbehaviour.items()
            if any(str(ds.SeriesInstanceUID) == series for ds in selected)
        )
        for step in self._plan(selected, ordinal):
            if event.is_cancelled:
                with self._lock:
                    self.cancels += 1
                self.cancelled.set()
                yield 0xFE00, None
                return
            if step is None:
                self.stalled.set()
                if self._stall(event, honour):
                    yield 0xFE00, None
                return
            yield step

    def _on_move(self, event: evt.Event) -> Iterator[object]:
        with self._lock:
            self.moves += 1
            ordinal = self.moves + self.gets
        destination = self.destinations.get(event.move_destination or "")
        if destination is None:
            yield None, None  # pynetdicom answers A801: move destination unknown
            return
        selected = self._retrieved(event)
        yield destination[0], destination[1]
        yield len(selected)
        yield from self._suboperations(event, selected, ordinal)

    def _on_get(self, event: evt.Event) -> Iterator[object]:
        with self._lock:
            self.gets += 1
            ordinal = self.moves + self.gets
        selected = self._retrieved(event)
        yield len(selected)
        yield from self._suboperations(event, selected, ordinal)

    def close(self) -> None:
        self._stop.set()
        self.ae.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
