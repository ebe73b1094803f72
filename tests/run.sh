#!/usr/bin/env bash
# Runs every check and test of oxidip: bash tests/run.sh [extra pytest arguments]
#
# From any directory; works on a fresh clone (creates .venv). Always rebuilds the extension
# (release, as shipped) before pytest, so tests never run a stale build; cargo makes that
# quick when nothing changed. The micro-benchmarks (bench/micro) run once each, untimed;
# BENCHMARKS=1 times them.
# Stops at the first failing step and says which.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PYTHON=${PYTHON:-python3}

STARTED=$EPOCHREALTIME
declare -a TIMINGS=()

elapsed() { # seconds since $1 (an $EPOCHREALTIME), one decimal
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

fail() {
    echo "tests/run.sh: FAILED: $*" >&2
    exit 1
}

# step NAME COMMAND...: runs COMMAND, timing it; stops everything when it fails.
step() {
    local name=$1 start=$EPOCHREALTIME status=0
    shift
    echo "==> $name: $*"
    "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "tests/run.sh: FAILED at step '$name' (exit status $status): $*" >&2
        exit "$status"
    fi
    TIMINGS+=("$(printf '%-28s %7ss' "$name" "$(elapsed "$start")")")
}

command -v cargo >/dev/null || fail "cargo not found: install Rust (https://rustup.rs)"
cargo fmt --version >/dev/null 2>&1 || fail "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || fail "clippy missing: rustup component add clippy"

if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PYTHON" >/dev/null || fail "$PYTHON not found (Python 3.11+ needed)"
    step "create .venv" "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail ".venv has Python $("$VENV/bin/python" -V 2>&1); 3.11+ needed (remove .venv to recreate)"
# The build and lint tools, so the quick checks can run before the (slow) build, which
# installs the rest of the test extras.
if [ ! -x "$VENV/bin/maturin" ] || [ ! -x "$VENV/bin/ruff" ] || [ ! -x "$VENV/bin/mypy" ]; then
    step "install build tools" "$VENV/bin/python" -m pip install --quiet 'maturin>=1.7,<2' \
        'ruff>=0.6' 'mypy>=1.11'
fi

export VIRTUAL_ENV=$VENV
# Last in PATH, even when the venv is activated: pynetdicom installs its own storescu,
# echoscu, findscu, ... into .venv/bin, which must not shadow dcmtk's that the tests run.
PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$VENV/bin" | paste -sd: -)
export PATH=$PATH:$VENV/bin
# pyo3's build script (clippy --features python, maturin) must see the venv's interpreter,
# always the same one, or cargo rebuilds pyo3 on every switch.
export PYO3_PYTHON=$VENV/bin/python

# Quick checks first, then the slow ones.
step "cargo fmt" cargo fmt --check
step "ruff check" "$VENV/bin/ruff" check
step "ruff format" "$VENV/bin/ruff" format --check
# The package as its users type-check it (it ships py.typed); _core's stub, _core.pyi, is
# held against the built extension by stubtest below.
step "mypy --strict" "$VENV/bin/mypy" --strict python/oxidip
step "clippy" cargo clippy --all-targets -- -D warnings
# With the python feature pyo3 builds an extension module (no libpython to link against), so
# it is linted here but tested only through pytest below.
step "clippy (python feature)" cargo clippy --all-targets --features python -- -D warnings
step "cargo test" cargo test
# Installs oxidip into .venv (editable: python/ is used in place) with the test extras.
step "build extension" "$VENV/bin/maturin" develop --release --extras test
# _core.pyi exactly as the extension is: every name, signature and type (no allowlist).
step "stubtest oxidip._core" "$VENV/bin/python" -m mypy.stubtest oxidip._core

pytest_args=(-p no:cacheprovider)
status=0
start=$EPOCHREALTIME
echo "==> pytest: python -m pytest ${pytest_args[*]} $*"
"$VENV/bin/python" -m pytest "${pytest_args[@]}" "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: FAILED at step 'pytest': no tests were collected" >&2
    exit 5
elif [ "$status" -ne 0 ]; then
    echo "tests/run.sh: FAILED at step 'pytest' (exit status $status)" >&2
    exit "$status"
fi
TIMINGS+=("$(printf '%-28s %7ss' pytest "$(elapsed "$start")")")

# The micro-benchmarks (bench/micro, outside the tests' testpaths): each run once, untimed, so
# that they keep working; with BENCHMARKS=1, timed (pytest-benchmark's table).
if [ "${BENCHMARKS:-0}" = 1 ]; then
    step "micro-benchmarks" "$VENV/bin/python" -m pytest -p no:cacheprovider bench/micro --benchmark-only
else
    step "micro-benchmarks (short)" "$VENV/bin/python" -m pytest -p no:cacheprovider -q bench/micro --benchmark-disable
fi

echo
echo "timings:"
printf '  %s\n' "${TIMINGS[@]}"
echo "tests/run.sh: all steps passed in $(elapsed "$STARTED")s"
