"""`oxidip serve` with user hooks and NATS: a real nats-server and subscriber see a series'
progress, completion and finalization; a hook that raises is logged with the series it
concerns and costs no registration."""

import json
import textwrap
from pathlib import Path

from oxidip.notify import decode_message, subject_of
from tests.helpers.e2e import Oxidip, RegistryView, make_series, send
from tests.helpers.nats import NatsServer, Subscriber
from tests.helpers.query_scp import QueryScp

SENDER = "MODALITY"

HOOKS = textwrap.dedent(
    """
    import json
    import os

    def _log(kind, uid):
        with open(os.environ["E2E_HOOK_LOG"], "a") as out:
            out.write(json.dumps([kind, uid]) + "\\n")

    def on_instance(event):
        if event.attributes.InstanceNumber == "2":
            raise RuntimeError("hook failure on purpose")
        _log("instance", event.attributes.SOPInstanceUID)

    def on_series_complete(series):
        _log("complete", series.series_instance_uid)

    def on_series_finalized(series):
        _log("finalized", series.series_instance_uid)
    """
)


def test_hooks_and_nats_follow_a_series(tmp_path: Path) -> None:
    series = make_series(5)
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "e2e_hooks.py").write_text(HOOKS)
    hook_log = tmp_path / "hooks.log"
    root = tmp_path / "data"
    with (
        NatsServer() as nats,
        Subscriber(nats.url, "OXIDIP.>") as subscriber,
        QueryScp({series.series_instance_uid: len(series)}) as pacs,
        Oxidip(
            root,
            pacs={SENDER: (pacs.host, pacs.port)},
            env={
                "OXIDIP_HOOKS": "e2e_hooks",
                "PYTHONPATH": str(tmp_path / "hooks"),
                "E2E_HOOK_LOG": str(hook_log),
                "OXIDIP_NATS_ADDRESS": nats.address,
                "OXIDIP_PROGRESS_INTERVAL": "0.1",
            },
        ) as server,
        RegistryView(root, None) as registry,
    ):
        statuses = send(server.port, series.datasets, calling_aet=SENDER)
        assert set(statuses.values()) == {0x0000}
        registry.wait_series(
            lambda rows: (
                rows.get(series.series_instance_uid) is not None
                and rows[series.series_instance_uid].state == "complete"
            ),
            server=server,
        )
        received = subscriber.wait_for(2)  # at least a progress and the completion
        server.stop()
        messages = [decode_message(m.data) for m in subscriber.settle()]
        subjects = {m.subject for m in subscriber.messages}
        errors = server.errors()

    assert subjects == {subject_of("OXIDIP", SENDER, series.series_instance_uid)}, received
    # The association may end before the PACS's count arrives: the series is then finalized
    # (finalized-unknown) first, and complete (then finalized again) once the count is in.
    kinds = [(type(m).__name__.lower(), getattr(m, "state", "")) for m in messages]
    assert kinds[-2:] == [("complete", "complete"), ("finalized", "complete")], kinds
    assert set(kinds[:-2]) <= {("progress", "receiving"), ("finalized", "finalized-unknown")}, kinds
    final = messages[-1]
    assert (final.received, final.expected) == (5, 5)  # type: ignore[union-attr]

    # Every hook ran, in the worker: the failing call is logged with its instance and series,
    # and the other instances, the completion and the finalization still reached the hooks.
    calls = [json.loads(line) for line in hook_log.read_text().splitlines()]
    uids = series.sop_instance_uids
    instances = [call for call in calls if call[0] == "instance"]
    assert instances == [["instance", uid] for uid in uids if uid != uids[1]]
    series_calls = [call for call in calls if call[0] != "instance"]
    assert series_calls[-2:] == [
        ["complete", series.series_instance_uid],
        ["finalized", series.series_instance_uid],
    ]
    assert series_calls[:-2] in ([], [["finalized", series.series_instance_uid]]), calls
    (failure,) = [e for e in errors if e.get("msg") == "hook failed"]
    assert failure["sop_instance_uid"] == uids[1], failure
    assert failure["series_instance_uid"] == series.series_instance_uid, failure
    # The registration did not suffer from it.
    assert registry_counts(root) == {series.series_instance_uid: 5}


def registry_counts(root: Path) -> dict[str, int]:
    with RegistryView(root, None) as registry:
        return {uid: row.received for uid, row in registry.series().items()}
