"""`oxidip reconcile`: a storage tree registered again from scratch, and registered instances
whose file is gone reported."""

import shutil
from pathlib import Path

from tests.helpers.e2e import Oxidip, RegistryView, make_series, reconcile, send

SENDER = "MODALITY"


def test_reconcile_rebuilds_the_registry_from_the_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    first, second = make_series(4), make_series(3)
    with Oxidip(root) as server:
        for series in (first, second):
            assert set(send(server.port, series.datasets, calling_aet=SENDER).values()) == {0}
        with RegistryView(root, None) as registry:
            registry.wait_series(
                lambda rows: len(rows) == 2 and all(r.received for r in rows.values())
            )
            paths_before = registry.instance_paths()
    # The database is lost; the files are not.
    shutil.rmtree(root / ".oxidip")

    result = reconcile(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registered 7 files, 0 unreadable" in result.stdout
    with RegistryView(root, None) as registry:
        rows = registry.series()
        assert {uid: row.received for uid, row in rows.items()} == {
            first.series_instance_uid: 4,
            second.series_instance_uid: 3,
        }
        assert {row.calling_aet for row in rows.values()} == {SENDER}
        # Read back from the files: no count from a PACS, and no association delivering them.
        assert {row.state for row in rows.values()} == {"finalized-unknown"}
        assert registry.instance_paths() == paths_before

    # Idempotent: a second run counts nothing twice.
    assert reconcile(root).returncode == 0
    with RegistryView(root, None) as registry:
        assert sorted(row.received for row in registry.series().values()) == [3, 4]

    # A registered instance whose file is gone is reported, and the exit status says so.
    gone = Path(paths_before[first.sop_instance_uids[0]])
    gone.unlink()
    result = reconcile(root)
    assert result.returncode == 1
    assert f"registered but missing: {gone}" in result.stdout
