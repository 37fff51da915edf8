"""Vertebra segmentation + labelling entry point used by the pipeline.

Steps: canonical orientation (+L, +P, +S; exact axis permutation/flips) -> coarse 3 mm grid -> semantic 3-D U-Net
(sliding window; CUDA + autocast when available) -> body instances along the spine -> conventional labelling
with anatomical checks -> per-body native-resolution masks -> back to the CT's own grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from service.domain.levels import VertebraLevel
from service.domain.paths import resolve_model_path
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume
from service.segmentation import classes as cls
from service.segmentation.bundle import load_bundle, softmax_sliding_window
from service.segmentation.features import features_from_masks, fused_with_sacrum
from service.segmentation.fine_stage import (
    FineField,
    coarse_on_fine,
    fine_to_coarse_masks,
    predict_fine,
    rests_on_disc,
    tube_box,
)
from service.segmentation.geometry import (
    FIELD_MIN_HU,
    CanonicalFrame,
    CoarseGrid,
    canonical_frame,
    coarse_grid,
    nearest_native_indices,
    resample_to_coarse,
)
from service.segmentation.instances import FINE_RULES, MIN_BODY_VOLUME_MM3, find_bodies
from service.segmentation.labelling import BodyFeatures, LevelDecision, label_bodies
from service.segmentation.refine import native_body_mask, ownership
from service.segmentation.ribs import rib_attachment
from service.segmentation.settings import SegmentationSettings
from service.segmentation.totalseg_backend import TotalSegmentatorSegmenter

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
        return TotalSegmentatorSegmenter(device=settings.device)
    fine = resolve_model_path(settings.fine_bundle_dir) if settings.fine_stage else None
    return BmdNodeSegmenter(settings.bundle_dir, resolve_device(settings.device), fine)


@dataclass(frozen=True)
class CoarsePrediction:
    frame: CanonicalFrame
    grid: CoarseGrid
    probs: npt.NDArray[np.float32]
    """(classes, x, y, z) softmax on the coarse canonical grid."""
    coarse_hu: npt.NDArray[np.float32]


class BmdNodeSegmenter:
    def __init__(self, bundle_dir: Path, device: torch.device, fine_bundle_dir: Path | None = None) -> None:
        self.device = device
        self.bundle = load_bundle(Path(bundle_dir), device)
        self.fine_bundle = load_bundle(Path(fine_bundle_dir), device) if fine_bundle_dir is not None else None
        self.name = self.bundle.name
        self.version = self.bundle.version
        if self.fine_bundle is not None:
            self.name = f"{self.bundle.name} + {self.fine_bundle.name}"
            self.version = f"{self.bundle.version}+{self.fine_bundle.version}"

    # -- coarse semantic prediction ---------------------------------------------------------------------
    def predict_coarse(self, volume: CTVolume) -> CoarsePrediction:
        frame = canonical_frame(volume.affine_lps, volume.shape)
        grid = coarse_grid(frame, self.bundle.coarse_spacing_mm)
        coarse_hu = resample_to_coarse(frame.to_canonical(volume.hu.astype(np.float32, copy=False)), grid)
        probs = self.predict_probs(coarse_hu)
        return CoarsePrediction(frame, grid, probs, coarse_hu)

    def predict_probs(self, coarse_hu: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        # in plane always the trained window, a small field padded with air: a window shrunk to a 90-105 mm targeted
        # field (30-35 voxels) gave the network too little context to see a body (held-out labelling set 5, narrow
        # fields: 3 of 30 cases without a single body); along the spine short volumes (slabs) get a shorter
        # window, rounded up to the network's stride product
        rx, ry, rz = self.bundle.roi_size
        roi = (rx, ry, min(rz, max(16, int(np.ceil(coarse_hu.shape[2] / 16) * 16))))
        return softmax_sliding_window(self.bundle, self.device, coarse_hu, roi)

    def fine_runner(self, volume: CTVolume, pred: CoarsePrediction) -> FineRunner | None:
        """The fine stage over boxes of this CT (None when the node runs without it)."""
        if self.fine_bundle is None:
            return None
        fine_bundle, canonical_hu = self.fine_bundle, pred.frame.to_canonical(volume.hu)

        def run(box: tuple[slice, slice, slice]) -> FineField:
            return predict_fine(fine_bundle, self.device, canonical_hu, pred.frame, box)

        return run

    # -- full pipeline ---------------------------------------------------------------------------------
    def segment(self, volume: CTVolume) -> SpineSegmentation:
        t0 = time.perf_counter()
        pred = self.predict_coarse(volume)
        t1 = time.perf_counter()
        seg = assemble_segmentation(volume, pred, self.name, self.version, self.fine_runner(volume, pred))
        logger.info("segmentation: coarse model %.1f s, instances/labelling/refinement %.1f s, %d bodies",
                    t1 - t0, time.perf_counter() - t1, len(seg.vertebrae))
        return seg


def body_features(instance_masks: list[npt.NDArray[np.bool_]], probs: npt.NDArray[np.float32],
                  grid: CoarseGrid, sacrum: npt.NDArray[np.bool_] | None = None,
                  rib_volumes_mm3: list[tuple[float, float]] | None = None,
                  coarse_hu: npt.NDArray[np.float32] | None = None,
                  ) -> tuple[list[BodyFeatures], bool]:
    """``rib_volumes_mm3``: (left, right) rib volume per body measured elsewhere (the fine stage); default: from
    the coarse rib class.  ``coarse_hu``: the CT on the coarse grid, for how far the reconstructed field of view
    reaches around each body (default: the whole grid is in the field)."""
    argmax = probs.argmax(axis=0)
    if sacrum is None:
        sacrum = argmax == cls.SACRUM
    votes = []
    for m in instance_masks:
        pt, pl = probs[cls.BODY_THORACIC][m], probs[cls.BODY_LUMBAR][m]
        votes.append(float(np.mean(pt / np.maximum(pt + pl, 1e-6))))
    in_field = None if coarse_hu is None else coarse_hu > FIELD_MIN_HU
    return features_from_masks(instance_masks, argmax == cls.RIB, sacrum, grid.spacing_mm, votes, rib_volumes_mm3,
                               in_field)


def body_likeness(body: npt.NDArray[np.float32], disc: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Body probability plus the disc probability counted in proportion to how body-like the voxel also is.

    On unfamiliar scans the model often splits a vertebral body's probability between body and disc (both
    ~0.3); a real disc stays clearly disc (body/disc << 1) and is not counted.
    """
    ratio = np.clip(body / np.maximum(disc, 1e-6), 0.0, 1.0)
    return (body + disc * ratio).astype(np.float32)


