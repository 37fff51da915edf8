"""The [segmentation] section: which backend segments the vertebrae, with which bundles, on which device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SEGMENTATION_BACKENDS = ("bmd-node", "totalsegmentator")
SEGMENTATION_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SegmentationSettings:
    backend: str = "bmd-node"
    bundle_dir: Path = Path("models/vertebra_seg")
    fine_bundle_dir: Path = Path("models/vertebra_body_fine")
    """Stage 2: vertebral bodies and discs at 1.25 mm in a tube around the spine."""
    fine_stage: bool = True
    """False: bodies from the coarse 3 mm model only (the fine bundle is not loaded)."""
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in SEGMENTATION_BACKENDS:
            raise ValueError(f"segmentation.backend: must be one of {SEGMENTATION_BACKENDS}, got {self.backend!r}")
        if self.device not in SEGMENTATION_DEVICES:
            raise ValueError(f"segmentation.device: must be one of {SEGMENTATION_DEVICES}, got {self.device!r}")
