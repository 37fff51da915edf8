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
import numpy.typing as npt
import torch

from service.segmentation.fine_classes import FINE_CLASS_NAMES, FINE_SPACING_MM
from service.segmentation.fine_model import FINE_NETWORK_KWARGS, FINE_ROI_SIZE, build_fine_network
from service.training.fine_augment import augment_fine
from service.training.fine_data import build_fine_cache
from service.training.loop import Batch, FitResult, cpu_state, fit, loss_summary, save_bundle, stack_batch

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
        if self.cases < 1 or self.iterations < 1 or self.batch_size < 1:
            raise ValueError("cases, iterations and batch_size must be >= 1")


def _load(path: Path) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
    with np.load(path) as z:
        return z["hu"].astype(np.int16), z["target"].astype(np.uint8)


def write_fine_bundle(out: Path, state: dict[str, torch.Tensor], log: dict[str, Any]) -> None:
    save_bundle(
        out, state, log, name="bmd-node vertebra_body_fine",
        task="Fine segmentation of vertebral bodies, discs and posterior elements at 1.25 mm in a tube around "
             "the spine (stage 2 after the coarse vertebra_seg model)",
        description="MONAI UNet trained on synthetic CT phantoms (bmd-node service.phantom) rendered at 1.25 mm "
                    "with domain randomisation; see README.md",
        intended_use="research / screening support", network_kwargs=FINE_NETWORK_KWARGS, roi_size=FINE_ROI_SIZE,
        grid={"fine_spacing_mm": FINE_SPACING_MM}, class_names=FINE_CLASS_NAMES)


def train_fine(cfg: FineTrainConfig) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    files = build_fine_cache(cfg.cache, cfg.seed, cfg.cases)
    data = [_load(f) for f in files]
    net = build_fine_network().to(device)
    batch = cfg.batch_size * (4 if cuda else 1)

    def next_batch() -> Batch:
        patches = []
        for _ in range(batch):
            hu, tg = data[int(rng.integers(len(data)))]
            patches.append(augment_fine(hu, tg, PATCH, rng))
        return stack_batch(patches)

    def save(result: FitResult) -> None:
        write_fine_bundle(cfg.out, cpu_state(net), _log(cfg, result, device))

    result = fit(net, next_batch, iterations=cfg.iterations, learning_rate=cfg.learning_rate, device=device,
                 checkpoint=save, minutes=cfg.minutes)
    log = _log(cfg, result, device)
    write_fine_bundle(cfg.out, cpu_state(net), log)
    return log


def _log(cfg: FineTrainConfig, result: FitResult, device: torch.device) -> dict[str, Any]:
    return {
        "seed": cfg.seed, "phantom_cases": cfg.cases, "fine_spacing_mm": FINE_SPACING_MM,
        "iterations_done": result.iterations_done, "iterations_planned": cfg.iterations,
        "batch_size": cfg.batch_size, "patch": list(PATCH), "learning_rate": cfg.learning_rate,
        "device": device.type, "threads": cfg.threads,
        **loss_summary(result),
    }
