"""Vertebra segmentation + labelling entry point used by the pipeline.

Steps: canonical orientation (+L, +P, +S; exact axis permutation/flips) -> coarse 3 mm grid -> semantic 3-D U-Net
(sliding window; CUDA + autocast when available) -> body instances along the spine -> conventional labelling
with anatomical checks -> per-body native-resolution masks -> back to the CT's own grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from service.config import SegmentationSettings  # the [segmentation] section is this step's settings (one type)
from service.domain.levels import VertebraLevel
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume
from service.segmentation import classes as cls
from service.segmentation.geometry import (
    CanonicalFrame,
    CoarseGrid,
    canonical_frame,
    coarse_grid,
    nearest_native_indices,
    resample_to_coarse,
)
from service.segmentation.instances import find_bodies
from service.segmentation.labelling import BodyFeatures, features_from_masks, fused_with_sacrum, label_bodies
from service.segmentation.refine import native_body_mask, ownership

logger = logging.getLogger(__name__)


class Segmenter(Protocol):
    name: str
    version: str

    def segment(self, volume: CTVolume) -> SpineSegmentation: ...


def resolve_device(device: str) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda")
    return torch.device("cpu")


def load_segmenter(settings: SegmentationSettings) -> Segmenter:
    """Load the model once (call once per worker process and reuse the Segmenter)."""
    if settings.backend == "totalsegmentator":
        from service.segmentation.totalseg_backend import TotalSegmentatorSegmenter

        return TotalSegmentatorSegmenter(device=settings.device)
    return BmdNodeSegmenter(settings.bundle_dir, resolve_device(settings.device))


@dataclass(frozen=True)
class CoarsePrediction:
    frame: CanonicalFrame
    grid: CoarseGrid
    probs: npt.NDArray[np.float32]
    """(classes, x, y, z) softmax on the coarse canonical grid."""
    coarse_hu: npt.NDArray[np.float32]


class BmdNodeSegmenter:
    def __init__(self, bundle_dir: Path, device: torch.device) -> None:
        from service.segmentation.bundle import load_bundle

        self.device = device
        self.bundle = load_bundle(Path(bundle_dir), device)
        self.name = self.bundle.name
        self.version = self.bundle.version

    # -- coarse semantic prediction ---------------------------------------------------------------------
    def predict_coarse(self, volume: CTVolume) -> CoarsePrediction:
        frame = canonical_frame(volume.affine_lps, volume.shape)
        grid = coarse_grid(frame, self.bundle.coarse_spacing_mm)
        coarse_hu = resample_to_coarse(frame.to_canonical(volume.hu.astype(np.float32, copy=False)), grid)
        probs = self.predict_probs(coarse_hu)
        return CoarsePrediction(frame, grid, probs, coarse_hu)

    def predict_probs(self, coarse_hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        from monai.inferers import sliding_window_inference

        lo, hi = self.bundle.hu_clip
        x = torch.from_numpy((np.clip(coarse_hu, lo, hi) / self.bundle.hu_scale).astype(np.float32))[None, None]
        x = x.to(self.device)
        # pad with air so that small volumes reach the window size (sliding_window pads with a constant too)
        pad_value = lo / self.bundle.hu_scale
        shape = x.shape[2:]
        roi = tuple(min(r, max(16, int(np.ceil(s / 16) * 16))) for r, s in zip(self.bundle.roi_size, shape,
                                                                                   strict=True))
        pads = []
        for s, r in zip(reversed(shape), reversed(roi), strict=True):
            extra = max(0, r - s)
            pads.extend([extra // 2, extra - extra // 2])
        if any(pads):
            x = torch.nn.functional.pad(x, pads, value=pad_value)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = sliding_window_inference(x, roi, 2, self.bundle.network, overlap=0.25, mode="gaussian")
            else:
                logits = sliding_window_inference(x, roi, 1, self.bundle.network, overlap=0.25, mode="gaussian")
            probs = torch.softmax(logits.float(), dim=1)[0]
        if any(pads):
            sl = [slice(None)]
            for a in range(3):
                before = pads[2 * (2 - a)]
                sl.append(slice(before, before + shape[a]))
            probs = probs[tuple(sl)]
        return probs.cpu().numpy().astype(np.float32)

    # -- full pipeline ---------------------------------------------------------------------------------
    def segment(self, volume: CTVolume) -> SpineSegmentation:
        t0 = time.perf_counter()
        pred = self.predict_coarse(volume)
        t1 = time.perf_counter()
        seg = assemble_segmentation(volume, pred, self.name, self.version)
        logger.info("segmentation: coarse model %.1f s, instances/labelling/refinement %.1f s, %d bodies",
                    t1 - t0, time.perf_counter() - t1, len(seg.vertebrae))
        return seg


def body_features(instance_masks: list[npt.NDArray[np.bool_]], probs: npt.NDArray[np.float32],
                  grid: CoarseGrid, sacrum: npt.NDArray[np.bool_] | None = None,
                  ) -> tuple[list[BodyFeatures], bool, float]:
    argmax = probs.argmax(axis=0)
    if sacrum is None:
        sacrum = argmax == cls.SACRUM
    votes = []
    for m in instance_masks:
        pt, pl = probs[cls.BODY_THORACIC][m], probs[cls.BODY_LUMBAR][m]
        votes.append(float(np.mean(pt / np.maximum(pt + pl, 1e-6))))
    return features_from_masks(instance_masks, argmax == cls.RIB, sacrum, grid.spacing_mm, votes)


def body_likeness(body: npt.NDArray[np.float32], disc: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Body probability plus the disc probability counted in proportion to how body-like the voxel also is.

    On unfamiliar scans the model often splits a vertebral body's probability between body and disc (both
    ~0.3); a real disc stays clearly disc (body/disc << 1) and is not counted.
    """
    ratio = np.clip(body / np.maximum(disc, 1e-6), 0.0, 1.0)
    return (body + disc * ratio).astype(np.float32)


