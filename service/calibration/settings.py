"""What the BMD assessment can be told: the TOML ``[bmd]`` section and the assessment's own knobs, one type.

``service.config`` builds ``Config.bmd`` from the ``[bmd]`` keys; ``service.calibration.assess.assess_bmd`` takes
the same object. Fields marked ``NOT_IN_TOML`` are knobs of the assessment (tests, offline tools) that the
configuration file does not offer: the loader refuses them as keys and they keep their defaults in the node.

Errors name the configuration key (``bmd.erosion_mm: must be >= 0, got -1.0``); the loader turns them into
``ConfigError`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from service.domain import guidelines
from service.domain.levels import VertebraLevel
from service.domain.results import RoiMethod

NOT_IN_TOML: Final = MappingProxyType({"toml": False})
"""Field metadata: a setting callers of the assessment may pass that is not a key of the [bmd] section."""

# The defaults below repeat constants of the measurement and contrast modules (GENANT_HEIGHT_LOSS, METAL_HU,
# SCLEROSIS_HU, SCLEROSIS_MAX_FRACTION, DEFAULT_MIN_ROI_VOLUME_MM3, CONTRAST_AORTA_HU): importing those modules
# here would load numpy and scipy with the configuration. tests/unit/config/test_one_bmd_settings.py keeps them
# equal.


@dataclass(frozen=True)
class BmdSettings:
    """The [bmd] section (first block: keys of the TOML file) and the assessment's internal knobs."""

    roi_method: RoiMethod = RoiMethod.EROSION_3MM
    erosion_mm: float = 3.0
    """Xiong 2025 / Peng 2023 / Wang 2024: the vertebral body eroded by 3 mm in x, y and z."""
    summary_levels: tuple[VertebraLevel, ...] = (VertebraLevel.L1, VertebraLevel.L2)
    """ISCD / ACR standard L1-L2 mean; L1-L3 or T12-L2 are accepted alternatives."""
    threshold_set: str = f"{guidelines.DEFAULT_THRESHOLD_SET}-{guidelines.DEFAULT_THRESHOLD_VERSION}"
    """Name (+ version) of the category thresholds, recorded in every result."""
    osteoporosis_below_mg_cm3: float = guidelines.OSTEOPOROSIS_BELOW_MG_CM3
    normal_above_mg_cm3: float = guidelines.NORMAL_ABOVE_MG_CM3
    calibration_store_dir: Path | None = Path("var/calibration")
    """Stored asynchronous phantom calibrations (one JSON file each); None: no store."""
    detect_synchronous_phantom: bool = True
    correct_contrast: bool = True
    """True: subtract the documented contrast rise of trabecular HU; false: only flag the result."""
    fracture_height_loss: float = 0.20
    """Genant: a height loss >= 20 % (plus the measurement's quantisation margin) on the image endplates, confirmed by
    the body mask, is a fracture and excludes the level (service/measurement/fracture_check.py)."""
    use_site_curve: bool = False
    curve_site_k_hu_per_level: float = 0.0
    """Site-trained thoracolumbar slope k (HU per level, T5 = 1 ... L2 = 10); used when use_site_curve is true."""
    precision_percent: float = 3.0
    """Precision error (CV, %) of this site's BMD measurement; the trend since a prior study is flagged beyond the
    least significant change LSC = 2.77 x precision (ISCD). 3 %: upper end of the 1-3 % short-term precision of spine
    QCT in Engelke 2008 (J Clin Densitom 11:123, ISCD official positions); see service/domain/trend.py."""

    threshold_version: str = field(default=guidelines.DEFAULT_THRESHOLD_VERSION, metadata=NOT_IN_TOML)
    """Appended to threshold_set in the recorded identifier unless the name already ends with it."""
    synchronous_phantom_definition: Path | None = field(default=None, metadata=NOT_IN_TOML)
    """Phantom definition to look for in patient scans; None: the default definition file."""
    use_internal_calibration: bool = field(default=True, metadata=NOT_IN_TOML)
    contrast_aorta_hu: float = field(default=110.0, metadata=NOT_IN_TOML)
    min_roi_volume_mm3: float = field(default=500.0, metadata=NOT_IN_TOML)
    sclerosis_hu: float = field(default=500.0, metadata=NOT_IN_TOML)
    sclerosis_max_fraction: float = field(default=0.05, metadata=NOT_IN_TOML)
    metal_hu: float = field(default=2000.0, metadata=NOT_IN_TOML)

    def __post_init__(self) -> None:
        if not self.summary_levels:
            raise ValueError("bmd.summary_levels: must name at least one level")
        if not self.threshold_set:
            raise ValueError("bmd.threshold_set: must not be empty")
        if self.erosion_mm < 0:
            raise ValueError(f"bmd.erosion_mm: must be >= 0, got {self.erosion_mm}")
        if not self.osteoporosis_below_mg_cm3 < self.normal_above_mg_cm3:
            raise ValueError(f"bmd.osteoporosis_below_mg_cm3: must be below bmd.normal_above_mg_cm3 "
                             f"({self.normal_above_mg_cm3}), got {self.osteoporosis_below_mg_cm3}")
        if not 0 < self.fracture_height_loss < 1:
            raise ValueError(f"bmd.fracture_height_loss: must be in (0, 1), got {self.fracture_height_loss}")
        if not 0 < self.precision_percent <= 20:
            raise ValueError(f"bmd.precision_percent: must be in (0, 20], got {self.precision_percent}")
        if self.min_roi_volume_mm3 < 0:
            raise ValueError(f"bmd.min_roi_volume_mm3: must be >= 0, got {self.min_roi_volume_mm3}")

    @property
    def thresholds(self) -> guidelines.Thresholds:
        return guidelines.Thresholds(self.threshold_set, self.threshold_version, self.osteoporosis_below_mg_cm3,
                                     self.normal_above_mg_cm3)

    @property
    def curve_site_k(self) -> float | None:
        """The site-trained slope k when use_site_curve is on; None: the per-patient thoracolumbar fit."""
        return self.curve_site_k_hu_per_level if self.use_site_curve else None
