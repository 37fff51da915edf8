"""Loading the MONAI bundles models/vertebra_seg (coarse) and models/vertebra_body_fine (fine): configs/metadata.json,
configs/inference.json, models/model.pt."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class BundleError(Exception):
    """The model bundle is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class LoadedBundle:
    network: torch.nn.Module
    name: str
    version: str
    roi_size: tuple[int, int, int]
    coarse_spacing_mm: float
    hu_clip: tuple[float, float]
    hu_scale: float
    class_names: tuple[str, ...]
    fine_spacing_mm: float | None = None
    """Grid of a fine (stage 2) bundle; None for the coarse bundle."""


def read_configs(bundle_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    meta_path = bundle_dir / "configs" / "metadata.json"
    inf_path = bundle_dir / "configs" / "inference.json"
    for p in (meta_path, inf_path):
        if not p.is_file():
            raise BundleError(f"model bundle file missing: {p}")
    try:
        return json.loads(meta_path.read_text()), json.loads(inf_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"model bundle config is not valid JSON: {exc}") from exc


def load_bundle(bundle_dir: Path, device: torch.device) -> LoadedBundle:
    from monai.bundle import ConfigParser

    metadata, inference = read_configs(bundle_dir)
    parser = ConfigParser(inference)
    network = parser.get_parsed_content("network_def", instantiate=True)
    weights = bundle_dir / "models" / "model.pt"
    if not weights.is_file():
        raise BundleError(f"model weights missing: {weights} (train with `bmd-node train segmentation`)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"model weights {weights} do not match network_def in inference.json: {exc}") from exc
    network.to(device).eval()
    return LoadedBundle(
        network=network,
        name=str(metadata.get("name", "bmd-node vertebra_seg")),
        version=str(metadata.get("version", "0")),
        roi_size=tuple(int(v) for v in inference.get("roi_size", [96, 96, 96])),  # type: ignore[arg-type]
        coarse_spacing_mm=float(inference.get("coarse_spacing_mm", 3.0)),
        hu_clip=tuple(float(v) for v in inference.get("hu_clip", [-1000.0, 1500.0])),  # type: ignore[arg-type]
        hu_scale=float(inference.get("hu_scale", 1000.0)),
        class_names=tuple(metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get(
            "channel_def_names", [])),
        fine_spacing_mm=float(inference["fine_spacing_mm"]) if "fine_spacing_mm" in inference else None,
    )
