"""Every refusal reaches the log of a real ``oxidip serve``, with the peer and the reason: an
association rejected for its called or calling AE title (WARNING), presentation contexts
refused (one line per association: INFO, WARNING when nothing was accepted), a connection
refused over the association limit (WARNING)."""

from pathlib import Path

from tests.helpers.pdu import (
    CT_IMAGE,
    EXPLICIT_LE,
    VERIFICATION,
    AssociateRj,
    Context,
    RawClient,
)
from tests.helpers.process import ServerProcess
from tests.helpers.tools import run_dcmtk

HOST = "127.0.0.1"
UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.10.1234.77.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _env(root: Path, **extra: object) -> dict[str, str]:
    env = {
        "OXIDIP_LISTENER_HOST": HOST,
        "OXIDIP_LISTENER_PORT": "0",
        "OXIDIP_FILES_ROOT": str(root),
        "OXIDIP_LOG_FORMAT": "json",
        "OXIDIP_LOG_LEVEL": "INFO",
        "OXIDIP_SHUTDOWN_TIMEOUT": "1",
    }
    env.update({f"OXIDIP_{key}": str(value) for key, value in extra.items()})
    return env


def _peer(client: RawClient) -> str:
    host, port = client.sock.getsockname()
    return f"{host}:{port}"


def test_ae_title_rejections_are_warnings_with_the_peer_and_why(tmp_path: Path) -> None:
    env = _env(tmp_path, SCP_ENFORCE_AET="true", ALLOWED_CALLING_AETS="PACS")
    with ServerProcess(env) as server:
        port = server.wait_listening()
        wrong_called = run_dcmtk(["echoscu", "-aet", "PACS", "-aec", "WRONG", HOST, str(port)])
        assert wrong_called.returncode != 0
        record = server.wait_for_record("association rejected", called_aet="WRONG")
        assert record["level"] == "WARNING"
        assert record["peer"].startswith(f"{HOST}:"), record
        assert record["calling_aet"] == "PACS"
        assert 'called AE title "WRONG" not recognized (ours is "OXIDIP")' in record["reason"]

        intruder = run_dcmtk(["echoscu", "-aet", "INTRUDER", "-aec", "OXIDIP", HOST, str(port)])
        assert intruder.returncode != 0
        record = server.wait_for_record("association rejected", calling_aet="INTRUDER")
        assert record["level"] == "WARNING"
        assert 'calling AE title "INTRUDER" not among the allowed' in record["reason"]
        assert server.terminate() == 0, server.output()


def test_refused_presentation_contexts_are_one_line_per_association(tmp_path: Path) -> None:
    with ServerProcess(_env(tmp_path, SCP_UNCOMPRESSED_ONLY="true")) as server:
        port = server.wait_listening()
        with RawClient(HOST, port) as client:
            ac = client.associate_ok(
                contexts=[
                    Context(1, UNKNOWN_SOP_CLASS),
                    Context(3, CT_IMAGE, [JPEG_BASELINE]),
                    Context(5, VERIFICATION),
                ]
            )
            assert [ac.contexts[i].result for i in (1, 3, 5)] == [3, 4, 0]
            partly = _peer(client)
            client.release()
        with RawClient(HOST, port) as client:
            client.associate_ok(contexts=[Context(1, UNKNOWN_SOP_CLASS)])
            nothing = _peer(client)
            client.release()
        record = server.wait_for_record("presentation contexts refused", peer=partly)
        assert record["level"] == "INFO" and record["accepted"] == 1, record
        assert record["refused"] == (
            f"1: {UNKNOWN_SOP_CLASS} (abstract syntax not supported;"
            f" proposed {EXPLICIT_LE}, 1.2.840.10008.1.2);"
            f" 3: {CT_IMAGE} (transfer syntaxes not supported; proposed {JPEG_BASELINE})"
        )
        record = server.wait_for_record("presentation contexts refused", peer=nothing)
        assert record["level"] == "WARNING" and record["accepted"] == 0, record
        assert len([r for r in server.records() if r.get("msg") == record["msg"]]) == 2
        assert server.terminate() == 0, server.output()


def test_a_refusal_over_the_association_limit_is_a_warning_with_the_peer(tmp_path: Path) -> None:
    with ServerProcess(_env(tmp_path, MAX_ASSOCIATIONS=1)) as server:
        port = server.wait_listening()
        with RawClient(HOST, port) as holder, RawClient(HOST, port) as late:
            holder.associate_ok()
            answer = late.associate(calling="LATECOMER")
            assert isinstance(answer, AssociateRj), answer
            assert (answer.result, answer.source, answer.reason) == (2, 3, 2)
            record = server.wait_for_record("association refused", peer=_peer(late))
            holder.release()
        assert record["level"] == "WARNING"
        assert (record["reason"], record["calling_aet"]) == ("over-limit", "LATECOMER")
        assert "OXIDIP_MAX_ASSOCIATIONS" in record["detail"]
        assert server.terminate() == 0, server.output()
