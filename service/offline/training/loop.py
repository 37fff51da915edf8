"""What both segmentation recipes share: the optimisation loop and the MONAI bundle files.

``fit``: AdamW + one-cycle LR, cross-entropy + soft Dice (``loss_fn``), CUDA + AMP when the device is a GPU, a
checkpoint every 250 iterations and an optional wall-clock cap.  ``save_bundle``: configs/inference.json,
configs/metadata.json, models/model.pt and training_log.json of a MONAI bundle.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from service.segmentation.classes import IGNORE
from service.segmentation.model import HU_CLIP, HU_SCALE

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY = 250
BUNDLE_VERSION = "0.1.0"

Batch = tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]
"""(inputs (n, 1, x, y, z) after the fixed HU transform, targets (n, x, y, z))."""


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice over the foreground classes; IGNORE voxels excluded from both."""
    ce = torch.nn.functional.cross_entropy(logits, target.long(), ignore_index=IGNORE)
    valid = (target != IGNORE).unsqueeze(1).float()
    probs = torch.softmax(logits.float(), dim=1) * valid
    t = target.clone()
    t[t == IGNORE] = 0
    onehot = torch.nn.functional.one_hot(t.long(), logits.shape[1]).permute(0, 4, 1, 2, 3).float() * valid
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1.0 - dice[1:]).mean()


def stack_batch(patches: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]]) -> Batch:
    """Augmented (HU, target) patches -> network inputs (fixed HU transform) and targets."""
    xs = [np.clip(hu, *HU_CLIP) / HU_SCALE for hu, _ in patches]
    return np.stack(xs)[:, None].astype(np.float32), np.stack([t for _, t in patches])


@dataclass(frozen=True)
class FitResult:
    iterations_done: int
    losses: list[float]
    started: float
    """time.perf_counter() at the first iteration."""


def fit(net: torch.nn.Module, next_batch: Callable[[], Batch], *, iterations: int, learning_rate: float,
        device: torch.device, checkpoint: Callable[[FitResult], object], minutes: float | None = None) -> FitResult:
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=iterations,
                                                pct_start=min(0.3, max(0.05, 5.0 / iterations)))
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    t0 = time.perf_counter()
    losses: list[float] = []
    it = 0
    net.train()
    for it in tqdm(range(iterations), desc="training", unit="it", disable=None):  # no bar when not a terminal
        xs, ys = next_batch()
        x = torch.from_numpy(xs).to(device)
        y = torch.from_numpy(ys).to(device)
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
            logger.info("it %d/%d loss %.4f (%.0f s)", it, iterations, np.mean(losses[-50:]),
                        time.perf_counter() - t0)
        if it % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
            checkpoint(FitResult(it + 1, losses, t0))
        if minutes is not None and time.perf_counter() - t0 > minutes * 60:
            logger.info("time cap reached after %d iterations", it + 1)
            break
    return FitResult(it + 1, losses, t0)


def fit_and_write(net: torch.nn.Module, next_batch: Callable[[], Batch], write: Callable[[FitResult], dict[str, Any]],
                  *, iterations: int, learning_rate: float, device: torch.device,
                  minutes: float | None = None) -> dict[str, Any]:
    """``fit``, with ``write`` (bundle + training log for a result; returns the log) as the checkpoint and once more
    at the end; returns the final log."""
    result = fit(net, next_batch, iterations=iterations, learning_rate=learning_rate, device=device,
                 checkpoint=write, minutes=minutes)
    return write(result)


def check_sizes(cases: int, iterations: int, batch_size: int) -> None:
    """A recipe's counts must be positive."""
    for name, value in (("cases", cases), ("iterations", iterations), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


GPU_BATCH_FACTOR = 4
"""A GPU trains on this many times the configured batch (same iteration count)."""


def training_device(seed: int, threads: int, batch_size: int) -> tuple[torch.device, int]:
    """(CUDA when present, else the CPU with ``threads`` threads; the batch for it); torch's generator seeded."""
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return torch.device("cuda" if cuda else "cpu"), batch_size * (GPU_BATCH_FACTOR if cuda else 1)


def load_case(path: Path) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
    """A cached training case (``hu``, ``target`` of an .npz)."""
    with np.load(path) as z:
        return z["hu"].astype(np.int16), z["target"].astype(np.uint8)


def loss_summary(result: FitResult) -> dict[str, Any]:
    losses = result.losses
    return {
        "train_seconds": round(time.perf_counter() - result.started, 1),
        "final_loss_mean_100": float(np.mean(losses[-100:])) if losses else None,
        "loss_curve": [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)],
    }


def cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def save_bundle(out: Path, state: dict[str, torch.Tensor], log: dict[str, Any], *, name: str, task: str,
                description: str, intended_use: str, network_kwargs: dict[str, Any],
                roi_size: Sequence[int], grid: dict[str, float], class_names: Sequence[str]) -> None:
    """Write the bundle; ``grid`` is the inference.json entry of the model's grid (e.g. coarse_spacing_mm)."""
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "models" / "model.pt")
    inference = {
        "imports": ["$import torch"],
        "network_def": {"_target_": "monai.networks.nets.UNet", **network_kwargs},
        "roi_size": list(roi_size),
        **grid,
        "hu_clip": list(HU_CLIP),
        "hu_scale": HU_SCALE,
        "orientation": "canonical +L,+P,+S (axis permutation/flips of the CT grid)",
        "sw_overlap": 0.25,
    }
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "name": name,
        "version": BUNDLE_VERSION,
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "task": task,
        "description": description,
        "authors": "bmd-node",
        "copyright": "bmd-node contributors",
        "license": "Apache-2.0",
        "data_source": "synthetic phantoms rendered by service.offline.phantom (seeded); no patient data",
        "intended_use": intended_use,
        "training": {k: v for k, v in log.items() if k != "loss_curve"},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": list(roi_size), "dtype": "float32", "value_range": [-1, 1.5],
                                 "is_patch_data": True}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(class_names),
                                 "spatial_shape": list(roi_size), "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": dict(enumerate(class_names)),
                                 "channel_def_names": list(class_names)}},
        },
    }
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except Exception:
        return "unknown"
