# syntax=docker/dockerfile:1
# oxidip image: docker build -t oxidip . && docker run -p 11111:11111 -v dicom:/data oxidip

# Stage 1: build the wheel. Same Debian release (bookworm) and Python minor version (3.11) as
# the runtime stage, so the wheel's glibc and CPython ABI match.
FROM rust:1-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir 'maturin>=1.7,<2'
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    /opt/maturin/bin/maturin build --release --interpreter python3 --out /wheels

# Stage 2: runtime.
FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home oxidip \
    && mkdir /data && chown oxidip:oxidip /data
ENV OXIDIP_FILES_ROOT=/data \
    PYTHONDONTWRITEBYTECODE=1
VOLUME /data
EXPOSE 11111
USER oxidip
WORKDIR /data
ENTRYPOINT ["oxidip"]
CMD ["serve"]
