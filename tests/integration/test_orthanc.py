"""The node with a real Orthanc as its PACS.

Orthanc auto-routes stable CT series to the node (Lua ``OnStableSeries``); the node receives them over C-STORE and
records them; result objects the node's exporter sends land in the same study in Orthanc (checked via REST).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.config import Config
from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Instance
from service.export.cstore_scu import echo
from service.export.exporter import export_once
from service.receive.scp import start_scp
from tests.integration.dicom_net_support import (
    dataset_bytes,
    make_secondary_capture,
    node_config,
    write_series,
)
from tests.integration.orthanc import OrthancServer
from tests.integration.outbox_support import enqueue_result_exports, export_rows
from tests.support.net import free_port

pytestmark = pytest.mark.integration


@dataclass
class Site:
    config: Config
    engine: sqlalchemy.Engine
    orthanc: OrthancServer

    def stored_instances(self) -> list[Instance]:
        with read_session(self.engine) as session:
            return list(session.scalars(select(Instance).where(Instance.status == "stored")))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    node_port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", node_ae_title="BMDNODE", node_port=node_port, stable_age_s=2)
    config = node_config(
        tmp_path / "node",
        port=node_port,
        peers=[{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}],
    )
    Path(config.node.storage_dir).parent.mkdir(parents=True, exist_ok=True)
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    server = start_scp(config, engine)
    try:
        with orthanc:
            yield Site(config, engine, orthanc)
    finally:
        server.shutdown()
        engine.dispose()


def test_orthanc_routes_stable_ct_series_to_the_node_and_results_come_back(site: Site, tmp_path: Path) -> None:
    assert echo(site.config.peers[0], site.config), "node -> Orthanc C-ECHO failed"

    study = generate_uid()
    ct = write_series(tmp_path / "ct", 6, study_instance_uid=study)
    other = make_secondary_capture(study, tmp_path / "other")  # not CT: the Lua script does not forward it
    for path in [*ct, other]:
        site.orthanc.upload(path)

    deadline = time.monotonic() + 60
    while len(site.stored_instances()) < len(ct) and time.monotonic() < deadline:
        time.sleep(0.25)
    rows = site.stored_instances()
    assert len(rows) == len(ct), f"node received {len(rows)} of {len(ct)} CT instances; {site.orthanc.log_tail()}"
    assert {r.calling_ae_title for r in rows} == {"ORTHANC"}
    assert {r.study_instance_uid for r in rows} == {study}
    by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in ct}
    assert sorted(by_uid) == sorted(r.sop_instance_uid for r in rows)
    for row in rows:
        assert dataset_bytes(Path(str(row.path))) == dataset_bytes(by_uid[row.sop_instance_uid])
    with read_session(site.engine) as session:
        assert session.scalar(select(Instance).where(Instance.modality != "CT")) is None

    # Results go back into the same study.
    results = [make_secondary_capture(study, tmp_path / "results", f"result{i}.dcm") for i in range(2)]
    enqueue_result_exports(site.engine, results, ["orthanc"])
    assert export_once(site.config, site.engine) == {"sent": 2}
    assert [r.status for r in export_rows(site.engine)] == ["sent", "sent"]

    in_orthanc = site.orthanc.instances_in_study(study)
    result_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in results}
    assert result_uids <= {i["SOPInstanceUID"] for i in in_orthanc}
    assert len(in_orthanc) == len(ct) + 1 + len(results)  # nothing duplicated
