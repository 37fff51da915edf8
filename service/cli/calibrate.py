"""`bmd-node calibrate phantom DIR [--definition FILE] [--store DIR] [--validity-days N]`."""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path

import pydicom

from service.calibration.store import (
    VALIDITY_DAYS,
    CalibrationStore,
    ScannerKey,
    StoredCalibration,
    valid_until_for,
)
from service.cli.common import CommandParser
from service.series.volume_loader import SeriesRejectedError, dicom_files, load_series

logger = logging.getLogger(__name__)


def register_calibrate(calibrate_subparsers: argparse._SubParsersAction[CommandParser]) -> None:
    p = calibrate_subparsers.add_parser(
        "phantom", help="fit the HU->BMD line from a QCT calibration phantom scan and store it for the scanner")
    p.add_argument("directory", type=Path, help="folder with the phantom series (DICOM)")
    p.add_argument("--definition", type=Path, default=None,
                   help="phantom definition JSON (default models/calibration/k2hpo4_0_50_100_200.json)")
    p.add_argument("--store", type=Path, default=None,
                   help="calibration store directory (default: print only, store nothing)")
    p.add_argument("--validity-days", type=int, default=None, help="days the calibration stays valid (default 31)")
    p.set_defaults(func=run_calibrate_phantom)


def run_calibrate_phantom(args: argparse.Namespace) -> int:
    # Deferred on purpose: the phantom fit loads scipy.signal/scipy.stats (~1 s); only this command needs it,
    # and the CLI imports this module to register the command on every call.
    from service.calibration.phantom import calibrate_from_volume, load_definition  # noqa: PLC0415

    try:
        definition = load_definition(args.definition)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    files = dicom_files(Path(args.directory))
    if not files:
        print(f"error: no DICOM files under {args.directory}")
        return 2
    try:
        volume = load_series(files)
    except SeriesRejectedError as exc:
        print(f"error: series rejected: {exc.reason}")
        return 2
    if not volume.kvp:
        print("error: the series has no KVP; a phantom calibration is valid for one tube voltage")
        return 2
    cal = calibrate_from_volume(volume, definition)
    if cal is None:
        print(f"error: the rods of {definition.name} were not found (need at least 3 on a straight line)")
        return 1
    header = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["AcquisitionDate", "StudyDate"])
    raw_date = str(getattr(header, "AcquisitionDate", "") or getattr(header, "StudyDate", ""))
    scan_date = (date(int(raw_date[:4]), int(raw_date[4:6]), int(raw_date[6:8]))
                 if len(raw_date) == 8 and raw_date.isdigit() else date.today())
    key = ScannerKey(volume.manufacturer, volume.manufacturer_model_name, volume.station_name, float(volume.kvp))
    stored = StoredCalibration(
        scanner=key, slope=cal.fit.slope, intercept=cal.fit.intercept, r2=cal.fit.r2,
        scan_date=scan_date.isoformat(),
        valid_until=valid_until_for(scan_date, args.validity_days if args.validity_days is not None
                                    else VALIDITY_DAYS),
        definition=f"{definition.name} ({definition.material})", rods=cal.rods,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    summary = {
        "scanner": key.label, "slope": round(cal.fit.slope, 5), "intercept": round(cal.fit.intercept, 3),
        "r2": round(cal.fit.r2, 5), "rods": [{"density_mg_cm3": d, "hu": round(h, 2)} for d, h in cal.rods],
        "valid_until": stored.valid_until,
    }
    if args.store is not None:
        path = CalibrationStore(args.store).save(stored)
        summary["stored"] = str(path)
    print(json.dumps(summary, indent=2))
    return 0
