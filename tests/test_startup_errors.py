"""Problems found after the configuration parsed (issue 9, item 16): each stops the command
with exit status 2 (configuration, naming the variable) or 1 (a run-time failure), and one
line that says why, never a traceback.

- the storage root is a file, lies under a file, or cannot hold a file for this user (tests
  run as root, which permission bits do not stop: ``/proc/self`` is a directory nobody can
  create files in);
- a database URL libpq cannot read (a port that is not a number);
- the database down for ``oxidip serve`` and for ``oxidip reconcile``;
- a ``route()`` hook without ``OXIDIP_ROUTES`` (the destinations it could name);
- ``oxidip bench compare`` without matplotlib: refused before the first run (not after the
  whole comparison), or run with ``--no-chart`` for the report without the chart.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.nats import closed_port
from tests.helpers.process import clean_env, run_oxidip

UNREACHABLE_DB = f"postgresql://postgres@127.0.0.1:{closed_port()}/oxidip"


def serve_env(root: Path | str, **extra: str) -> dict[str, str]:
    return clean_env(
        OXIDIP_FILES_ROOT=str(root),
        OXIDIP_LISTENER_HOST="127.0.0.1",
        OXIDIP_LISTENER_PORT="0",
        **extra,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def test_storage_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "a-file"
    root.write_text("")
    result = run_oxidip("serve", env=serve_env(root))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert f"OXIDIP_FILES_ROOT={str(root)!r}: not a directory" in line


def test_storage_root_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    root = tmp_path / "a-file" / "data"
    result = run_oxidip("serve", env=serve_env(root))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert f"OXIDIP_FILES_ROOT={str(root)!r}: cannot be created" in line


def test_storage_root_this_user_cannot_write() -> None:
    result = run_oxidip("serve", env=serve_env("/proc/self"))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "OXIDIP_FILES_ROOT='/proc/self'" in line
    assert f"this user (uid {os.getuid()}) cannot create files in it" in line


@pytest.mark.parametrize("command", ["serve", "reconcile"])
def test_database_url_libpq_cannot_read(command: str, tmp_path: Path) -> None:
    url = "postgresql://oxidip:secret@127.0.0.1:notaport/oxidip"
    result = run_oxidip(command, env=serve_env(tmp_path, OXIDIP_DB_CONNECTION=url))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "OXIDIP_DB_CONNECTION=" in line and "port is not a number" in line
    assert "secret" not in line


def test_serve_with_the_database_down(tmp_path: Path) -> None:
    result = run_oxidip(
        "serve",
        env=serve_env(tmp_path, OXIDIP_DB_CONNECTION=UNREACHABLE_DB, OXIDIP_LOG_FORMAT="json"),
    )
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert '"msg": "cannot start"' in line
    assert '"variable": "OXIDIP_DB_CONNECTION"' in line
    assert "refused" in line


def test_route_hook_without_routes(tmp_path: Path) -> None:
    (tmp_path / "routing_hooks.py").write_text("def route(series):\n    return None\n")
    env = serve_env(tmp_path / "data", OXIDIP_HOOKS="routing_hooks", PYTHONPATH=str(tmp_path))
    result = run_oxidip("serve", env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]  # after "hooks loaded"
    assert line.startswith("oxidip: configuration error: OXIDIP_HOOKS='routing_hooks': ")
    assert "OXIDIP_ROUTES is not set" in line, line


def test_reconcile_with_the_database_down(tmp_path: Path) -> None:
    result = run_oxidip("reconcile", env=serve_env(tmp_path, OXIDIP_DB_CONNECTION=UNREACHABLE_DB))
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("oxidip reconcile: cannot open OXIDIP_DB_CONNECTION:"), line
    assert "refused" in line


@pytest.fixture
def without_matplotlib(tmp_path: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes ``import matplotlib`` fail as if it were
    not installed."""
    hidden = tmp_path / "hide-matplotlib"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text(
        "raise ImportError('No module named matplotlib (hidden by the test)')\n"
    )
    return hidden


def bench_compare(
    hidden: Path, tmp_path: Path, *extra: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """A quick ``oxidip bench compare`` into ``tmp_path/results``, matplotlib hidden."""
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden), env.get("PYTHONPATH")]))
    return run_oxidip(
        "bench",
        "compare",
        *("--quick", "--repeats", "1", "--prefill", "0", "--storage", str(tmp_path)),
        *("--output-dir", str(tmp_path / "results"), *extra),
        env=env,
        timeout=timeout,
    )


def test_bench_compare_without_matplotlib_refuses_at_once(
    without_matplotlib: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = bench_compare(without_matplotlib, tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "matplotlib" in line and "--no-chart" in line
    assert time.monotonic() - started < 30, "refused before running anything"
    assert not (tmp_path / "results").exists()


def test_bench_compare_no_chart_writes_the_report(without_matplotlib: Path, tmp_path: Path) -> None:
    result = bench_compare(
        without_matplotlib,
        tmp_path,
        *("--workloads", "small", "--receivers", "oxidip", "--no-chart"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    names = sorted(path.name for path in (tmp_path / "results").iterdir())
    assert [n for n in names if n.endswith(".png")] == []
    assert "latest.md" in names and "latest.json" in names
