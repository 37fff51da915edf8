"""The fine body 3-D U-Net: the coarse model's architecture (model.py) with the fine classes, at 1.25 mm."""

from __future__ import annotations

from typing import Any

import torch

from service.segmentation.fine_classes import FINE_NUM_CLASSES
from service.segmentation.model import NETWORK_KWARGS, build_network

FINE_NETWORK_KWARGS: dict[str, Any] = {**NETWORK_KWARGS, "out_channels": FINE_NUM_CLASSES}
FINE_ROI_SIZE = (96, 96, 96)
"""Sliding-window size at inference (120 mm); training uses 64^3 patches."""


def build_fine_network(**overrides: Any) -> torch.nn.Module:
    return build_network(**{"out_channels": FINE_NUM_CLASSES, **overrides})
