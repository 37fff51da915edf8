"""Sagittal/coronal reformats and scout images in a study, at the scheduler's decision (issue 17).

A study often holds, next to the axial stack, sagittal and coronal reformats. When an axial series of the study is
selected, a reformat is ignored with a reason naming that series; without one it is rejected: analysing non-axial
series is not supported yet. A localizer inside the axial series is left out and the series is queued.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy
from pydicom.uid import generate_uid

from service.db.queries import list_series
from service.db.tables import utcnow
from service.domain.status import SeriesStatus
from tests.node_support import quiet_scheduler, record_files
from tests.support.ct_series import CTSeriesHeader, write_ct_series

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
NOT_SUPPORTED = "series: analysis of non-axial series is not supported yet"


def _series(folder: Path, study_uid: str, number: int, *, orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
            n_slices: int = 12, thickness_mm: float = 2.0, series_uid: str | None = None,
            **extra: Any) -> list[Path]:
    frames = (np.full((8, 8), 1064, dtype=np.int16) for _ in range(n_slices))
    header = CTSeriesHeader(study_instance_uid=study_uid, series_instance_uid=series_uid or generate_uid(),
                            orientation=orientation, slice_thickness_mm=thickness_mm,
                            extra={"SeriesNumber": number, "ConvolutionKernel": "B30f", **extra})
    return write_ct_series(folder, frames, header)






def test_reformats_of_a_study_with_an_axial_series_are_ignored_naming_it(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    axial = record_files(sqlite_engine, _series(tmp_path / "ax", study, 3), t0)
    sagittal = record_files(sqlite_engine, _series(tmp_path / "sag", study, 601, orientation=SAGITTAL), t0)
    coronal = record_files(sqlite_engine, _series(tmp_path / "cor", study, 602, orientation=CORONAL), t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.rejected == () and tick.not_selected == ()
    assert sorted(tick.ignored) == sorted([sagittal, coronal])
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[axial].status == SeriesStatus.QUEUED
    assert rows[sagittal].status == SeriesStatus.IGNORED
    assert rows[sagittal].reason == "sagittal reformat; the axial series 3 of the study is screened"
    assert rows[coronal].status == SeriesStatus.IGNORED
    assert rows[coronal].reason == "coronal reformat; the axial series 3 of the study is screened"


def test_a_reformat_arriving_after_the_axial_series_was_queued_is_ignored(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    axial = record_files(sqlite_engine, _series(tmp_path / "ax", study, 2), t0)
    scheduler = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path)
    assert len(scheduler.tick(now=t0 + timedelta(seconds=11)).enqueued) == 1
    later = t0 + timedelta(seconds=20)
    coronal = record_files(sqlite_engine, _series(tmp_path / "cor", study, 5, orientation=CORONAL), later)

    tick = scheduler.tick(now=later + timedelta(seconds=11))

    assert tick.enqueued == () and tick.ignored == (coronal,) and tick.rejected == ()
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[axial].status == SeriesStatus.QUEUED
    assert rows[coronal].reason == "coronal reformat; the axial series 2 of the study is screened"


def test_a_reformat_without_a_usable_axial_series_is_rejected_as_not_supported(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    too_thick = record_files(sqlite_engine, _series(tmp_path / "ax", study, 3, thickness_mm=8.0), t0)
    sagittal = record_files(sqlite_engine, _series(tmp_path / "sag", study, 601, orientation=SAGITTAL), t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert tick.enqueued == () and tick.ignored == ()
    assert sorted(tick.rejected) == sorted([too_thick, sagittal])
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[sagittal].status == SeriesStatus.REJECTED
    assert (rows[sagittal].reason or "").startswith(f"sagittal {NOT_SUPPORTED}")


def test_a_study_of_a_coronal_series_only_is_rejected_as_not_supported(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    coronal = record_files(sqlite_engine, _series(tmp_path / "cor", study, 4, orientation=CORONAL), t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert tick.rejected == (coronal,) and tick.ignored == ()
    (row,) = list_series(sqlite_engine)
    assert row.status == SeriesStatus.REJECTED and (row.reason or "").startswith(f"coronal {NOT_SUPPORTED}")


def test_an_axial_series_holding_its_scout_is_queued(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                                     sqlite_url: str) -> None:
    study, t0, series_uid = generate_uid(), utcnow(), generate_uid()
    scout = _series(tmp_path / "scout", study, 1, orientation=CORONAL, n_slices=1, series_uid=series_uid,
                    ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    axial = _series(tmp_path / "ax", study, 1, series_uid=series_uid)
    uid = record_files(sqlite_engine, scout + axial, t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.rejected == () and tick.ignored == ()
    (row,) = list_series(sqlite_engine)
    assert row.series_instance_uid == uid and row.status == SeriesStatus.QUEUED
