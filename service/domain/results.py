"""Measurement and diagnosis value types, and the screening result that result.json and the SR carry."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from service.domain.guidelines import Category, Thresholds
from service.domain.levels import VertebraLevel

# Category is defined with the thresholds (service.domain.guidelines) and re-exported here.
__all__ = [
    "CalibrationKind", "Category", "CurveFit", "ExclusionReason", "FractureStatus", "LinearCalibration",
    "PatientSummary", "RoiMethod", "ScreeningResult", "SitePrediction", "VertebraMeasurement", "genant_grade",
]


class ExclusionReason(StrEnum):
    """Why a level is not evaluable. Values are the strings written to result.json and the SR."""

    FRACTURE = "fracture"
    SCLEROSIS = "sclerosis"
    METAL = "metal"
    ROI_TOO_SMALL = "roi_too_small"
    LEVEL_UNCERTAIN = "level_uncertain"
    CUT_BY_FOV = "cut_by_fov"


class FractureStatus(StrEnum):
    """Outcome of the vertebral fracture check of a level (strings written to result.json)."""

    FRACTURED = "fractured"  # mask and image both show a Genant height loss: a finding, and the level is excluded
    NOT_FRACTURED = "not_fractured"
    NOT_MEASURABLE = "not_measurable"  # height not measurable (poor mask, cut, endplates not found, disagreement)


GENANT_GRADE_LOWER_BOUNDS = (0.20, 0.25, 0.40)
"""Genant 1993 semi-quantitative method: grade 1 (mild) 20-25 %, grade 2 (moderate) 25-40 %, grade 3 (severe)
> 40 % reduction of anterior, middle or posterior height."""


def genant_grade(height_loss: float) -> int:
    """Genant grade 0-3 of a relative height loss (0.32 -> 2)."""
    return sum(1 for bound in GENANT_GRADE_LOWER_BOUNDS if height_loss >= bound)


class RoiMethod(StrEnum):
    EROSION_3MM = "erosion"  # Xiong 2025 / Peng 2023 / Wang 2024: body eroded by 3 mm in x, y, z
    ELLIPTICAL_CYLINDER = "elliptical_cylinder"  # Pan 2020: middle 9 mm, ellipse 30 % of the body area


class CalibrationKind(StrEnum):
    PHANTOM = "phantom"  # asynchronous phantom scan stored per scanner
    SYNCHRONOUS_PHANTOM = "synchronous_phantom"  # rods in the patient scan itself
    INTERNAL = "internal"  # phantomless: air, fat, muscle, blood of the patient
    DEFAULT = "default"  # documented 120 kVp default, flagged uncalibrated
    SITE_MODEL = "site_model"  # an activated site-trained model produced the value


@dataclass(frozen=True)
class LinearCalibration:
    """``bmd_mg_cm3 = slope * hu + intercept`` and where it came from."""

    kind: CalibrationKind
    slope: float
    intercept: float
    scanner: str = ""
    """Manufacturer / model / station / kVp the calibration applies to (free text)."""
    source: str = ""
    """Reference for the values (paper, phantom definition, date of the phantom scan)."""
    valid_until: str | None = None
    """ISO date, for stored phantom calibrations."""
    flags: tuple[str, ...] = ()
    """e.g. 'uncalibrated', 'contrast_enhanced', 'kvp_corrected_from_100'."""

    def __post_init__(self) -> None:
        if not (self.slope > 0):
            raise ValueError(f"slope must be positive, got {self.slope}")

    def bmd_mg_cm3(self, hu: float) -> float:
        return self.slope * hu + self.intercept


@dataclass(frozen=True)
class CurveFit:
    """Xiong 2025 thoracolumbar curve for one patient: ``hu = k * level_index + intercept`` (T5 = 1 ... L2 = 10)."""

    k: float
    intercept: float
    r2: float
    levels_used: tuple[VertebraLevel, ...]
    source: str = "per_patient"  # or "site_model"

    def hu_at(self, level: VertebraLevel) -> float:
        index = level.xiong_index
        if index is None:
            raise ValueError(f"level {level.name} is outside T5..L2")
        return self.k * index + self.intercept


@dataclass(frozen=True)
class VertebraMeasurement:
    level: VertebraLevel
    centroid_lps_mm: tuple[float, float, float]
    roi_method: RoiMethod
    trabecular_hu_mean: float | None
    trabecular_hu_median: float | None
    trabecular_hu_sd: float | None
    voxel_count: int
    roi_volume_mm3: float
    bmd_mg_cm3: float | None
    evaluable: bool
    exclusion_reason: ExclusionReason | None = None
    exclusion_detail: str | None = None
    """Human-readable detail, e.g. 'anterior height 62 % of neighbours'."""
    level_uncertain: bool = False
    level_cues: tuple[str, ...] = ()
    """The labelling cues that agreed on this level's name (empty: not recorded)."""
    fracture_status: FractureStatus | None = None
    """The fracture check's outcome (None: not checked)."""
    genant_grade: int | None = None
    """0-3 when the heights were measured (0: under 20 % loss), None when not measurable or not checked."""
    height_loss: float | None = None
    """Largest relative height loss measured on the image (0.32 = 32 %), None when not measured."""
    fracture_detail: str | None = None
    """How the outcome was reached (columns, percentages, why not measurable)."""
    roi_note: str | None = None
    """What was done to the ROI before measuring, e.g. a bone island cut out (None: nothing)."""

    def __post_init__(self) -> None:
        if self.genant_grade is not None and self.genant_grade not in (0, 1, 2, 3):
            raise ValueError(f"genant_grade must be 0-3 or None, got {self.genant_grade}")
        if self.fracture_status is FractureStatus.FRACTURED and not self.genant_grade:
            raise ValueError(f"level {self.level.name}: a fractured level needs genant_grade 1-3, "
                             f"got {self.genant_grade}")
        if self.fracture_status is FractureStatus.NOT_MEASURABLE and self.genant_grade is not None:
            raise ValueError(f"level {self.level.name}: genant_grade must be None when the height is not measurable")
        if self.height_loss is not None and not (math.isfinite(self.height_loss) and self.height_loss < 1):
            raise ValueError(f"height_loss must be finite and < 1, got {self.height_loss}")
        if self.evaluable and self.exclusion_reason is not None:
            raise ValueError("an evaluable level cannot have an exclusion_reason")
        if not self.evaluable and self.exclusion_reason is None:
            raise ValueError(f"level {self.level.name} is not evaluable but has no exclusion_reason")
        if self.voxel_count < 0 or self.roi_volume_mm3 < 0:
            raise ValueError("voxel_count and roi_volume_mm3 must be >= 0")


