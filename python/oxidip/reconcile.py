"""Registering what is on disk but may not be in the database.

- ``adopt_journals``, at every start and every few seconds while serving: the journal
  segments of oxidip processes that no longer run (even killed with kill -9, on any host
  sharing the storage root: each live process holds a lock on its own; see
  ``rust/storage/journal.rs``) list the instances they announced; some may not have been
  registered yet. Each listed file is read back and registered (registration is idempotent:
  an instance already there does not count twice; a path without a file, an instance whose
  process died before placing it, is skipped), the dead process's association activity is
  ended (its series get a final state now rather than at the idle timeout), then the segment
  is deleted.
- ``reconcile`` (``oxidip reconcile``): the same for every file of a storage tree, and rows
  whose file is gone are reported; for a database rebuilt from scratch or a tree copied in.

Instances read back are registered as delivered by association 0 of this process, which is
then closed, so their series get a final state as after any association.
"""

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from oxidip import _core
from oxidip._boundary import InstanceStored, StoredFile
from oxidip.registry import Registry, SeriesRow, Transition

__all__ = [
    "ReconcileReport",
    "Registration",
    "adopt_journals",
    "instance_from_file",
    "reconcile",
    "storage_files",
]

log = logging.getLogger("oxidip.reconcile")

#: Association id of instances read back from storage rather than received.
READ_BACK_ASSOCIATION = 0
BATCH = 500

_DECODER = msgspec.msgpack.Decoder(StoredFile)


def instance_from_file(path: Path | str) -> InstanceStored:
    """The InstanceStored event a stored file would have produced. Raises ValueError when
    the file is not a Part 10 file oxidip can read."""
    stored = _DECODER.decode(_core.read_instance(str(path)))
    return InstanceStored(
        association_id=READ_BACK_ASSOCIATION,
        path=stored.path,
        size=stored.size,
        attributes=stored.attributes,
        calling_aet=stored.source_aet,
        called_aet="",
        peer="",
        transfer_syntax=stored.transfer_syntax,
        received_at=stored.modified_at,
        stored_at=stored.modified_at,
        duplicate=False,
    )


class Registration(msgspec.Struct):
    """What registering files read back did."""

    #: Files registered, and files that could not be read (logged).
    registered: int = 0
    unreadable: int = 0
    #: State changes of series, in order.
    transitions: list[Transition] = msgspec.field(default_factory=list)
    #: Series instances were registered into, after the change.
    touched: list[SeriesRow] = msgspec.field(default_factory=list)
    #: Journal segments replayed.
    journals: int = 0


def _register_files(
    paths: Iterable[Path], registry: Registry, process_id: str, into: Registration
) -> Registration:
    """Registers the readable files among ``paths`` in batches, then ends their delivery (so
    their series get a final state); adds what happened to ``into``."""
    batch: list[InstanceStored] = []

    def flush() -> None:
        if batch:
            result = registry.register(batch, process_id)
            into.registered += len(batch)
            into.transitions.extend(result.transitions)
            into.touched.extend(result.touched)
            batch.clear()

    for path in paths:
        try:
            batch.append(instance_from_file(path))
        except (ValueError, OSError) as error:
            into.unreadable += 1
            log.warning("not registered", extra={"path": str(path), "error": str(error)})
            continue
        if len(batch) >= BATCH:
            flush()
    flush()
    into.transitions.extend(registry.association_ended(process_id, READ_BACK_ASSOCIATION))
    return into


def adopt_journals(files_root: Path | str, registry: Registry, process_id: str) -> Registration:
    """Replays the journals of processes that no longer run (see the module docstring) and
    deletes them. Their series' expected counts may still be pending: the caller asks for
    those of ``touched``. A journal whose replay fails is left in place for a later call, and
    the error raised."""
    root = Path(files_root)
    done = Registration()
    claimed = _core.claim_orphan_journals(str(root))
    try:
        for journal in claimed:
            listed = [root / entry for entry in journal.entries]
            present = [path for path in listed if path.is_file()]
            before = done.registered, done.unreadable
            _register_files(present, registry, process_id, done)
            # The journal names the process that wrote it ``node``.
            if journal.node is not None:
                done.transitions.extend(registry.process_ended(journal.node))
            journal.finish()
            done.journals += 1
            log.info(
                "journal replayed",
                extra={
                    "journal": journal.path,
                    "node": journal.node or "",
                    "listed": len(listed),
                    "registered": done.registered - before[0],
                    "gone": len(listed) - len(present),
                    "unreadable": done.unreadable - before[1],
                },
            )
    finally:
        for journal in claimed:
            journal.release()
    return done


def storage_files(files_root: Path | str) -> Iterator[Path]:
    """Every file of the storage tree, outside oxidip's own ``.oxidip*`` directories."""
    root = Path(files_root)
    for directory, subdirs, files in os.walk(root):
        if Path(directory) == root:
            subdirs[:] = [d for d in subdirs if not d.startswith(".oxidip")]
        subdirs.sort()
        for name in sorted(files):
            yield Path(directory) / name


class ReconcileReport(msgspec.Struct, frozen=True):
    registered: int
    unreadable: int
    missing_files: list[str]


def reconcile(files_root: Path | str, registry: Registry, process_id: str) -> ReconcileReport:
    """Registers every file of the storage tree and lists registered instances whose file is
    gone (left in the database for a person to decide on)."""
    done = _register_files(storage_files(files_root), registry, process_id, Registration())
    missing = [path for _, path in registry.instance_paths() if not os.path.isfile(path)]
    return ReconcileReport(done.registered, done.unreadable, missing)
