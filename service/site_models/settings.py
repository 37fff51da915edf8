"""The [site_models] section: where the registry of site-trained models lives and whether it is used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SiteModelsSettings:
    registry_dir: Path = Path("var/site_models")
    enabled: bool = True
    """When false the active site model is ignored even if one is activated in the registry."""
