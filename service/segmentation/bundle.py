"""Loading the MONAI bundles models/vertebra_seg (coarse) and models/vertebra_body_fine (fine): configs/metadata.json,
configs/inference.json, models/model.pt."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
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
    from monai.bundle import ConfigParser  # noqa: PLC0415  # heavy: MONAI pulls sklearn/matplotlib, load time only

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


def softmax_sliding_window(bundle: LoadedBundle, device: torch.device, hu: npt.NDArray[np.floating],
                           roi: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    """(classes, x, y, z) softmax of the bundle's network over an HU array: the bundle's fixed HU transform,
    air padding up to the window size, ``sliding_window_inference`` (Gaussian blending; CUDA + float16 autocast
    when the device is a GPU)."""
    # heavy: MONAI pulls sklearn/matplotlib; importing this module (the worker, tests) must not load it
    from monai.inferers import sliding_window_inference  # noqa: PLC0415

    lo, hi = bundle.hu_clip
    x = torch.from_numpy((np.clip(hu, lo, hi) / bundle.hu_scale).astype(np.float32))[None, None].to(device)
    shape = x.shape[2:]
    pads: list[int] = []
    for s, r in zip(reversed(shape), reversed(roi), strict=True):
        extra = max(0, r - s)
        pads.extend([extra // 2, extra - extra // 2])
    if any(pads):
        x = torch.nn.functional.pad(x, pads, value=lo / bundle.hu_scale)
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                logits = sliding_window_inference(x, roi, 2, bundle.network, overlap=0.25, mode="gaussian")
        else:
            logits = sliding_window_inference(x, roi, 1, bundle.network, overlap=0.25, mode="gaussian")
        probs = torch.softmax(logits.float(), dim=1)[0]
    if any(pads):
        sl: list[slice] = [slice(None)]
        for a in range(3):
            before = pads[2 * (2 - a)]
            sl.append(slice(before, before + shape[a]))
        probs = probs[tuple(sl)]
    return probs.cpu().numpy().astype(np.float32)
