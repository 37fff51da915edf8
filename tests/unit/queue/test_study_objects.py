"""Objects of a study that are not the input, and which studies the node screens at all (issue 17).

One study arrives through the real C-STORE handler: the CT series, a localizer, a dose report, a secondary capture
(dose screen) and the node's own SR, SEG and key image coming back from the PACS. Only the CT series is queued;
every other object ends ignored with its reason, and ``bmd-node series list`` shows each decision with its reason.
A HEAD CT is left alone; a CT that names no body part is screened.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pytest
import sqlalchemy
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)

from service.cli.jobs import cmd_series_list
from service.db.queries import list_series, record_instance
from service.db.tables import utcnow
from service.domain.status import SeriesStatus
from service.queue.scheduler import LOCALIZER_REASON, not_screened_reason
from service.receive.handlers import NODE_MANUFACTURER, STATUS_SUCCESS, StoreHandler
from service.receive.spool import Spool
from service.series.body_part import body_part_decision
from tests.node_support import quiet_scheduler
from tests.shared_data import shared_case
from tests.support import ct_series
from tests.support.store_event import store_event


def _ct_series(folder: Path, study_uid: str, *, n_slices: int = 12, **extra: Any) -> list[Path]:
    frames = (np.full((8, 8), 1064, dtype=np.int16) for _ in range(n_slices))
    header = ct_series.CTSeriesHeader(study_instance_uid=study_uid, extra={"ConvolutionKernel": "B30f", **extra})
    return ct_series.write_ct_series(folder, frames, header)


def _object(study_uid: str, sop_class: str, modality: str, **attributes: Any) -> bytes:
    """A non-CT object of the study (header only: the handler reads no more)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, generate_uid(), modality
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _event(encoded: bytes) -> SimpleNamespace:
    return store_event(encoded, "PACS")


def _receive(engine: sqlalchemy.Engine, tmp_path: Path, objects: list[bytes], when: datetime) -> dict[str, str]:
    """Send each object through the real handler; SeriesInstanceUID -> what the test calls it is the caller's."""
    handler = StoreHandler(Spool(tmp_path / "storage"), lambda row: record_instance(engine, row, now=when))
    series: dict[str, str] = {}
    for encoded in objects:
        assert handler(_event(encoded)) == STATUS_SUCCESS
        header = pydicom.dcmread(BytesIO(encoded), stop_before_pixels=True)
        series[str(header.SeriesInstanceUID)] = str(header.SOPClassUID)
    return series




def _series_uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def _uid_of(encoded: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(encoded), stop_before_pixels=True).SeriesInstanceUID)


