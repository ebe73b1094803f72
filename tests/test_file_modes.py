"""Data at rest (issue 9 item 24): what ``oxidip serve`` writes, stored through dcmtk's
``storescu``, is private by default (files 0640, directories 0750; journals and the SQLite
registry 0600 in 0700 directories), the modes are configurable and exact whatever the umask,
and ``OXIDIP_GROUP`` gives stored files and directories a group through setgid directories.
(Bad values: ``tests/test_config.py``, exit 2 naming the variable.)"""

import contextlib
import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dicom import write_part10
from tests.helpers.e2e import (
    HOST,
    Oxidip,
    RegistryView,
    counts_are,
    instances_on_disk,
    journal_files,
    make_series,
)
from tests.helpers.senders import storescu

SENDER = "MODALITY"


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The test process's umask, which ``oxidip serve`` inherits when started inside."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def other_group() -> int:
    """A group this process may give its files other than its own: any group as root,
    else a supplementary group (or its own, when it has none: the setgid bits still show)."""
    own = os.getegid()
    if os.geteuid() == 0:
        return next(g.gr_gid for g in grp.getgrall() if g.gr_gid != own)
    return next((g for g in os.getgroups() if g != own), own)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def store(root: Path, tmp_path: Path, env: dict[str, str], mask: int) -> Iterator[Oxidip]:
    """Starts ``oxidip serve`` under ``mask`` and stores a series of 3 with storescu; yields
    the running server once the series is registered."""
    series = make_series(3)
    files = []
    for index, ds in enumerate(series.datasets):
        path = tmp_path / f"in{index}.dcm"
        write_part10(path, ds)
        files.append(path)
    with umask(mask):
        server = Oxidip(root, env=env)
    with server, RegistryView(root, None) as view:
        result = storescu(HOST, server.port, files, calling_aet=SENDER)
        assert result.returncode == 0, result.stdout + result.stderr
        view.wait_series(counts_are({series.series_instance_uid: 3}, "finalized-unknown"))
        yield server
        server.stop()


def created_dirs(root: Path) -> list[Path]:
    """The directories oxidip created for stored files, between the root and the files."""
    dirs = {parent for path in instances_on_disk(root).values() for parent in path.parents}
    return sorted(d for d in dirs if d != root and root in d.parents)


@pytest.mark.parametrize(
    ("env", "mask", "file_mode", "dir_mode"),
    [
        ({}, 0o022, 0o640, 0o750),
        # A umask that would take bits away: the configured modes still hold.
        ({"OXIDIP_FILE_MODE": "0660", "OXIDIP_DIR_MODE": "0770"}, 0o077, 0o660, 0o770),
        ({"OXIDIP_FILE_MODE": "600", "OXIDIP_DIR_MODE": "700"}, 0o000, 0o600, 0o700),
    ],
)
def test_stored_files_and_directories_get_their_modes(
    tmp_path: Path, env: dict[str, str], mask: int, file_mode: int, dir_mode: int
) -> None:
    root = tmp_path / "storage"
    with store(root, tmp_path, env, mask):
        files = instances_on_disk(root)
        assert len(files) == 3
        assert {path: mode(path) for path in files.values()} == dict.fromkeys(
            files.values(), file_mode
        )
        dirs = created_dirs(root)
        assert len(dirs) == 3, dirs  # calling AE, study, series
        assert {d: mode(d) for d in dirs} == dict.fromkeys(dirs, dir_mode)
        assert mode(root) == dir_mode
        assert mode(root / ".oxidip-tmp") == dir_mode
        # oxidip's own bookkeeping: the owner's only, whatever was configured.
        assert mode(root / ".oxidip-journal") == 0o700
        segments = journal_files(root)
        assert segments and {mode(s) for s in segments} == {0o600}
        assert mode(root / ".oxidip") == 0o700
        registry = sorted((root / ".oxidip").iterdir())
        assert registry and {mode(p) for p in registry} == {0o600}, registry


def test_a_group_is_given_to_stored_files_through_setgid_directories(tmp_path: Path) -> None:
    gid = other_group()
    root = tmp_path / "storage"
    with store(root, tmp_path, {"OXIDIP_GROUP": str(gid)}, 0o022):
        files = instances_on_disk(root).values()
        assert {path.stat().st_gid for path in files} == {gid}
        assert {mode(path) for path in files} == {0o640}
        for directory in [root, root / ".oxidip-tmp", *created_dirs(root)]:
            assert directory.stat().st_gid == gid, directory
            assert mode(directory) == 0o750 | stat.S_ISGID, f"{directory}: {mode(directory):o}"
