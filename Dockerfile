# syntax=docker/dockerfile:1
# oxidip image:
#   docker build -t oxidip .
#   docker run -p 11111:11111 -p 8080:8080 -v oxidip-data:/data --stop-timeout 45 oxidip
#
# Stopping: on SIGTERM oxidip stops accepting, lets running associations finish for
# OXIDIP_SHUTDOWN_TIMEOUT seconds (30, set below), aborts the rest, then finishes registering
# and running hooks. The container runtime must wait longer than that before it kills the
# process: stop timeout 45 s, i.e. `docker run/stop --stop-timeout 45` (Docker's default is
# 10 s), `stop_grace_period: 45s` in compose, `terminationGracePeriodSeconds: 45` in Kubernetes
# (default 30). Lower OXIDIP_SHUTDOWN_TIMEOUT and the stop timeout together, keeping 15 s
# between them.
#
# Versions are pinned: base images by exact tag, maturin by version, the Rust crates by
# Cargo.lock (--locked). The build image's Rust is the toolchain the tests run with; the
# minimum Rust version is rust-version in Cargo.toml.

# Stage 1: build the wheel. Same Debian release (bookworm) and Python minor version (3.11) as
# the runtime stage, so the wheel's glibc and CPython ABI match.
FROM rust:1.95.0-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir 'maturin==1.16.0'
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    /opt/maturin/bin/maturin build --release --locked --interpreter python3 --out /wheels

# Stage 2: runtime, as a numeric non-root user (Kubernetes' runAsNonRoot can check a number,
# not a name).
FROM python:3.11.13-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && groupadd --system --gid 10001 oxidip \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home oxidip \
    && mkdir /data && chown 10001:10001 /data
ENV OXIDIP_FILES_ROOT=/data \
    OXIDIP_HTTP_PORT=8080 \
    OXIDIP_SHUTDOWN_TIMEOUT=30 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME /data
EXPOSE 11111 8080
USER 10001:10001
WORKDIR /data
# The slim image has no curl. 503 (not ready) makes urlopen raise: exit status 1, as for no
# answer. The start period covers the replay of a dead process's journal before listening.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['OXIDIP_HTTP_PORT'], timeout=4).status == 200 else 1)"]
ENTRYPOINT ["oxidip"]
CMD ["serve"]