def test_only_the_ct_series_of_a_study_is_queued_and_every_other_object_has_its_reason(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    ct = _ct_series(tmp_path / "ct", study, SeriesDescription="Abdomen 2mm")
    scout = _ct_series(tmp_path / "scout", study, n_slices=2, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    dose_sr = _object(study, XRayRadiationDoseSRStorage, "SR", Manufacturer="SIEMENS")
    dose_screen = _object(study, SecondaryCaptureImageStorage, "CT", Manufacturer="SIEMENS")
    own_sr = _object(study, Comprehensive3DSRStorage, "SR", Manufacturer=NODE_MANUFACTURER, SeriesNumber=9802)
    own_key_image = _object(study, SecondaryCaptureImageStorage, "OT", Manufacturer=NODE_MANUFACTURER,
                            SeriesNumber=9803)
    contributor = Dataset()
    contributor.Manufacturer = NODE_MANUFACTURER
    own_seg = _object(study, SegmentationStorage, "SEG", Manufacturer="archive rewrote this",
                      ContributingEquipmentSequence=[contributor])  # recognised by its contributing equipment
    _receive(sqlite_engine, tmp_path, [p.read_bytes() for p in ct + scout]
             + [dose_sr, dose_screen, own_sr, own_key_image, own_seg], t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.rejected == () and tick.not_selected == ()
    assert tick.ignored == (_series_uid(scout),)
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[_series_uid(ct)].status == SeriesStatus.QUEUED
    expected = {
        _series_uid(scout): LOCALIZER_REASON,
        _uid_of(dose_sr): "radiation dose report (X-Ray Radiation Dose SR Storage): not CT",
        _uid_of(dose_screen): "secondary capture (Secondary Capture Image Storage, e.g. a dose screen): not CT",
        _uid_of(own_sr): "the node's own result object (Comprehensive 3D SR Storage) coming back",
        _uid_of(own_key_image): "the node's own result object (Secondary Capture Image Storage) coming back",
        _uid_of(own_seg): "the node's own result object (Segmentation Storage) coming back",
    }
    for uid, reason in expected.items():
        assert rows[uid].status == SeriesStatus.IGNORED, uid
        assert (rows[uid].reason or "").startswith(reason), rows[uid].reason
    stored = [str(p) for p in (tmp_path / "storage").rglob("*.dcm")]
    assert len(stored) == len(ct) + len(scout)  # the other objects are recorded, never stored
    assert not any(_uid_of(o) in p for o in (dose_sr, dose_screen, own_sr, own_key_image, own_seg) for p in stored)


def test_series_list_shows_status_and_reason(tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    study, t0 = generate_uid(), utcnow()
    ct = _ct_series(tmp_path / "ct", study)
    scout = _ct_series(tmp_path / "scout", study, n_slices=2, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    dose_sr = _object(study, XRayRadiationDoseSRStorage, "SR")
    _receive(sqlite_engine, tmp_path, [p.read_bytes() for p in ct + scout] + [dose_sr], t0)
    quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))
    monkeypatch.setenv("BMD_NODE_NODE__DATABASE_URL", sqlite_url)
    monkeypatch.delenv("BMD_NODE_CONFIG", raising=False)

    assert cmd_series_list(argparse.Namespace(config=None, limit=100)) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["series", "modality", "instances", "status"] and "reason" in lines[0]
    by_series = {line.split()[0]: line for line in lines[1:]}
    assert " queued " in by_series[_series_uid(ct)]
    assert " ignored " in by_series[_series_uid(scout)] and by_series[_series_uid(scout)].endswith(LOCALIZER_REASON)
    assert " ignored " in by_series[_uid_of(dose_sr)] and "radiation dose report" in by_series[_uid_of(dose_sr)]


@pytest.mark.parametrize(
    ("attributes", "body_part"),
    [
        ({"BodyPartExamined": "HEAD"}, "HEAD"),
        ({"StudyDescription": "CT Schädel nativ"}, "SCHADEL"),
        ({"SeriesDescription": "Knie links 1mm"}, "KNIE"),
    ],
)
def test_a_head_or_limb_ct_is_not_queued_and_says_why(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str, attributes: dict[str, Any],
        body_part: str) -> None:
    study, t0 = generate_uid(), utcnow()
    paths = _ct_series(tmp_path / "head", study, **attributes)
    _receive(sqlite_engine, tmp_path, [p.read_bytes() for p in paths], t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert tick.enqueued == () and tick.ignored == (_series_uid(paths),)
    (row,) = list_series(sqlite_engine)
    assert row.status == SeriesStatus.IGNORED
    assert (row.reason or "").startswith(f"body part {body_part} is not chest/abdomen/spine (rule: ")


def test_a_ct_naming_no_body_part_is_queued(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                            sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    paths = _ct_series(tmp_path / "ct", study, SeriesDescription="Routine 5mm", StudyDescription="CT nativ")
    _receive(sqlite_engine, tmp_path, [p.read_bytes() for p in paths], t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.ignored == ()
    assert list_series(sqlite_engine)[0].status == SeriesStatus.QUEUED


def test_a_head_series_of_a_whole_body_study_is_left_alone_and_the_trunk_series_queued(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    head = _ct_series(tmp_path / "head", study, SeriesDescription="Kopf 2mm", StudyDescription="Polytrauma")
    trunk = _ct_series(tmp_path / "trunk", study, SeriesDescription="Thorax/Abdomen 2mm",
                       StudyDescription="Polytrauma")
    _receive(sqlite_engine, tmp_path, [p.read_bytes() for p in head + trunk], t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.ignored == (_series_uid(head),)
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[_series_uid(trunk)].status == SeriesStatus.QUEUED


@pytest.mark.parametrize(
    ("attributes", "screened"),
    [
        ({"BodyPartExamined": "CHEST"}, True),
        ({"BodyPartExamined": "CHESTABDPELVIS"}, True),
        ({"BodyPartExamined": "LSPINE"}, True),
        ({"SeriesDescription": "Thorax-Abdomen 5mm"}, True),
        ({"StudyDescription": "CT TAP injecté"}, True),
        ({"StudyDescription": "TC torace addome"}, True),
        ({"SeriesDescription": "Whole Body 3mm"}, True),
        ({"StudyDescription": "HEAD NECK CHEST"}, True),  # a trunk word wins: the chest holds thoracic vertebrae
        ({"SeriesDescription": "Calcium score"}, True),
        ({}, True),  # unknown: screened, the segmentation finds vertebrae or not
        ({"SeriesDescription": "Soft 5mm"}, True),
        ({"BodyPartExamined": "BRAIN"}, False),
        ({"BodyPartExamined": "NECK"}, False),
        ({"SeriesDescription": "HWS 1mm"}, False),
        ({"StudyDescription": "TC cabeza sin contraste"}, False),
        ({"StudyDescription": "TDM crâne"}, False),
        ({"ProtocolName": "EXTREMITY"}, False),
        ({"SeriesDescription": "Head 5mm", "StudyDescription": "Chest abdomen"}, False),  # the series decides first
        ({"SeriesDescription": "5mm", "StudyDescription": "CT Kopf"}, False),  # the study when the series is silent
    ],
)
def test_body_part_rule(attributes: dict[str, str], screened: bool) -> None:
    header = Dataset()
    for keyword, value in attributes.items():
        setattr(header, keyword, value)
    decision = body_part_decision(header)
    assert decision.screened is screened, decision
    if not screened:
        assert decision.body_part and decision.body_part in decision.reason


def test_a_series_ignored_on_arrival_records_the_reason_of_its_first_instance(
        sqlite_engine: sqlalchemy.Engine) -> None:
    study, t0 = generate_uid(), utcnow()
    dose_sr = _object(study, XRayRadiationDoseSRStorage, "SR")
    handler = StoreHandler(Spool(Path("/nonexistent-spool")), lambda row: record_instance(sqlite_engine, row, now=t0))
    assert handler(_event(dose_sr)) == STATUS_SUCCESS  # nothing is written to the spool
    (row,) = list_series(sqlite_engine)
    assert row.status == SeriesStatus.IGNORED and (row.reason or "").startswith("radiation dose report")


@pytest.mark.parametrize(("case", "rule"), [
    ("cptac_lscc_chest", "BodyPartExamined names CHEST"),  # BodyPartExamined CHEST, "LUNG 3.0 B70f"
    ("ts_abdomen_slab_j2k/dicom", "no body part named"),  # PARTIALBODY (PET/CT), "CT Body 3.0"
    ("dcmqi_3slice", "ProtocolName names COLONOSCOPY"),  # only the protocol "6.9 Colonoscopy"
])
def test_the_real_ct_cases_are_screened(case: str, rule: str) -> None:
    paths = sorted(p for p in shared_case(case).iterdir() if p.suffix in ("", ".dcm") and p.is_file())
    headers = [h for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths) if h.get("Modality") == "CT"]
    assert headers, case
    decision = body_part_decision(headers[0])
    assert decision.screened and decision.rule.startswith(rule), decision
    assert not_screened_reason(headers) is None
