"""Registering what is on disk but may not be in the database.

- ``replay_journals``, at every start: the journal segments of oxidip processes that died
  (even by kill -9) list the instances they acknowledged; some may not have been registered
  yet. Each listed file is read back and registered (registration is idempotent: an instance
  already there does not count twice), then the segment is deleted.
- ``reconcile`` (``oxidip reconcile``): the same for every file of a storage tree, and rows
  whose file is gone are reported; for a database rebuilt from scratch or a tree copied in.

Instances read back are registered as delivered by association 0 of this process, which is
then closed, so their series get a final state as after any association.
"""

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from oxidip import _core
from oxidip._boundary import InstanceStored, StoredInstance
from oxidip.registry import Registry

__all__ = [
    "ReconcileReport",
    "instance_from_file",
    "reconcile",
    "replay_journals",
    "storage_files",
]

log = logging.getLogger("oxidip.reconcile")

#: Association id of instances read back from storage rather than received.
READ_BACK_ASSOCIATION = 0
BATCH = 500

_DECODER = msgspec.msgpack.Decoder(StoredInstance)


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


def _register_files(paths: Iterable[Path], registry: Registry, node: str) -> tuple[int, int]:
    """Registers the readable files among ``paths`` in batches, then ends their delivery (so
    their series get a final state); returns (registered, unreadable)."""
    registered = unreadable = 0
    batch: list[InstanceStored] = []

    def flush() -> None:
        nonlocal registered
        if batch:
            registry.register(batch, node)
            registered += len(batch)
            batch.clear()

    for path in paths:
        try:
            batch.append(instance_from_file(path))
        except (ValueError, OSError) as error:
            unreadable += 1
            log.warning("not registered", extra={"path": str(path), "error": str(error)})
            continue
        if len(batch) >= BATCH:
            flush()
    flush()
    registry.association_ended(node, READ_BACK_ASSOCIATION)
    return registered, unreadable


def replay_journals(files_root: Path | str, registry: Registry, node: str) -> int:
    """Registers what dead processes' journals list; deletes the journals. Returns how many
    instances were registered. Their series' expected counts may still be pending: the
    caller asks for every pending one at start."""
    root = Path(files_root)
    total = 0
    for journal in _core.orphan_journals(str(root)):
        listed = [root / line for line in Path(journal).read_text().splitlines() if line]
        present = [path for path in listed if path.is_file()]
        registered, unreadable = _register_files(present, registry, node)
        total += registered
        log.info(
            "journal replayed",
            extra={
                "journal": journal,
                "listed": len(listed),
                "registered": registered,
                "gone": len(listed) - len(present),
                "unreadable": unreadable,
            },
        )
        # Another process starting at the same time may have replayed it too.
        with contextlib.suppress(FileNotFoundError):
            os.remove(journal)
    return total


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


def reconcile(files_root: Path | str, registry: Registry, node: str) -> ReconcileReport:
    """Registers every file of the storage tree and lists registered instances whose file is
    gone (left in the database for a person to decide on)."""
    registered, unreadable = _register_files(storage_files(files_root), registry, node)
    missing = [path for _, path in registry.instance_paths() if not os.path.isfile(path)]
    return ReconcileReport(registered, unreadable, missing)
