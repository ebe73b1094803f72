"""The HTTP endpoint of ``oxidip serve`` (``OXIDIP_HTTP_PORT``): ``GET /healthz`` (200 when
ready, 503 with the reasons when not, a small JSON body either way; see ``oxidip.health``)
and ``GET /metrics`` (Prometheus text format, or OpenMetrics when asked for; see
``oxidip.metrics``).

It runs on the standard library's threading HTTP server: each request on a daemon thread of
its own, never on the thread that takes the receiver's events, so neither a scrape nor a slow
client delays registration; a client silent for ``REQUEST_TIMEOUT`` seconds is dropped.
"""

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec

from oxidip.config import Config
from oxidip.health import CHECK_TIMEOUT, HealthCheck, database_check
from oxidip.pipeline import Pipeline
from oxidip.receiver import Receiver
from oxidip.registry import sqlite_path

if TYPE_CHECKING:
    from oxidip.metrics import MetricsPage

__all__ = ["HttpEndpoint", "open_http_endpoint"]

log = logging.getLogger("oxidip.http")

#: Seconds a client may stay silent while sending its request.
REQUEST_TIMEOUT = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], health: HealthCheck, metrics: "MetricsPage"
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.health = health
        self.metrics = metrics
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        try:
            status, content_type, body = self._route(urlsplit(self.path).path)
        except Exception:
            log.exception("http request failed", extra={"path": self.path})
            status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            health = self.server.health.check()
            return 200 if health.ready else 503, "application/json", msgspec.json.encode(health)
        if path == "/metrics":
            content_type, body = self.server.metrics(self.headers.get("Accept", ""))
            return 200, content_type, body
        return 404, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http request", extra={"peer": self.client_address[0], "line": format % args})


class HttpEndpoint:
    """Bound at construction (OSError when the address is taken), serves after ``start``."""

    def __init__(self, host: str, port: int, health: HealthCheck, metrics: "MetricsPage") -> None:
        try:
            self._server = _Server((host, port), health, metrics)
        except OSError as error:
            raise OSError(error.errno, f"HTTP endpoint {host}:{port}: {error.strerror}") from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="oxidip-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (the real one when configured with 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stops serving (requests being answered finish on their own threads)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def open_http_endpoint(
    config: Config, receiver: Receiver, pipeline: Pipeline
) -> HttpEndpoint | None:
    """The endpoint ``config`` asks for, serving; None when ``OXIDIP_HTTP_PORT`` is empty.
    Raises OSError when its address cannot be bound."""
    if config.http_port is None:
        return None
    # The Prometheus client only when the endpoint is on: ~70 ms and 2 MB of every start.
    from oxidip.metrics import metrics_page

    database = None
    if pipeline.registry is not None:  # None: a register hook replaces the registry
        files_root = config.core().files_root
        database = database_check(config.db_connection, sqlite_path(files_root), CHECK_TIMEOUT)
    health = HealthCheck(receiver, database, max_journal_backlog=config.health_max_journal_backlog)
    endpoint = HttpEndpoint(
        config.http_host, config.http_port, health, metrics_page(receiver, pipeline)
    )
    endpoint.start()
    log.info(
        "http endpoint listening",
        extra={"host": config.http_host, "port": endpoint.port, "paths": "/healthz /metrics"},
    )
    return endpoint
