"""The production screening recipe on a phantom CT, with every real step except the trained segmentation model
(replaced by the phantom's true vertebral bodies: the model bundle is produced by the segmentation work and may
be absent here). Checks the wiring end to end: loader -> assessment -> SEG/SR/key image -> worker storage."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import sqlalchemy

from service import __version__
from service.config import Config, PeerSettings
from service.db.queries import record_instance
from service.offline.phantom.api import PhantomSpec, generate, write_phantom
from service.pipeline.screening import ScreeningRecipe
from service.pipeline.types import JobInput
from service.queue import jobs
from service.queue.worker import Worker
from tests.node_support import TruthSegmenter, record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], object]:
    spec = PhantomSpec(seed=11, region="abdomen", slice_thickness_mm=3.0, rows=256, columns=256,
                       pixel_spacing_mm=1.5)
    phantom = generate(spec)
    folder = tmp_path_factory.mktemp("phantom")
    paths = [p for p in write_phantom(phantom, folder) if p.suffix == ".dcm"]
    return sorted(paths), phantom


def test_recipe_builds_valid_result_objects(phantom_series: tuple[list[Path], object], tmp_path: Path,
                                            sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    paths, phantom = phantom_series
    config = Config(peers=(PeerSettings("pacs", "PACS", "127.0.0.1", 104),)).with_node(
        storage_dir=tmp_path / "storage", database_url=sqlite_url)
    recipe = ScreeningRecipe(config, segmenter=TruthSegmenter(phantom.labels))  # type: ignore[attr-defined]
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        record_instance(sqlite_engine, record(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                              study_uid=str(ds.StudyInstanceUID), path=str(p)))
    job_id = jobs.enqueue(sqlite_engine, str(header.SeriesInstanceUID), max_attempts=1)
    assert job_id is not None
    assert Worker(config, sqlite_engine, recipe, worker_id="w").run_once()
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == "succeeded", view.last_error if view else None
    document = json.loads((tmp_path / "storage" / "results" / f"job-{job_id}" / "result.json").read_text())
    assert document["study_instance_uid"] == header.StudyInstanceUID
    assert document["algorithm"]["version"] == __version__  # the step records the node's version
    levels = [v["level"] for v in document["vertebrae"]]
    assert "L1" in levels and "L2" in levels
    truth = phantom.truth["patient"]["bmd_by_level_mg_cm3"]  # type: ignore[attr-defined]
    for v in document["vertebrae"]:
        if v["evaluable"] and v["level"] in ("L1", "L2"):
            assert abs(v["bmd_mg_cm3"] - truth[v["level"]]) < 40, (v, truth[v["level"]])
    kinds = {}
    for path in (tmp_path / "storage" / "results" / f"job-{job_id}").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        kinds[path.name.split("-")[0]] = ds
        assert ds.StudyInstanceUID == header.StudyInstanceUID
    assert set(kinds) == {"seg", "sr", "key_image"}
    assert kinds["seg"].SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"

    # a re-run references the earlier SR as predecessor
    record_instance(sqlite_engine, record(str(header.SeriesInstanceUID), "1.2.826.0.1.3680043.8.498.99.1",
                                          study_uid=str(header.StudyInstanceUID), path=str(paths[0]),
                                          status="rejected"))
    again = recipe.run(JobInput(99, str(header.StudyInstanceUID), str(header.SeriesInstanceUID), tuple(paths),
                                previous=Worker(config, sqlite_engine, recipe)._previous_result(job_id)))
    sr = next(o for o in again.objects if o.kind == "sr")
    sr_ds = pydicom.dcmread(__import__("io").BytesIO(sr.data))
    predecessor = sr_ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == kinds["sr"].SOPInstanceUID


def test_each_source_file_is_parsed_once_per_job(phantom_series: tuple[list[Path], object], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Loader and result objects share one read of each CT file (headers once, pixels released after decoding)."""
    paths, phantom = phantom_series
    config = Config(peers=(PeerSettings("pacs", "PACS", "127.0.0.1", 104),)).with_node(
        storage_dir=tmp_path / "storage")
    recipe = ScreeningRecipe(config, segmenter=TruthSegmenter(phantom.labels))  # type: ignore[attr-defined]
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    parsed: list[str] = []
    real_dcmread = pydicom.dcmread

    def counting_dcmread(fp: object, *args: object, **kwargs: object) -> pydicom.Dataset:
        parsed.append(str(fp))
        return real_dcmread(fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydicom, "dcmread", counting_dcmread)
    output = recipe.run(JobInput(1, str(header.StudyInstanceUID), str(header.SeriesInstanceUID), tuple(paths)))
    assert {o.kind for o in output.objects} == {"seg", "sr", "key_image"}
    source_reads = [p for p in parsed if p in {str(q) for q in paths}]
    assert sorted(source_reads) == sorted(str(p) for p in paths)  # every file exactly once