FineRunner = Callable[[tuple[slice, slice, slice]], FineField]
"""Runs the fine model over a canonical-native box of the CT being segmented."""


@dataclass
class BodyInstances:
    """Body instances for labelling (coarse masks) and for the native masks (fine masks when stage 2 ran)."""

    coarse_masks: list[npt.NDArray[np.bool_]]
    fine_masks: list[npt.NDArray[np.bool_]] | None = None
    field: FineField | None = None


def find_instances(pred: CoarsePrediction, body_prob: npt.NDArray[np.float32],
                   share: npt.NDArray[np.float32], fine: FineRunner | None) -> BodyInstances:
    probs, grid = pred.probs, pred.grid
    coarse = [b.mask for b in find_bodies(body_prob, probs[cls.DISC], grid.spacing_mm[0], share)]
    if fine is None or not coarse:
        return BodyInstances(coarse)
    column = np.logical_or.reduce(coarse)
    field = fine(tube_box([column, spine_column_voxels(body_prob, probs[cls.DISC], column, grid)], grid,
                          pred.frame.shape))
    share_fine = coarse_on_fine(share, field, grid)
    # the fine model sees only 1.25 mm detail: bright non-bone (contrast-filled heart, aorta) can look like a body
    # to it; the coarse model, which sees the whole body, vouches for where the spine is
    vouched = ndimage.binary_dilation(np.maximum(body_prob, probs[cls.DISC]) > COARSE_SPINE_EVIDENCE,
                                      iterations=COARSE_EVIDENCE_DILATION_VOX)
    vouched_fine = coarse_on_fine(vouched.astype(np.float32), field, grid) > 0.5
    fine_body = np.where(vouched_fine, field.body, 0.0).astype(np.float32)
    seed = coarse_on_fine(column.astype(np.float32), field, grid) > 0.5
    fine_bodies = find_bodies(fine_body, field.disc, field.grid.spacing_mm[0], share_fine, FINE_RULES, seed)
    if not fine_bodies:
        logger.warning("fine stage found no body in the spine tube; coarse bodies used")
        return BodyInstances(coarse)
    fine_masks = [b.mask for b in fine_bodies]
    return BodyInstances(fine_to_coarse_masks(fine_masks, field, grid), fine_masks, field)


