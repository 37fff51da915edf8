"""The fine body 3-D U-Net (MONAI UNet at 1.25 mm; same fixed HU transform as the coarse model)."""

from __future__ import annotations

from typing import Any

import torch

from service.segmentation.fine_classes import FINE_NUM_CLASSES

FINE_NETWORK_KWARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": FINE_NUM_CLASSES,
    "channels": [12, 24, 48, 64, 96],
    "strides": [2, 2, 2, 2],
    "num_res_units": 1,
    "norm": "batch",
}
FINE_ROI_SIZE = (96, 96, 96)
"""Sliding-window size at inference (120 mm); training uses 64^3 patches."""


def build_fine_network(**overrides: Any) -> torch.nn.Module:
    from monai.networks.nets import UNet

    kwargs = dict(FINE_NETWORK_KWARGS)
    kwargs.update(overrides)
    return UNet(**kwargs)
