"""The Dockerfile, without a Docker engine (none runs here: the image itself is not built by
the tests): its instructions are parsed and checked (numeric user, pinned versions, a
HEALTHCHECK on /healthz with the HTTP port set in the image, a documented stop timeout longer
than the shutdown timeout), and its exact HEALTHCHECK command is run against a real
``oxidip serve``: healthy, not ready, stopped."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers.e2e import HOST, Oxidip

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continued lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        out.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def of(keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions() if name == keyword]


def image_env() -> dict[str, str]:
    """ENV of the last stage (the image), ``KEY=value`` pairs."""
    stages = [i for i, (name, _) in enumerate(instructions()) if name == "FROM"]
    env: dict[str, str] = {}
    for name, arguments in instructions()[stages[-1] :]:
        if name == "ENV":
            for pair in arguments.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def healthcheck_command() -> list[str]:
    [healthcheck] = of("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options, healthcheck
    argv = json.loads(command)  # the exec form: no shell needed
    assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv), argv
    return argv


def test_image_runs_as_a_numeric_non_root_user() -> None:
    users = of("USER")
    assert users, "no USER: the image would run as root"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER {users[-1]!r} is not numeric (uid:gid)"
    assert int(match.group(1)) != 0 and match.group(2) not in (None, "0")


def test_base_images_and_build_tools_are_pinned() -> None:
    for base in of("FROM"):
        image = base.split()[0]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+(-[\w.]+)*", image) or "@sha256:" in image, (
            f"FROM {image}: not an exact version tag"
        )
    installs = " ".join(arguments for arguments in of("RUN") if "maturin" in arguments)
    assert re.search(r"maturin==\d+\.\d+\.\d+", installs), installs
    assert "--locked" in installs, "the crates must come from Cargo.lock"


def test_healthcheck_asks_healthz_on_the_port_the_image_sets() -> None:
    argv = healthcheck_command()
    assert "/healthz" in " ".join(argv)
    env = image_env()
    port = env.get("OXIDIP_HTTP_PORT")
    assert port is not None and port.isdigit(), env
    exposed = " ".join(of("EXPOSE")).split()
    assert port in exposed and "11111" in exposed


def test_documented_stop_timeout_exceeds_the_shutdown_timeout() -> None:
    shutdown = float(image_env()["OXIDIP_SHUTDOWN_TIMEOUT"])
    text = DOCKERFILE.read_text() + README.read_text()
    documented = [
        *re.findall(r"--stop-timeout (\d+)", text),
        *re.findall(r"stop_grace_period: (\d+)s", text),
        *re.findall(r"terminationGracePeriodSeconds: (\d+)", text),
    ]
    assert len(documented) >= 6, "docker, compose and Kubernetes, in the Dockerfile and README"
    for value in documented:
        # Running associations get the shutdown timeout; aborted ones, registration and hooks
        # finish after it: the Dockerfile asks for 15 s more.
        assert float(value) >= shutdown + 15, (value, shutdown)


def test_readme_gives_the_minimum_rust_version_of_cargo_toml() -> None:
    rust_version = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["rust-version"]
    assert f"Rust {rust_version}" in README.read_text()


def run_healthcheck(http_port: int) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK command line as Docker runs it (``python`` found on PATH, here this
    interpreter's), with the image's OXIDIP_HTTP_PORT pointing at the test's server."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OXIDIP_HTTP_PORT"] = str(http_port)
    return subprocess.run(
        healthcheck_command(), env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_healthcheck_command_against_a_running_server(tmp_path: Path) -> None:
    if shutil.which("python", path=str(Path(sys.executable).parent)) is None:
        pytest.fail(f"no `python` beside {sys.executable}: the HEALTHCHECK cannot be run as is")
    env = {"OXIDIP_HTTP_HOST": HOST, "OXIDIP_HTTP_PORT": "0"}
    with Oxidip(tmp_path, env=env) as server:
        port = int(server.process.wait_for_record("http endpoint listening")["port"])
        healthy = run_healthcheck(port)
        assert healthy.returncode == 0, healthy.stderr
        # Not ready (503): the directory every instance starts in cannot take a file.
        temp_dir = tmp_path / ".oxidip-tmp"
        shutil.rmtree(temp_dir)
        temp_dir.write_text("not a directory")
        not_ready = run_healthcheck(port)
        assert not_ready.returncode != 0
        assert "503" in not_ready.stderr, not_ready.stderr
        temp_dir.unlink()
        temp_dir.mkdir()
        assert run_healthcheck(port).returncode == 0
        server.stop()
    stopped = run_healthcheck(port)
    assert stopped.returncode != 0
    assert "Connection refused" in stopped.stderr, stopped.stderr
