"""Training recipe of the fine body model (``bmd-node train segmentation-fine``; stage 2 of the segmentation).

1. Data: ``--cases`` synthetic phantoms rendered at 1.25 mm and cropped to the spine (fine_data.py), cached.
2. Training: MONAI UNet (fine_model.py), 64^3 patches (80 mm), domain randomisation (fine_augment.py), loss =
   cross-entropy + soft Dice, AdamW with a one-cycle schedule; CUDA + AMP and larger batches when a GPU is present.
3. Output: a MONAI bundle (configs/metadata.json, configs/inference.json, models/model.pt, training_log.json).
Reproducible from the seed for a fixed iteration and thread count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.offline.training.fine_augment import augment_fine
from service.offline.training.fine_data import build_fine_cache
from service.offline.training.loop import (
    Batch,
    FitResult,
    check_sizes,
    cpu_state,
    fit_and_write,
    load_case,
    loss_summary,
    save_bundle,
    stack_batch,
    training_device,
)
from service.segmentation.fine_classes import FINE_CLASS_NAMES, FINE_SPACING_MM
from service.segmentation.fine_model import FINE_NETWORK_KWARGS, FINE_ROI_SIZE, build_fine_network

logger = logging.getLogger(__name__)

PATCH = (64, 64, 64)


@dataclass(frozen=True)
class FineTrainConfig:
    out: Path
    seed: int = 21
    cases: int = 240
    iterations: int = 4000
    batch_size: int = 2
    learning_rate: float = 2e-3
    threads: int = 2
    cache: Path = Path("var/train_cache")
    minutes: float | None = None

    def __post_init__(self) -> None:
        check_sizes(self.cases, self.iterations, self.batch_size)


def write_fine_bundle(out: Path, state: dict[str, torch.Tensor], log: dict[str, Any]) -> None:
    save_bundle(
        out, state, log, name="bmd-node vertebra_body_fine",
        task="Fine segmentation of vertebral bodies, discs and posterior elements at 1.25 mm in a tube around "
             "the spine (stage 2 after the coarse vertebra_seg model)",
        description="MONAI UNet trained on synthetic CT phantoms (service.offline.phantom) rendered at 1.25 mm "
                    "with domain randomisation; see README.md",
        intended_use="research / screening support", network_kwargs=FINE_NETWORK_KWARGS, roi_size=FINE_ROI_SIZE,
        grid={"fine_spacing_mm": FINE_SPACING_MM}, class_names=FINE_CLASS_NAMES)


def train_fine(cfg: FineTrainConfig) -> dict[str, Any]:
    device, batch = training_device(cfg.seed, cfg.threads, cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)
    files = build_fine_cache(cfg.cache, cfg.seed, cfg.cases)
    data = [load_case(f) for f in files]
    net = build_fine_network().to(device)

    def next_batch() -> Batch:
        patches = []
        for _ in range(batch):
            hu, tg = data[int(rng.integers(len(data)))]
            patches.append(augment_fine(hu, tg, PATCH, rng))
        return stack_batch(patches)

    def write(result: FitResult) -> dict[str, Any]:
        log = _log(cfg, result, device)
        write_fine_bundle(cfg.out, cpu_state(net), log)
        return log

    return fit_and_write(net, next_batch, write, iterations=cfg.iterations, learning_rate=cfg.learning_rate,
                         device=device, minutes=cfg.minutes)


def _log(cfg: FineTrainConfig, result: FitResult, device: torch.device) -> dict[str, Any]:
    return {
        "seed": cfg.seed, "phantom_cases": cfg.cases, "fine_spacing_mm": FINE_SPACING_MM,
        "iterations_done": result.iterations_done, "iterations_planned": cfg.iterations,
        "batch_size": cfg.batch_size, "patch": list(PATCH), "learning_rate": cfg.learning_rate,
        "device": device.type, "threads": cfg.threads,
        **loss_summary(result),
    }
