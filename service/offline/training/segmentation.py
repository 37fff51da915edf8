"""Training recipe of the coarse semantic vertebra model (``bmd-node train segmentation``).

1. Training set: ``--cases`` synthetic phantoms (service.offline.phantom, ``random_spec`` with seeds derived from
   ``--seed``), rendered at 3 mm, put on the canonical grid and cached under ``--cache`` (gitignored var/).
   Optionally real labelled CT from ``--real-data DIR`` (TotalSegmentator-style or VerSe-style folders, see
   ``real_data.py``), mixed in with weight ``--real-weight``.
2. Training: MONAI UNet (model.py), patches of 64^3 voxels (192 mm), heavy domain randomisation (augment.py),
   loss = cross-entropy + soft Dice (voxels marked IGNORE excluded), Adam with cosine decay.  CUDA + AMP when a
   GPU is present (then larger batches); on CPU ``torch.set_num_threads(--threads)``.
3. Output: a MONAI bundle (configs/metadata.json, configs/inference.json, models/model.pt, training_log.json).
Reproducible from the seed for a fixed iteration count (the data order, augmentation and initialisation are all
drawn from generators seeded by ``--seed``; CPU float arithmetic is deterministic for a given thread count).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from service.offline.phantom.api import generate, random_spec
from service.offline.training.augment import augment
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
from service.offline.training.real_data import load_real_folder
from service.segmentation import classes as cls
from service.segmentation.geometry import COARSE_SPACING_MM, canonical_frame, coarse_grid, resample_to_coarse
from service.segmentation.model import NETWORK_KWARGS, build_network

logger = logging.getLogger(__name__)

PATCH = (64, 64, 64)
ROI_SIZE = (96, 96, 96)


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    seed: int = 7
    cases: int = 160
    iterations: int = 1100
    batch_size: int = 2
    learning_rate: float = 2e-3
    threads: int = 1
    cache: Path = Path("var/train_cache/segmentation")
    real_data: Path | None = None
    real_weight: float = 0.5
    strong_pv: bool = False
    """Stronger partial-volume / low-density augmentation (augment.augment); off for the committed model."""
    render_mm: float = COARSE_SPACING_MM
    """Rendering grid of the training phantoms (area-averaged to 3 mm when finer)."""
    init: Path | None = None
    """Start from the weights of this bundle (fine-tuning stage)."""
    minutes: float | None = None
    """Optional wall-clock cap (then the result depends on machine speed; the iteration count is logged)."""

    def __post_init__(self) -> None:
        check_sizes(self.cases, self.iterations, self.batch_size)


def _phantom_case(seed: int, index: int, render_mm: float = COARSE_SPACING_MM,
                  ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8], dict[str, Any]]:
    """One training case on the 3 mm canonical grid. ``render_mm`` < 3 renders finer and area-averages down
    (partial volume like a real scan resampled to 3 mm) at a higher rendering cost."""
    rng = np.random.default_rng([seed, index])
    spec = random_spec(rng)
    ph = generate(spec, spacing_mm=(render_mm,) * 3)
    frame = canonical_frame(ph.volume.affine_lps, ph.volume.shape)
    grid = coarse_grid(frame)
    hu = resample_to_coarse(frame.to_canonical(ph.volume.hu.astype(np.float32)), grid)
    labels = resample_to_coarse(frame.to_canonical(ph.labels.astype(np.int16)), grid, order=0)
    lumbarised = spec.lumbar_variant == "lumbarised_s1"
    target = cls.phantom_targets(labels, lumbarised_s1=lumbarised)
    info = {"region": spec.region, "rib_pairs": spec.rib_pairs, "lumbar_variant": spec.lumbar_variant,
            "shape": list(hu.shape)}
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), target, info


def build_cache(cache: Path, seed: int, cases: int, render_mm: float = COARSE_SPACING_MM) -> list[Path]:
    """Render (or reuse) the cached training phantoms; returns the case files."""
    folder = cache / (f"seed{seed}" if render_mm == COARSE_SPACING_MM else f"seed{seed}_render{render_mm:g}mm")
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    t0 = time.perf_counter()
    for i in range(cases):
        path = folder / f"case_{i:04d}.npz"
        if not path.is_file():
            hu, target, info = _phantom_case(seed, i, render_mm)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, hu=hu, target=target, info=json.dumps(info))
            tmp.replace(path)
            if i % 20 == 0:
                logger.info("phantom %d/%d rendered (%.0f s)", i + 1, cases, time.perf_counter() - t0)
        files.append(path)
    return files


def write_bundle(out: Path, state: dict[str, torch.Tensor], log: dict[str, Any]) -> None:
    save_bundle(
        out, state, log, name="bmd-node vertebra_seg",
        task="Coarse semantic segmentation of the spine (vertebral bodies thoracic/lumbar group, posterior "
             "elements, discs, ribs, sacrum) on CT at 3 mm, for vertebra labelling",
        description="MONAI UNet trained on synthetic CT phantoms (bmd-node service.offline.phantom) with domain "
                    "randomisation; see README.md",
        intended_use="research / screening support; vertebral levels are checked anatomically downstream",
        network_kwargs=NETWORK_KWARGS, roi_size=ROI_SIZE, grid={"coarse_spacing_mm": COARSE_SPACING_MM},
        class_names=cls.CLASS_NAMES)


def train(cfg: TrainConfig) -> dict[str, Any]:
    device, batch = training_device(cfg.seed, cfg.threads, cfg.batch_size)
    rng = np.random.default_rng(cfg.seed)
    files = build_cache(cfg.cache, cfg.seed, cfg.cases, cfg.render_mm)
    data = [load_case(f) for f in files]
    real: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]] = []
    if cfg.real_data is not None:
        real = load_real_folder(cfg.real_data)
        logger.info("real labelled cases: %d", len(real))
    net = build_network()
    if cfg.init is not None:
        net.load_state_dict(torch.load(cfg.init / "models" / "model.pt", map_location="cpu", weights_only=True))
        logger.info("initialised from %s", cfg.init)
    net = net.to(device)

    def next_batch() -> Batch:
        patches = []
        for _ in range(batch):
            if real and rng.random() < cfg.real_weight:
                hu, tg = real[int(rng.integers(len(real)))]
            else:
                hu, tg = data[int(rng.integers(len(data)))]
            patches.append(augment(hu, tg, PATCH, rng, cfg.strong_pv))
        return stack_batch(patches)

    def write(result: FitResult) -> dict[str, Any]:
        log = _log(cfg, result, device, len(real))
        write_bundle(cfg.out, cpu_state(net), log)
        return log

    return fit_and_write(net, next_batch, write, iterations=cfg.iterations, learning_rate=cfg.learning_rate,
                         device=device, minutes=cfg.minutes)


def _log(cfg: TrainConfig, result: FitResult, device: torch.device, n_real: int) -> dict[str, Any]:
    return {
        "seed": cfg.seed, "init": str(cfg.init) if cfg.init else None, "strong_pv": cfg.strong_pv,
        "render_mm": cfg.render_mm, "phantom_cases": cfg.cases,
        "real_cases": n_real, "iterations_done": result.iterations_done,
        "iterations_planned": cfg.iterations, "batch_size": cfg.batch_size, "patch": list(PATCH),
        "learning_rate": cfg.learning_rate, "device": device.type, "threads": cfg.threads,
        **loss_summary(result),
    }
