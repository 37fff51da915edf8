"""The coarse semantic 3-D U-Net (MONAI UNet, few channels so that it trains and runs on a CPU)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from service.segmentation.classes import NUM_CLASSES

HU_CLIP = (-1000.0, 1500.0)
HU_SCALE = 1000.0
"""Fixed intensity transform: clip HU to [-1000, 1500] and divide by 1000 (no per-image normalisation, so the input
does not depend on the field of view or the amount of fat/air in it)."""

NETWORK_KWARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": NUM_CLASSES,
    "channels": [12, 24, 48, 64, 96],
    "strides": [2, 2, 2, 2],
    "num_res_units": 1,
    "norm": "batch",
}


def build_network(**overrides: Any) -> torch.nn.Module:
    from monai.networks.nets import UNet  # noqa: PLC0415  # heavy: MONAI pulls sklearn/matplotlib, build time only

    kwargs = dict(NETWORK_KWARGS)
    kwargs.update(overrides)
    return UNet(**kwargs)


def hu_to_input(hu: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    return (np.clip(hu, *HU_CLIP) / HU_SCALE).astype(np.float32)
