"""``REGISTER_MODE = "replace"`` (issue 9, item 15): the register hook replaces oxidip's
database, where series states live, so the series hooks, NATS series messages and the
expected-count C-FINDs do nothing, and nothing is forwarded (the queue lives there too).
``oxidip serve`` says so at start (a WARNING naming those
that are configured) instead of silently turning them off; with none of them configured, an
INFO line says series states are not tracked."""

import textwrap
from pathlib import Path

from tests.helpers.e2e import Oxidip, make_series, send
from tests.helpers.forwarding import destination, write_routes
from tests.helpers.nats import NatsServer
from tests.helpers.query_scp import QueryScp

HOOKS = textwrap.dedent(
    """
    REGISTER_MODE = "replace"

    def register(instances):
        pass

    def on_series_complete(series):
        pass

    def on_series_finalized(series):
        pass

    def on_forwarded(job):
        pass
    """
)

ONLY_REGISTER = textwrap.dedent(
    """
    REGISTER_MODE = "replace"

    def register(instances):
        pass
    """
)


def hooks_env(tmp_path: Path, source: str) -> dict[str, str]:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "replace_hooks.py").write_text(source)
    return {"OXIDIP_HOOKS": "replace_hooks", "PYTHONPATH": str(tmp_path / "hooks")}


def test_replace_mode_names_what_is_off(tmp_path: Path) -> None:
    env = hooks_env(tmp_path, HOOKS)
    with NatsServer() as nats, QueryScp({}) as pacs:
        env["OXIDIP_NATS_ADDRESS"] = nats.address
        routes = {"archive": destination("ARCHIVE", pacs.port)}
        rules = [{"name": "all", "on": "series-finalized", "to": ["archive"]}]
        env["OXIDIP_ROUTES"] = str(write_routes(tmp_path / "routes.toml", routes, rules))
        with Oxidip(
            tmp_path / "data", pacs={"MODALITY": (pacs.host, pacs.port)}, env=env
        ) as server:
            [record] = [
                r for r in server.process.records() if r["msg"] == "series states are not tracked"
            ]
            assert record["level"] == "WARNING"
            off = str(record["off"])
            for what in (
                "on_series_complete",
                "on_series_finalized",
                "on_forwarded",
                "OXIDIP_NATS_ADDRESS",
                "OXIDIP_PACS_ADDRESS",
                "OXIDIP_ROUTES",
            ):
                assert what in off, off
            assert "REGISTER_MODE" in str(record["why"])
            # Receiving works as before: the hook registers.
            series = make_series(2)
            assert set(send(server.port, series.datasets, calling_aet="MODALITY").values()) == {0}
            server.stop()


def test_replace_mode_with_nothing_that_needs_series_states(tmp_path: Path) -> None:
    with Oxidip(tmp_path / "data", env=hooks_env(tmp_path, ONLY_REGISTER)) as server:
        [record] = [
            r for r in server.process.records() if r["msg"] == "series states are not tracked"
        ]
        assert record["level"] == "INFO"
        assert "off" not in record
        server.stop()
