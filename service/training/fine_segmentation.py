"""Training recipe of the fine body model (``bmd-node train segmentation-fine``; stage 2 of the segmentation).

1. Data: ``--cases`` synthetic phantoms rendered at 1.25 mm and cropped to the spine (fine_data.py), cached.
2. Training: MONAI UNet (fine_model.py), 64^3 patches (80 mm), domain randomisation (fine_augment.py), loss =
   cross-entropy + soft Dice, AdamW with a one-cycle schedule; CUDA + AMP and larger batches when a GPU is present.
3. Output: a MONAI bundle (configs/metadata.json, configs/inference.json, models/model.pt, training_log.json).
Reproducible from the seed for a fixed iteration and thread count.
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

from service.segmentation.fine_classes import FINE_CLASS_NAMES, FINE_NUM_CLASSES, FINE_SPACING_MM
from service.segmentation.fine_model import FINE_NETWORK_KWARGS, FINE_ROI_SIZE, build_fine_network
from service.segmentation.model import HU_CLIP, HU_SCALE
from service.training.fine_augment import augment_fine
from service.training.fine_data import build_fine_cache
from service.training.segmentation import loss_fn

logger = logging.getLogger(__name__)

PATCH = (64, 64, 64)
MODEL_VERSION = "0.1.0"


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
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "models" / "model.pt")
    inference = {
        "imports": ["$import torch"],
        "network_def": {"_target_": "monai.networks.nets.UNet", **FINE_NETWORK_KWARGS},
        "roi_size": list(FINE_ROI_SIZE),
        "fine_spacing_mm": FINE_SPACING_MM,
        "hu_clip": list(HU_CLIP),
        "hu_scale": HU_SCALE,
        "orientation": "canonical +L,+P,+S (axis permutation/flips of the CT grid)",
        "sw_overlap": 0.25,
    }
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    from service.training.segmentation import _version

    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "name": "bmd-node vertebra_body_fine",
        "version": MODEL_VERSION,
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "task": "Fine segmentation of vertebral bodies, discs and posterior elements at 1.25 mm in a tube around "
                "the spine (stage 2 after the coarse vertebra_seg model)",
        "description": "MONAI UNet trained on synthetic CT phantoms (bmd-node service.phantom) rendered at 1.25 mm "
                       "with domain randomisation; see README.md",
        "authors": "bmd-node",
        "copyright": "bmd-node contributors",
        "license": "Apache-2.0",
        "data_source": "synthetic phantoms rendered by service.phantom (seeded); no patient data",
        "intended_use": "research / screening support",
        "training": {k: v for k, v in log.items() if k != "loss_curve"},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": list(FINE_ROI_SIZE), "dtype": "float32", "value_range": [-1, 1.5],
                                 "is_patch_data": True}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": FINE_NUM_CLASSES,
                                 "spatial_shape": list(FINE_ROI_SIZE), "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": dict(enumerate(FINE_CLASS_NAMES)),
                                 "channel_def_names": list(FINE_CLASS_NAMES)}},
        },
    }
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")


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
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=cfg.iterations,
                                                pct_start=min(0.3, max(0.05, 5.0 / cfg.iterations)))
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    t0 = time.perf_counter()
    losses: list[float] = []
    it = 0
    net.train()
    for it in range(cfg.iterations):
        xs, ys = [], []
        for _ in range(batch):
            hu, tg = data[int(rng.integers(len(data)))]
            p_hu, p_t = augment_fine(hu, tg, PATCH, rng)
            xs.append(np.clip(p_hu, *HU_CLIP) / HU_SCALE)
            ys.append(p_t)
        x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32)).to(device)
        y = torch.from_numpy(np.stack(ys)).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(float(loss.item()))
        if it % 50 == 0:
            logger.info("it %d/%d loss %.4f (%.0f s)", it, cfg.iterations, np.mean(losses[-50:]),
                        time.perf_counter() - t0)
        if it % 250 == 249:
            write_fine_bundle(cfg.out, {k: v.detach().cpu() for k, v in net.state_dict().items()},
                              _log(cfg, it + 1, losses, t0, device))
        if cfg.minutes is not None and time.perf_counter() - t0 > cfg.minutes * 60:
            logger.info("time cap reached after %d iterations", it + 1)
            break
    log = _log(cfg, it + 1, losses, t0, device)
    write_fine_bundle(cfg.out, {k: v.detach().cpu() for k, v in net.state_dict().items()}, log)
    return log


def _log(cfg: FineTrainConfig, iterations: int, losses: list[float], t0: float, device: torch.device) -> dict[str, Any]:
    return {
        "seed": cfg.seed, "phantom_cases": cfg.cases, "fine_spacing_mm": FINE_SPACING_MM,
        "iterations_done": iterations, "iterations_planned": cfg.iterations, "batch_size": cfg.batch_size,
        "patch": list(PATCH), "learning_rate": cfg.learning_rate, "device": device.type, "threads": cfg.threads,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_loss_mean_100": float(np.mean(losses[-100:])) if losses else None,
        "loss_curve": [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)],
    }