COARSE_SPINE_EVIDENCE = 0.2
"""Coarse body-likeness or disc probability above which the coarse model vouches for spine at a voxel."""
COARSE_EVIDENCE_DILATION_VOX = 3
"""... dilated by this many 3 mm voxels: a fine body may extend ~9 mm beyond the coarse model's spine."""


def spine_column_voxels(body_prob: npt.NDArray[np.float32], disc_prob: npt.NDArray[np.float32],
                        column: npt.NDArray[np.bool_], grid: CoarseGrid) -> npt.NDArray[np.bool_]:
    """Coarse body/disc voxels in sizeable components that reach the detected column: where the coarse model saw
    the spine but did not make a body of it (the lordotic lumbar spine below a chest scan's last body, for
    example); the fine stage's box must cover them."""
    seen = (body_prob > 0.5) | (disc_prob > 0.5)
    lab, n = ndimage.label(seen)
    if n == 0:
        return seen
    near = ndimage.binary_dilation(column, iterations=2)
    touching = np.unique(lab[near & seen])
    sizes = ndimage.sum_labels(seen, lab, index=np.arange(n + 1)) * float(np.prod(grid.spacing_mm))
    keep = [int(i) for i in touching if i > 0 and sizes[int(i)] >= MIN_BODY_VOLUME_MM3 / 2]
    return np.isin(lab, keep)


def _native_mask(inst: BodyInstances, index: int, body_prob: npt.NDArray[np.float32], grid: CoarseGrid,
                 owner: npt.NDArray[np.int32] | None,
                 ) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]] | None:
    """Native-resolution mask of body ``index`` (0-based) in canonical-native coordinates."""
    if inst.field is None or inst.fine_masks is None:
        assert owner is not None
        soft = np.where(owner == index + 1, body_prob, 0.0).astype(np.float32)
        return native_body_mask(soft, grid, inst.coarse_masks[index])
    field, m = inst.field, inst.fine_masks[index]
    # this body's share of the fine body probability: fine voxels nearer to it than to any other body
    coords = np.argwhere(m)
    lo = np.maximum(coords.min(axis=0) - 4, 0)
    hi = np.minimum(coords.max(axis=0) + 5, np.array(m.shape))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    local = np.zeros(m[sl].shape, dtype=np.int32)
    for j, other in enumerate(inst.fine_masks, start=1):
        local[other[sl]] = j
    own = ownership([local == j for j in range(1, len(inst.fine_masks) + 1)]) if local.any() else local
    soft = np.zeros(field.body.shape, dtype=np.float32)
    soft[sl] = np.where(own == index + 1, field.body[sl], 0.0)
    refined = native_body_mask(soft, field.grid, m)
    if refined is None:
        return None
    bbox, mask = refined
    return tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(bbox, field.box, strict=True)), mask


def _lowest_is_s1(inst: BodyInstances, sacrum: npt.NDArray[np.bool_]) -> bool:
    """The lowest body touches the sacrum with no disc in between.  At 1.25 mm a disc under it shows it is L5 (over
    an S1 the fine model did not take for body), whatever the coarse sacrum class touches."""
    if not inst.coarse_masks or not fused_with_sacrum(inst.coarse_masks[-1], sacrum):
        return False
    return inst.field is None or inst.fine_masks is None or not rests_on_disc(inst.fine_masks[-1], inst.field)


def _sacrum_and_s1(inst: BodyInstances, probs: npt.NDArray[np.float32]
                   ) -> tuple[npt.NDArray[np.bool_], int | None, list[str]]:
    """The coarse sacrum (with the lowest body when that is S1), the index of the S1 body (None: no S1 among the
    bodies) and the notes so far."""
    notes: list[str] = []
    if inst.field is not None:
        notes.append(f"bodies from the fine stage ({inst.field.grid.spacing_mm[0]:g} mm)")
    sacrum = probs.argmax(axis=0) == cls.SACRUM
    if not _lowest_is_s1(inst, sacrum):
        return sacrum, None, notes
    # the lowest "body" is fused with the sacrum: it is S1, part of the sacrum for counting
    notes.append("lowest body fused with the sacrum: S1 (not counted as a lumbar body)")
    return sacrum | inst.coarse_masks[-1], len(inst.coarse_masks) - 1, notes


