"""IV contrast detection: the DICOM header (ContrastBolusAgent) or an iodine-bright aorta.

Unenhanced blood measures 30-60 HU even with a high haematocrit; iodinated blood in the aorta is > 120 HU in every
phase in practice (portal-venous ~ 130-200 HU, arterial 250-400 HU). ``CONTRAST_AORTA_HU`` = 110 sits well clear of
unenhanced blood; it is below the ~150 HU often quoted because late-venous chest CT at 100 kVp measures ~140 HU
(the real case ../shared/data/cptac_lscc_chest, "CT CHEST W IV CONTRAST", has aorta and heart at 130-145 HU).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.calibration.tissues import TissueSurvey
from service.domain.volume import CTVolume

CONTRAST_AORTA_HU = 110.0
MIN_ENHANCED_FRACTION = 0.5
"""At least half of the sampled slices must show the iodine-bright vessel."""
_NEGATIVE_AGENT_VALUES = {"", "none", "no", "n/a", "na", "nil", "0"}


@dataclass(frozen=True)
class ContrastFinding:
    enhanced: bool
    evidence: str


def detect_contrast(volume: CTVolume, survey: TissueSurvey | None, aorta_hu: float = CONTRAST_AORTA_HU
                    ) -> ContrastFinding:
    agent = volume.contrast_bolus_agent.strip().lower()
    if agent not in _NEGATIVE_AGENT_VALUES:
        return ContrastFinding(True, "ContrastBolusAgent present in the header")
    if (survey is not None and survey.enhanced_vessel_hu is not None and survey.enhanced_vessel_hu >= aorta_hu
            and survey.enhanced_fraction >= MIN_ENHANCED_FRACTION):
        return ContrastFinding(True, f"aorta region {survey.enhanced_vessel_hu:.0f} HU on "
                                     f"{100 * survey.enhanced_fraction:.0f} % of sampled slices")
    return ContrastFinding(False, "no contrast agent in the header, no iodine-bright aorta")
