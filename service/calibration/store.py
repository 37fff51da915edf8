"""Per-scanner store of asynchronous phantom calibrations: one JSON file per calibration in a directory.

A calibration applies to one scanner key (manufacturer, model, station name, kVp) from its scan date until
``valid_until`` (default: scan date + VALIDITY_DAYS; Pan 2020 scanned the QA phantom once a month). The newest valid
entry for the key wins. Files are written atomically (temporary file + rename); unreadable files are skipped with a
warning, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from service.domain.results import CalibrationKind, LinearCalibration
from service.domain.volume import CTVolume

logger = logging.getLogger(__name__)

VALIDITY_DAYS = 31  # Pan 2020: QA phantom data acquired once a month
KVP_MATCH_TOLERANCE = 2.0
FORMAT_VERSION = 1


def _norm(text: str) -> str:
    return " ".join(str(text or "").split()).lower()


@dataclass(frozen=True)
class ScannerKey:
    manufacturer: str
    model: str
    station: str
    kvp: float

    def __post_init__(self) -> None:
        if not self.kvp > 0:
            raise ValueError(f"kvp must be positive, got {self.kvp}")

    def matches(self, other: ScannerKey) -> bool:
        return (
            _norm(self.manufacturer) == _norm(other.manufacturer)
            and _norm(self.model) == _norm(other.model)
            and _norm(self.station) == _norm(other.station)
            and abs(self.kvp - other.kvp) <= KVP_MATCH_TOLERANCE
        )

    @property
    def label(self) -> str:
        return f"{self.manufacturer} / {self.model} / {self.station or '-'} / {self.kvp:g} kVp"

    @property
    def slug(self) -> str:
        raw = f"{self.manufacturer}_{self.model}_{self.station}_{self.kvp:g}kvp"
        return re.sub(r"[^A-Za-z0-9.-]+", "_", raw).strip("_") or "scanner"


def scanner_label(volume: CTVolume) -> str:
    """The scanner a volume came from, as results name it: manufacturer / model / station / kVp."""
    kvp = f"{volume.kvp:g} kVp" if volume.kvp else "kVp unknown"
    parts = (volume.manufacturer, volume.manufacturer_model_name, volume.station_name)
    return " / ".join([*(p or "-" for p in parts), kvp])


@dataclass(frozen=True)
class StoredCalibration:
    scanner: ScannerKey
    slope: float
    intercept: float
    r2: float
    scan_date: str
    """ISO date of the phantom scan."""
    valid_until: str
    definition: str
    """Phantom definition name (file stem) and material."""
    rods: tuple[tuple[float, float], ...] = ()
    """(declared density mg/cm3, measured HU) per rod."""
    created_at: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.slope > 0:
            raise ValueError(f"slope must be positive, got {self.slope}")
        if date.fromisoformat(self.valid_until) < date.fromisoformat(self.scan_date):
            raise ValueError(f"valid_until {self.valid_until} is before scan_date {self.scan_date}")

    def valid_on(self, day: date) -> bool:
        return date.fromisoformat(self.scan_date) <= day <= date.fromisoformat(self.valid_until)

    def to_linear(self) -> LinearCalibration:
        return LinearCalibration(
            kind=CalibrationKind.PHANTOM,
            slope=self.slope,
            intercept=self.intercept,
            scanner=self.scanner.label,
            source=f"asynchronous phantom {self.definition} scanned {self.scan_date} (R2 {self.r2:.4f})",
            valid_until=self.valid_until,
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["format_version"] = FORMAT_VERSION
        d["rods"] = [list(r) for r in self.rods]
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoredCalibration:
        s = d["scanner"]
        return cls(
            scanner=ScannerKey(str(s["manufacturer"]), str(s["model"]), str(s["station"]), float(s["kvp"])),
            slope=float(d["slope"]),
            intercept=float(d["intercept"]),
            r2=float(d["r2"]),
            scan_date=str(d["scan_date"]),
            valid_until=str(d["valid_until"]),
            definition=str(d["definition"]),
            rods=tuple((float(a), float(b)) for a, b in d.get("rods", [])),
            created_at=str(d.get("created_at", "")),
            notes=tuple(str(n) for n in d.get("notes", [])),
        )


def valid_until_for(scan_date: date, validity_days: int = VALIDITY_DAYS) -> str:
    if validity_days < 0:
        raise ValueError(f"validity_days must be >= 0, got {validity_days}")
    return (scan_date + timedelta(days=validity_days)).isoformat()


class CalibrationStore:
    """JSON files in ``directory`` (created on first save)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def save(self, calibration: StoredCalibration) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{calibration.scanner.slug}_{calibration.scan_date}.json"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(calibration.to_json(), handle, indent=2, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.info("stored phantom calibration for %s in %s", calibration.scanner.label, path.name)
        return path

    def all(self) -> list[StoredCalibration]:
        out = []
        if not self.directory.is_dir():
            return out
        for path in sorted(self.directory.glob("*.json")):
            if path.name.startswith(".tmp-"):
                continue
            try:
                out.append(StoredCalibration.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("skipping unreadable calibration file %s: %s", path.name, exc)
        return out

    def find(self, scanner: ScannerKey, on_day: date) -> StoredCalibration | None:
        """The newest calibration for ``scanner`` valid on ``on_day``, or None."""
        candidates = [c for c in self.all() if c.scanner.matches(scanner) and c.valid_on(on_day)]
        if not candidates:
            return None
        return max(candidates, key=lambda c: (c.scan_date, c.created_at))
