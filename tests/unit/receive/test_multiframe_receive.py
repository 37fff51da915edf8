"""Enhanced CT and Legacy Converted Enhanced CT received by C-STORE go to the pipeline (issue 17): the handler
stores them, and the scheduler's series check reads their frames and queues the series, or rejects it with the
frames' reason."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import sqlalchemy
from pydicom.uid import (
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    LegacyConvertedEnhancedCTImageStorage,
    RLELossless,
)

from service.db.queries import list_series, record_instance
from service.db.tables import utcnow
from service.domain.status import InstanceStatus, SeriesStatus
from service.receive.handlers import STATUS_SUCCESS, ReceivedInstance, StoreHandler
from service.receive.part10 import received_part10
from service.receive.scp import build_ae
from service.receive.spool import Spool
from tests.node_support import quiet_scheduler
from tests.support.ct_series import CTSeriesHeader, write_multiframe_ct_series
from tests.support.store_event import store_event


def _event(path: Path) -> SimpleNamespace:
    return store_event(path.read_bytes())


def _multiframe(folder: Path, kind: str, **kwargs: object) -> list[Path]:
    frames = np.full((12, 8, 8), 1064, dtype=np.uint16)
    header = CTSeriesHeader(extra={"SeriesDescription": "Abdomen 2mm", "ConvolutionKernel": "B30f"})
    return write_multiframe_ct_series(folder, frames, header, kind=kind, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["enhanced", "legacy"])
def test_multiframe_ct_is_stored_for_the_pipeline_and_its_series_queued(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str, kind: str) -> None:
    t0 = utcnow()
    rows: list[ReceivedInstance] = []

    def recorder(row: ReceivedInstance) -> bool:
        rows.append(row)
        return bool(record_instance(sqlite_engine, row, now=t0))

    handler = StoreHandler(Spool(tmp_path / "storage"), recorder)
    (path,) = _multiframe(tmp_path / "sent", kind)  # the whole series in one instance
    event = _event(path)
    assert handler(event) == STATUS_SUCCESS

    (row,) = rows
    assert row.status == InstanceStatus.STORED and row.reason is None
    assert row.path is not None and Path(row.path).read_bytes() == received_part10(event)[0]
    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))
    assert len(tick.enqueued) == 1 and tick.rejected == () and tick.ignored == ()
    (series,) = list_series(sqlite_engine)
    assert series.status == SeriesStatus.QUEUED


def test_a_tilted_multiframe_series_is_rejected_with_the_frames_reason(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    t0 = utcnow()
    handler = StoreHandler(Spool(tmp_path / "storage"), lambda row: record_instance(sqlite_engine, row, now=t0))
    positions = [(0.0, 0.2 * k, 2.0 * k) for k in range(12)]
    for path in _multiframe(tmp_path / "sent", "enhanced", positions_lps_mm=positions, instances=[range(6),
                                                                                                   range(6, 12)]):
        assert handler(_event(path)) == STATUS_SUCCESS
    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))
    assert tick.enqueued == () and len(tick.rejected) == 1
    (series,) = list_series(sqlite_engine)
    assert series.status == SeriesStatus.REJECTED and "gantry tilt of 5.7 degrees" in (series.reason or "")


@pytest.mark.parametrize("sop_class", [EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage])
def test_the_scp_accepts_multiframe_ct_presentation_contexts(sop_class: str) -> None:
    ae = build_ae(SimpleNamespace(node=SimpleNamespace(ae_title="BMDNODE")))
    (context,) = [cx for cx in ae.supported_contexts if cx.abstract_syntax == sop_class]
    assert {ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless} <= set(context.transfer_syntax)
