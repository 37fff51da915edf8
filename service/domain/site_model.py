"""The interface the screening pipeline needs from an activated site model (implemented in service/site_models)."""

from __future__ import annotations

from typing import Protocol

from service.domain.levels import VertebraLevel
from service.domain.results import SitePrediction


class SiteModelPredictor(Protocol):
    name: str

    def predict(
        self, hu_by_level: dict[VertebraLevel, float], sex: str, age_years: float | None
    ) -> SitePrediction | None:
        """A prediction from per-level trabecular HU mean, or None when the needed levels are missing."""
        ...