def assemble_segmentation(volume: CTVolume, pred: CoarsePrediction, name: str, version: str,
                          fine: FineRunner | None = None) -> SpineSegmentation:
    probs, grid, frame = pred.probs, pred.grid, pred.frame
    raw_body = probs[cls.BODY_THORACIC] + probs[cls.BODY_LUMBAR]
    share = probs[cls.BODY_THORACIC] / np.maximum(raw_body, 1e-6)
    body_prob = body_likeness(raw_body, probs[cls.DISC])
    inst = find_instances(pred, body_prob, share, fine)
    sacrum, s1_index, notes = _sacrum_and_s1(inst, probs)
    masks = inst.coarse_masks[:s1_index] if s1_index is not None else inst.coarse_masks
    canon_shape = frame.shape
    body_can = np.zeros(canon_shape, dtype=np.int16)
    vertebrae: list[LabelledVertebra] = []
    used: set[int] = set()
    if masks:
        rib_volumes = None
        if inst.field is not None and inst.fine_masks is not None and inst.field.rib is not None:
            # rib heads and necks at 1.25 mm (a short 12th rib is seen; lumbar transverse processes are not ribs)
            rib_volumes = rib_attachment(inst.fine_masks[: len(masks)], inst.field.rib > 0.5,
                                         inst.field.grid.spacing_mm)
        feats, sac = body_features(masks, probs, grid, sacrum, rib_volumes, pred.coarse_hu)
        result = label_bodies(feats, sac)
        notes.extend(result.notes)
        decisions = list(result.decisions)
        cut_flags = [f.cut_by_fov for f in feats]
        if s1_index is not None and inst.field is not None:
            # the fine stage separates the S1 body from the L5/S1 disc and the sacrum below: report it as S1
            lowest = decisions[-1] if decisions else None
            if lowest is not None and lowest.level is not None and int(lowest.level) == int(VertebraLevel.L5):
                decisions.append(LevelDecision(VertebraLevel.S1, lowest.uncertain, lowest.reason, lowest.cues))
                cut_flags.append(False)
        owner = ownership(inst.coarse_masks) if inst.field is None else None
        boxes: dict[int, tuple[slice, slice, slice]] = {}
        for i, d in enumerate(decisions):
            if d.level is None or int(d.level) in used:
                notes.append(f"body {i + 1} left unlabelled ({d.reason})")
                continue
            refined = _native_mask(inst, i, body_prob, grid, owner)
            if refined is None:
                continue
            bbox, mask = refined
            body_can[bbox][mask & (body_can[bbox] == 0)] = int(d.level)  # a view: no name keeps body_can alive
            used.add(int(d.level))
            boxes[int(d.level)] = bbox
        # centroids and cut flags from the native masks (within each body's box: no full-volume scans)
        for cut_flag, d in zip(cut_flags, decisions, strict=True):
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
            cut = cut_flag or bool(coords[:, 2].min() == 0 or coords[:, 2].max() == canon_shape[2] - 1)
            vertebrae.append(LabelledVertebra(
                level=VertebraLevel(level), centroid_lps_mm=tuple(float(v) for v in centroid),  # type: ignore[arg-type]
                level_uncertain=d.uncertain, uncertainty_reason=d.reason if d.uncertain else None,
                cut_by_fov=cut, level_cues=d.cues))
    vertebrae.sort(key=lambda v: int(v.level))
    present = {int(v.level) for v in vertebrae}
    if used - present:
        body_can[np.isin(body_can, list(used - present))] = 0
    # native-grid arrays, one at a time: a canonical array is dropped as soon as its native copy exists (to_native
    # returns the array itself when the grid is already canonical), so a 1500-slice series holds no spare copy
    body_labels = frame.to_native(body_can).astype(np.int16, copy=False)
    del body_can
    posterior = frame.to_native(_posterior_native(probs[cls.POSTERIOR] > 0.5, grid, canon_shape)).astype(
        bool, copy=False)
    clear_where_labelled(posterior, body_labels)
    return SpineSegmentation(body_labels=body_labels, posterior_mask=posterior, vertebrae=tuple(vertebrae),
                             model_name=name, model_version=version, notes=tuple(notes))


def clear_where_labelled(mask: npt.NDArray[np.bool_], labels: npt.NDArray[np.integer],
                         slab_slices: int = 64) -> None:
    """``mask &= labels == 0`` in place, a slab of slices at a time (no whole-volume temporary)."""
    for k in range(0, mask.shape[2], slab_slices):
        mask[:, :, k:k + slab_slices] &= labels[:, :, k:k + slab_slices] == 0


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