def assemble_segmentation(volume: CTVolume, pred: CoarsePrediction, name: str, version: str) -> SpineSegmentation:
    probs, grid, frame = pred.probs, pred.grid, pred.frame
    raw_body = probs[cls.BODY_THORACIC] + probs[cls.BODY_LUMBAR]
    share = probs[cls.BODY_THORACIC] / np.maximum(raw_body, 1e-6)
    body_prob = body_likeness(raw_body, probs[cls.DISC])
    instances = find_bodies(body_prob, probs[cls.DISC], grid.spacing_mm[0], share)
    masks = [b.mask for b in instances]
    notes_pre: list[str] = []
    sacrum = probs.argmax(axis=0) == cls.SACRUM
    if masks and fused_with_sacrum(masks[-1], sacrum):
        # the lowest "body" is fused with the sacrum: it is S1, part of the sacrum for counting
        sacrum = sacrum | masks[-1]
        masks = masks[:-1]
        notes_pre.append("lowest body fused with the sacrum: treated as S1 (not counted as a lumbar body)")
    canon_shape = frame.shape
    body_can = np.zeros(canon_shape, dtype=np.int16)
    notes: list[str] = list(notes_pre)
    vertebrae: list[LabelledVertebra] = []
    used: set[int] = set()
    if masks:
        feats, sac, fov_top = body_features(masks, probs, grid, sacrum)
        result = label_bodies(feats, sac, fov_top)
        notes.extend(result.notes)
        owner = ownership(masks)
        boxes: dict[int, tuple[slice, slice, slice]] = {}
        for i, (m, d) in enumerate(zip(masks, result.decisions, strict=True), start=1):
            if d.level is None or int(d.level) in used:
                notes.append(f"body {i} left unlabelled ({d.reason})")
                continue
            soft = np.where(owner == i, body_prob, 0.0).astype(np.float32)
            refined = native_body_mask(soft, grid, m)
            if refined is None:
                continue
            bbox, mask = refined
            region = body_can[bbox]
            region[mask & (region == 0)] = int(d.level)
            used.add(int(d.level))
            boxes[int(d.level)] = bbox
        # centroids and cut flags from the native masks (within each body's box: no full-volume scans)
        for f, d in zip(feats, result.decisions, strict=True):
            if d.level is None or int(d.level) not in used:
                continue
            level = int(d.level)
            bbox = boxes[level]
            coords = np.argwhere(body_can[bbox] == level)
            if len(coords) == 0:
                used.discard(level)
                continue
            coords = coords + np.array([sl.start for sl in bbox])
            centroid = frame.affine_lps[:3, :3] @ coords.mean(axis=0) + frame.affine_lps[:3, 3]
            cut = f.cut_by_fov or bool(coords[:, 2].min() == 0 or coords[:, 2].max() == canon_shape[2] - 1)
            vertebrae.append(LabelledVertebra(
                level=VertebraLevel(level), centroid_lps_mm=tuple(float(v) for v in centroid),  # type: ignore[arg-type]
                level_uncertain=d.uncertain, uncertainty_reason=d.reason if d.uncertain else None,
                cut_by_fov=cut))
    vertebrae.sort(key=lambda v: int(v.level))
    present = {int(v.level) for v in vertebrae}
    if used - present:
        body_can[np.isin(body_can, list(used - present))] = 0
    posterior_can = _posterior_native(probs[cls.POSTERIOR] > 0.5, grid, canon_shape)
    body_labels = frame.to_native(body_can).astype(np.int16)
    posterior = frame.to_native(posterior_can).astype(bool)
    posterior &= body_labels == 0
    return SpineSegmentation(body_labels=body_labels, posterior_mask=posterior, vertebrae=tuple(vertebrae),
                             model_name=name, model_version=version, notes=tuple(notes))


def _posterior_native(coarse_mask: npt.NDArray[np.bool_], grid: CoarseGrid,
                      canon_shape: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    out = np.zeros(canon_shape, dtype=bool)
    if not coarse_mask.any():
        return out
    coords = np.argwhere(coarse_mask)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    bbox = []
    for a in range(3):
        n, m = grid.canonical_shape[a], grid.shape[a]
        bbox.append(slice(max(0, int(np.floor(lo[a] * n / m)) - 1), min(n, int(np.ceil(hi[a] * n / m)) + 1)))
    idx = [nearest_native_indices(grid, a, np.arange(bbox[a].start, bbox[a].stop)) for a in range(3)]
    out[tuple(bbox)] = coarse_mask[np.ix_(*idx)]
    return out
