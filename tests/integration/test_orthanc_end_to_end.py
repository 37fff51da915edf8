"""End to end: a CT series stored into a real Orthanc ends with the SR, SEG and key image in the same study.

Orthanc (Lua ``OnStableSeries``) forwards the stable CT series to ``bmd-node serve`` (a subprocess with a TOML
config: SCP, scheduler, worker, exporter); the node runs the screening pipeline and its exporter C-STOREs the result
objects back; the test finds each of them in the study through Orthanc's REST API, exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.db.engine import make_engine, read_session
from service.db.tables import Export, Job, ResultObject
from service.domain.levels import VertebraLevel
from service.offline.phantom.api import PhantomSpec, generate, write_phantom
from tests.integration.dicom_net_support import write_series
from tests.integration.orthanc import OrthancServer
from tests.support.net import free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_KINDS = {"sr", "seg", "key_image"}
END_TO_END_TIMEOUT_S = 420.0
# SOP classes expected in Orthanc for the results (PS3.4 B.5): SEG and an SR (Enhanced/Comprehensive/3D).
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SR_STORAGE_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
                      "1.2.840.10008.5.1.4.1.1.88.34"}


def _bmd_node_command() -> list[str]:
    script = Path(sys.executable).parent / "bmd-node"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service"]


def _write_config(path: Path, *, work: Path, node_port: int, http_port: int, orthanc: OrthancServer) -> Path:
    path.write_text(f"""
[node]
ae_title = "BMDNODE"
host = "127.0.0.1"
port = {node_port}
http_port = {http_port}
storage_dir = "{work / 'storage'}"
database_url = "sqlite:///{work / 'node.db'}"
series_stable_seconds = 2

[[peers]]
name = "orthanc"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
send_results = true

[worker]
processes = 1

[exporter]
poll_seconds = 0.5
backoff_initial_seconds = 1.0
""")
    return path


@contextmanager
def running_site(tmp_path: Path, pipeline: str | None = None) -> Iterator[tuple[OrthancServer, Path,
                                                                              subprocess.Popen[bytes]]]:
    node_port, http_port = free_port(), free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", node_ae_title="BMDNODE", node_port=node_port, stable_age_s=2)
    work = tmp_path / "node"
    work.mkdir()
    config = _write_config(tmp_path / "bmd-node.toml", work=work, node_port=node_port, http_port=http_port,
                           orthanc=orthanc)
    env = {**os.environ, "TCP_NODELAY": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "BMD_NODE_CONFIG": str(config)}
    env.pop("BMD_NODE_NODE__PORT", None)
    subprocess.run([*_bmd_node_command(), "--config", str(config), "db", "upgrade"], check=True, env=env,
                   cwd=REPO_ROOT, capture_output=True, timeout=120)
    log = (tmp_path / "serve.log").open("wb")
    extra = ["--pipeline", pipeline] if pipeline else []
    node = subprocess.Popen([*_bmd_node_command(), "--config", str(config), "serve", *extra], env=env,
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(node_port, timeout_s=60)
        with orthanc:
            yield orthanc, work, node
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def _phantom_series(out_dir: Path) -> tuple[str, list[Path]]:
    spec = PhantomSpec(seed=11, region="abdomen", rows=256, columns=256, pixel_spacing_mm=1.4,
                       slice_thickness_mm=2.5, fov_top_level=VertebraLevel.T11, fov_bottom_level=VertebraLevel.L3)
    paths = write_phantom(generate(spec), out_dir)
    dicom = sorted(p for p in paths if p.suffix == ".dcm")
    study = str(dcmread(dicom[0], stop_before_pixels=True).StudyInstanceUID)
    return study, dicom


def _wait_for_results(engine: Any, node: subprocess.Popen[bytes], study: str, kinds: set[str],
                      log_path: Path) -> list[ResultObject]:
    deadline = time.monotonic() + END_TO_END_TIMEOUT_S
    sent: list[ResultObject] = []
    while time.monotonic() < deadline:
        assert node.poll() is None, f"bmd-node serve exited with {node.returncode}"
        with read_session(engine) as session:
            jobs = list(session.scalars(select(Job)))
            failed = [j for j in jobs if j.status in ("failed", "dead")]
            assert not failed, f"job ended {failed[0].status}: {failed[0].last_error}"
            sent = list(session.scalars(
                select(ResultObject).join(Export, Export.result_object_id == ResultObject.id)
                .where(Export.status == "sent", ResultObject.study_instance_uid == study)))
        if {o.kind for o in sent} >= kinds:
            return sent
        time.sleep(1.0)
    raise AssertionError(f"results not all sent within {END_TO_END_TIMEOUT_S} s: {sorted(o.kind for o in sent)}; "
                         f"log: {log_path.read_text(errors='replace')[-3000:]}")


def _assert_in_orthanc_once(orthanc: OrthancServer, study: str, sent: list[ResultObject], n_ct: int) -> set[str]:
    in_orthanc = orthanc.instances_in_study(study)
    by_uid: dict[str, int] = {}
    for item in in_orthanc:
        by_uid[str(item["SOPInstanceUID"])] = by_uid.get(str(item["SOPInstanceUID"]), 0) + 1
    for obj in sent:
        assert by_uid.get(obj.sop_instance_uid) == 1, f"{obj.kind} {obj.sop_instance_uid} not once in Orthanc"
    assert len(in_orthanc) == n_ct + len(sent)
    return {str(i["SOPClassUID"]) for i in in_orthanc}


def test_ct_into_orthanc_comes_back_with_sr_seg_and_key_image(tmp_path: Path) -> None:
    bundle = REPO_ROOT / "models" / "vertebra_seg" / "configs" / "metadata.json"
    if not bundle.is_file():
        pytest.fail(f"segmentation model bundle missing ({bundle}); build it with `make train-segmentation`")
    with running_site(tmp_path) as (orthanc, work, node):
        study, ct_files = _phantom_series(tmp_path / "phantom")
        for path in ct_files:
            orthanc.upload(path)
        engine = make_engine(f"sqlite:///{work / 'node.db'}")
        try:
            sent = _wait_for_results(engine, node, study, RESULT_KINDS, tmp_path / "serve.log")
            classes = _assert_in_orthanc_once(orthanc, study, sent, len(ct_files))
        finally:
            engine.dispose()
    assert SEGMENTATION_STORAGE in classes
    assert classes & SR_STORAGE_CLASSES


def test_full_loop_with_the_test_pipeline(tmp_path: Path) -> None:
    """The same loop with the node-core test pipeline (SR-class + SC object, no model needed): every real part
    except segmentation/measurement (Orthanc routing, SCP, scheduler, worker process, outbox, exporter)."""
    with running_site(tmp_path, pipeline="tests.node_support:make_mean_hu_pipeline") as (orthanc, work, node):
        study = generate_uid()
        ct_files = write_series(tmp_path / "ct", 24, study_instance_uid=study)
        for path in ct_files:
            orthanc.upload(path)
        engine = make_engine(f"sqlite:///{work / 'node.db'}")
        try:
            sent = _wait_for_results(engine, node, study, {"sr", "key_image"}, tmp_path / "serve.log")
            _assert_in_orthanc_once(orthanc, study, sent, len(ct_files))
        finally:
            engine.dispose()
