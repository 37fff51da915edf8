"""Start-up reconciliation of the spool (service/receive/reconcile.py) with a real SQLite database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sqlalchemy
from pydicom import dcmread
from sqlalchemy import select

from service.db.engine import read_session
from service.db.queries import record_instances, recorded_instance_paths
from service.db.tables import Instance, Series
from service.receive.reconcile import reconcile_spool, spool_files
from service.receive.spool import Spool
from tests.support.ct_series import write_ct_series


def _spool_series(tmp_path: Path, n: int) -> tuple[Spool, list[Path]]:
    sources = write_ct_series(tmp_path / "src", np.zeros((n, 16, 16), dtype=np.int16))
    spool = Spool(tmp_path / "storage")
    written = []
    for path in sources:
        ds = dcmread(path, stop_before_pixels=True)
        written.append(spool.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                   path.read_bytes()).path)
    return spool, written


def _reconcile(engine: sqlalchemy.Engine, storage: Path) -> tuple[int, int, int, int]:
    report = reconcile_spool(storage, lambda: recorded_instance_paths(engine),
                             lambda rows: record_instances(engine, rows))
    return report.partials_removed, report.spool_files, report.recorded, report.unreadable


def test_spool_files_without_a_row_are_recorded_once(sqlite_engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    spool, written = _spool_series(tmp_path, 6)
    partial = written[0].parent / ".incoming-abc.part"
    partial.write_bytes(b"half")
    (spool.storage_dir / "results" / "job-1").mkdir(parents=True)
    (spool.storage_dir / "results" / "job-1" / "sr.dcm").write_bytes(b"not an instance of the spool")
    (spool.storage_dir / "_rejected").mkdir()
    (spool.storage_dir / "_rejected" / "1.2.3.dcm").write_bytes(b"garbage")

    assert _reconcile(sqlite_engine, spool.storage_dir) == (1, 6, 6, 0)
    assert not partial.exists()
    with read_session(sqlite_engine) as session:
        rows = list(session.scalars(select(Instance)))
        series = list(session.scalars(select(Series)))
    assert sorted(r.path for r in rows) == sorted(str(p) for p in written)
    assert {r.status for r in rows} == {"stored"} and {r.modality for r in rows} == {"CT"}
    assert {r.transfer_syntax_uid for r in rows} == {str(dcmread(written[0]).file_meta.TransferSyntaxUID)}
    assert len(series) == 1 and series[0].instance_count == 6

    assert _reconcile(sqlite_engine, spool.storage_dir) == (0, 6, 0, 0)  # nothing twice


def test_a_file_that_does_not_decode_is_counted_and_left(sqlite_engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    spool, written = _spool_series(tmp_path, 2)
    broken = written[0].parent / "1.2.999.dcm"
    broken.write_bytes(b"\x00" * 200)
    assert _reconcile(sqlite_engine, spool.storage_dir) == (0, 3, 2, 1)
    assert broken.exists()
    assert len(list(spool_files(spool.storage_dir))) == 3
