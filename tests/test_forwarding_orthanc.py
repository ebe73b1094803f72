"""Orthanc as a forwarding destination: every instance of every series is there, as its
REST API lists them."""

from pathlib import Path

from tests.helpers.e2e import Oxidip, make_series, send
from tests.helpers.forwarding import all_done, destination, forward_env, wait_jobs, write_routes
from tests.helpers.orthanc import OrthancServer

SENDER = "MODALITY"


def test_series_forwarded_to_orthanc(tmp_path: Path) -> None:
    series = [make_series(count, patient_id="TO-ORTHANC") for count in (2, 5)]
    root = tmp_path / "storage"
    with OrthancServer(tmp_path / "orthanc") as orthanc:
        routes = write_routes(
            tmp_path / "routes.toml",
            {"pacs": destination(orthanc.aet, orthanc.dicom_port)},
            [{"name": "to-pacs", "on": "series-finalized", "incomplete": "send", "to": ["pacs"]}],
        )
        with Oxidip(root, env=forward_env(routes)) as server:
            for s in series:
                assert set(send(server.port, s.datasets, calling_aet=SENDER).values()) == {0}
            wait_jobs(root, None, all_done(len(series)), log=server.output)
            server.stop()

        by_uid = orthanc.series_by_uid()
        for s in series:
            assert s.series_instance_uid in by_uid, orthanc.log_tail()
            instances = orthanc.get(f"/series/{by_uid[s.series_instance_uid]['ID']}/instances")
            assert sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances) == sorted(
                s.sop_instance_uids
            )