FRACTURE_CHECK_LIMITED_NOTE = "fracture check limited by"
"""How a summary note that the fracture check is limited by thick slices begins (written by
``measurement.fracture_check.thick_slice_limitation``; drawn on its own line by the key image, counted by
``offline.evaluation.bmd_thickness``)."""


@dataclass(frozen=True)
class PatientSummary:
    bmd_mg_cm3: float | None
    levels_used: tuple[VertebraLevel, ...]
    category: Category
    method: str
    """e.g. 'L1-L2 mean, 3 mm erosion ROI, internal calibration' or 'T5-T10 via thoracolumbar curve'."""
    threshold_set: str
    """Identifier of the versioned thresholds, e.g. 'ACR2018-ISCD-v1'."""
    lumbar_equivalent: bool = False
    """True when the value comes from the thoracolumbar curve (chest CT without L1-L2)."""
    notes: tuple[str, ...] = ()
    thresholds: Thresholds | None = None
    """The cut-offs that gave ``category`` (the site's configured ones); the key image legend shows them.
    None: only ``threshold_set`` was recorded (readers then use ``guidelines.thresholds_from_record``)."""

    def __post_init__(self) -> None:
        if not self.threshold_set:
            raise ValueError("threshold_set must not be empty")
        if self.thresholds is not None and self.threshold_set != self.thresholds.identifier:
            raise ValueError(f"threshold_set ({self.threshold_set!r}) must be thresholds.identifier "
                             f"({self.thresholds.identifier!r})")


@dataclass(frozen=True)
class ScreeningResult:
    study_instance_uid: str
    series_instance_uid: str
    vertebrae: tuple[VertebraMeasurement, ...]
    summary: PatientSummary
    calibration: LinearCalibration
    curve_fit: CurveFit | None = None
    algorithm_name: str = "bmd-node"
    algorithm_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The result.json document (field names are relied on by tools outside the project)."""

        def level_name(level: VertebraLevel) -> str:
            return level.name

        vertebrae = []
        for m in self.vertebrae:
            vertebrae.append(
                {
                    "level": m.level.name,
                    "centroid_lps_mm": [round(float(c), 2) for c in m.centroid_lps_mm],
                    "trabecular_hu_mean": _round(m.trabecular_hu_mean),
                    "trabecular_hu_median": _round(m.trabecular_hu_median),
                    "trabecular_hu_sd": _round(m.trabecular_hu_sd),
                    "voxel_count": m.voxel_count,
                    "roi_volume_mm3": round(m.roi_volume_mm3, 1),
                    "roi_method": m.roi_method.value,
                    "bmd_mg_cm3": _round(m.bmd_mg_cm3),
                    "evaluable": m.evaluable,
                    "exclusion_reason": m.exclusion_reason.value if m.exclusion_reason else None,
                    "exclusion_detail": m.exclusion_detail,
                    "level_uncertain": m.level_uncertain,
                    "level_cues": list(m.level_cues),
                    "fracture_status": m.fracture_status.value if m.fracture_status else None,
                    "genant_grade": m.genant_grade,
                    "height_loss": _round(m.height_loss, 3),
                    "fracture_detail": m.fracture_detail,
                    "roi_note": m.roi_note,
                }
            )
        calibration = asdict(self.calibration)
        calibration["kind"] = self.calibration.kind.value
        calibration["flags"] = list(self.calibration.flags)
        curve = None
        if self.curve_fit is not None:
            curve = {
                "k": self.curve_fit.k,
                "intercept": self.curve_fit.intercept,
                "r2": self.curve_fit.r2,
                "levels_used": [level_name(lv) for lv in self.curve_fit.levels_used],
                "source": self.curve_fit.source,
            }
        return {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "vertebrae": vertebrae,
            "summary": {
                "bmd_mg_cm3": _round(self.summary.bmd_mg_cm3),
                "levels_used": [level_name(lv) for lv in self.summary.levels_used],
                "category": self.summary.category.value,
                "method": self.summary.method,
                "threshold_set": self.summary.threshold_set,
                "lumbar_equivalent": self.summary.lumbar_equivalent,
                "notes": list(self.summary.notes),
            },
            "calibration": calibration,
            "curve_fit": curve,
            "algorithm": {"name": self.algorithm_name, "version": self.algorithm_version},
            **({"extra": self.extra} if self.extra else {}),
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class SitePrediction:
    """What an activated site-trained model says for one patient (issue: site models)."""

    model_name: str
    """Registry name and version, recorded in the SR as the method."""
    bmd_mg_cm3: float | None
    category: Category | None
