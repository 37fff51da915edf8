"""Sagittal/coronal reformats and scout images in a study, at the scheduler's decision (issue 17).

A study often holds, next to the axial stack, sagittal and coronal reformats. When an axial series of the study is
selected, a reformat is ignored with a reason naming that series; without one a sagittal or coronal series is
analysed (a targeted spine reconstruction often comes as a sagittal series alone): sagittal before coronal. A
localizer inside the axial series is left out and the series is queued.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy
from pydicom.uid import generate_uid

from service.cli.jobs import cmd_series_list
from service.db.queries import list_series
from service.db.tables import utcnow
from service.domain.status import SeriesStatus
from tests.node_support import quiet_scheduler, record_files
from tests.support.ct_series import CTSeriesHeader, write_ct_series

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
ANALYSED = "series analysed: no usable axial series in the study"


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


def test_a_reformat_without_a_usable_axial_series_is_queued(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    too_thick = record_files(sqlite_engine, _series(tmp_path / "ax", study, 3, thickness_mm=8.0), t0)
    sagittal = record_files(sqlite_engine, _series(tmp_path / "sag", study, 601, orientation=SAGITTAL), t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.ignored == () and tick.rejected == (too_thick,)
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[sagittal].status == SeriesStatus.QUEUED and rows[sagittal].reason == f"sagittal {ANALYSED}"
    assert rows[too_thick].status == SeriesStatus.REJECTED and "8" in (rows[too_thick].reason or "")


@pytest.mark.parametrize(("orientation", "plane"), [(SAGITTAL, "sagittal"), (CORONAL, "coronal")])
def test_a_study_of_one_sagittal_or_coronal_series_only_is_queued(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str, orientation: tuple[float, ...],
        plane: str) -> None:
    study, t0 = generate_uid(), utcnow()
    uid = record_files(sqlite_engine, _series(tmp_path / "s", study, 4, orientation=orientation), t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.rejected == () and tick.ignored == () and tick.reports == ()
    (row,) = list_series(sqlite_engine)
    assert row.series_instance_uid == uid
    assert (row.status, row.reason) == (SeriesStatus.QUEUED, f"{plane} {ANALYSED}")


def test_without_an_axial_series_sagittal_is_preferred_over_coronal(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    # the coronal series has more slices: the plane decides before the slice count
    coronal = record_files(sqlite_engine, _series(tmp_path / "cor", study, 602, orientation=CORONAL, n_slices=20), t0)
    sagittal = record_files(sqlite_engine, _series(tmp_path / "sag", study, 601, orientation=SAGITTAL), t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.not_selected == (coronal,) and tick.ignored == ()
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[sagittal].status == SeriesStatus.QUEUED
    assert rows[coronal].status == SeriesStatus.NOT_SELECTED
    assert rows[coronal].reason == (f"series {sagittal} preferred (sagittal, 2 mm, kernel B30f (soft), non-contrast, "
                                    f"12 slices over coronal, 2 mm, kernel B30f (soft), non-contrast, 20 slices)")


def test_a_thinner_coronal_series_is_preferred_over_a_thicker_sagittal_one(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    """The selection rules that change the measured HU (contrast, kernel, thickness) come before the plane."""
    study, t0 = generate_uid(), utcnow()
    coronal = record_files(sqlite_engine, _series(tmp_path / "cor", study, 602, orientation=CORONAL,
                                                  thickness_mm=1.0), t0)
    sagittal = record_files(sqlite_engine, _series(tmp_path / "sag", study, 601, orientation=SAGITTAL,
                                                   thickness_mm=3.0), t0)

    tick = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))

    assert len(tick.enqueued) == 1 and tick.not_selected == (sagittal,)
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[coronal].status == SeriesStatus.QUEUED and rows[coronal].reason == f"coronal {ANALYSED}"


def test_series_list_shows_each_planes_decision_and_reason(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    study, t0 = generate_uid(), utcnow()
    axial = record_files(sqlite_engine, _series(tmp_path / "ax", study, 3), t0)
    sagittal = record_files(sqlite_engine, _series(tmp_path / "sag", study, 601, orientation=SAGITTAL), t0)
    other_study = generate_uid()
    alone = record_files(sqlite_engine, _series(tmp_path / "alone", other_study, 7, orientation=SAGITTAL), t0)
    quiet_scheduler(sqlite_engine, sqlite_url, tmp_path).tick(now=t0 + timedelta(seconds=11))
    monkeypatch.setenv("BMD_NODE_NODE__DATABASE_URL", sqlite_url)
    monkeypatch.delenv("BMD_NODE_CONFIG", raising=False)

    assert cmd_series_list(argparse.Namespace(config=None, limit=100)) == 0

    by_series = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert " queued " in by_series[axial]
    assert " ignored " in by_series[sagittal]
    assert by_series[sagittal].endswith("sagittal reformat; the axial series 3 of the study is screened")
    assert " queued " in by_series[alone] and by_series[alone].endswith(f"sagittal {ANALYSED}")


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
