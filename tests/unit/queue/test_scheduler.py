"""Scheduler: stable series -> checks -> selection -> job; rejection reasons; re-runs after more instances."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy
from pydicom.uid import generate_uid

from service.db.queries import list_series
from service.db.tables import utcnow
from service.queue import jobs
from service.series.selection import KernelClass, SeriesCandidate, classify_kernel, select_series
from tests.node_support import _success_for_tests, quiet_scheduler, record_files, write_ct_series


def test_waits_for_quiet_then_selects_best_series_and_records_reasons(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study = generate_uid()
    t0 = utcnow()
    thick_sharp = record_files(sqlite_engine, write_ct_series(tmp_path / "a", n_slices=12, size=8, thickness_mm=3.0,
                                                          kernel="B70f", study_uid=study), t0)
    thin_soft = record_files(sqlite_engine, write_ct_series(tmp_path / "b", n_slices=20, size=8, thickness_mm=1.0,
                                                        kernel="B30f", study_uid=study), t0)
    too_thick = record_files(sqlite_engine, write_ct_series(tmp_path / "c", n_slices=12, size=8, thickness_mm=8.0,
                                                        study_uid=study), t0)
    too_few = record_files(sqlite_engine, write_ct_series(tmp_path / "d", n_slices=4, size=8, study_uid=study), t0)
    scheduler = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path)
    early = scheduler.tick(now=t0 + timedelta(seconds=5))
    assert early.enqueued == () and early.rejected == ()  # still arriving
    tick = scheduler.tick(now=t0 + timedelta(seconds=11))
    assert len(tick.enqueued) == 1
    assert sorted(tick.rejected) == sorted([too_thick, too_few])
    assert tick.not_selected == (thick_sharp,)
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows[thin_soft].status == "queued"
    assert rows[thick_sharp].status == "not_selected" and thin_soft in (rows[thick_sharp].reason or "")
    assert "thick" in (rows[too_thick].reason or "").lower()
    assert rows[too_few].reason
    # nothing changes on the next tick
    again = scheduler.tick(now=t0 + timedelta(seconds=30))
    assert again.enqueued == () and again.rejected == () and again.not_selected == ()


def test_more_instances_after_job_finished_queue_a_new_job(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                                           sqlite_url: str) -> None:
    t0 = utcnow()
    paths = write_ct_series(tmp_path / "a", n_slices=14, size=8)
    uid = record_files(sqlite_engine, paths[:12], t0)
    scheduler = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path)
    (first,) = scheduler.tick(now=t0 + timedelta(seconds=11)).enqueued
    claimed = jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=t0 + timedelta(seconds=11))
    assert claimed is not None and claimed.instance_count == 12
    # more instances while the job runs: wait for it to end
    record_files(sqlite_engine, paths[12:], t0 + timedelta(seconds=12))
    assert scheduler.tick(now=t0 + timedelta(seconds=23)).waiting == (uid,)
    assert jobs.finish(sqlite_engine, first, worker_id="w", success=_success_for_tests(first), peer_names=[],
                       now=t0 + timedelta(seconds=23))
    (second,) = scheduler.tick(now=t0 + timedelta(seconds=24)).enqueued
    view = jobs.get_job(sqlite_engine, second)
    assert view is not None and view.instance_count == 14 and view.supersedes_job_id == first


def test_kernel_classes() -> None:
    assert classify_kernel("B30f") is KernelClass.SOFT
    assert classify_kernel("Br40d") is KernelClass.SOFT
    assert classify_kernel("B70f") is KernelClass.SHARP
    assert classify_kernel("STANDARD") is KernelClass.SOFT
    assert classify_kernel("BONEPLUS") is KernelClass.SHARP
    assert classify_kernel("FC18") is KernelClass.SOFT
    assert classify_kernel("FC51") is KernelClass.SHARP
    assert classify_kernel("XYZ") is KernelClass.UNKNOWN


def test_selection_prefers_non_contrast_then_soft_then_thin() -> None:
    enhanced_thin_soft = SeriesCandidate("1", 300, 1.0, "B30f", contrast=True)
    native_thick_soft = SeriesCandidate("2", 60, 5.0, "B30f")
    native_thin_sharp = SeriesCandidate("3", 300, 1.0, "B70f")
    native_thin_soft = SeriesCandidate("4", 300, 1.0, "B31f")
    native_thinner_soft = SeriesCandidate("5", 400, 0.75, "B31f")
    assert select_series([enhanced_thin_soft, native_thick_soft]).selected == native_thick_soft
    assert select_series([native_thin_sharp, native_thick_soft]).selected == native_thick_soft
    choice = select_series([native_thin_soft, native_thinner_soft, enhanced_thin_soft])
    assert choice.selected == native_thinner_soft
    assert {c.series_instance_uid for c, _ in choice.not_selected} == {"1", "4"}
    assert all("series 5 preferred" in why for _, why in choice.not_selected)
    assert select_series([]).selected is None


def test_instances_for_a_still_queued_job_join_it(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                                  sqlite_url: str) -> None:
    t0 = utcnow()
    paths = write_ct_series(tmp_path / "a", n_slices=14, size=8)
    record_files(sqlite_engine, paths[:12], t0)
    scheduler = quiet_scheduler(sqlite_engine, sqlite_url, tmp_path)
    (job_id,) = scheduler.tick(now=t0 + timedelta(seconds=11)).enqueued
    record_files(sqlite_engine, paths[12:], t0 + timedelta(seconds=12))
    tick = scheduler.tick(now=t0 + timedelta(seconds=23))
    assert tick.enqueued == () and tick.waiting == ()
    assert jobs.get_job(sqlite_engine, job_id).instance_count == 14  # type: ignore[union-attr]
    assert scheduler.tick(now=t0 + timedelta(seconds=40)).enqueued == ()
