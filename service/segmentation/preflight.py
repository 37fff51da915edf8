"""The segmentation model's start-up check (issue 19 pt 6): a node whose model is missing or broken must not start.

* ``required_model_files(settings)``: the bundle files the configured backend reads (no torch: cheap, for a first
  check in the ``serve`` parent before anything else runs);
* ``check_model_files(settings)``: each of them present, a regular file, readable and not empty, the JSON valid and
  the weights a whole zip archive (torch.save's format; every member's CRC checked, still without torch);
* ``load_checked_segmenter(settings)``: the files checked, each weights file opened by torch on its own (so that a
  truncated or corrupt ``model.pt`` is named), the segmenter loaded and one tiny forward pass run through the same
  inference path as a job (sliding window, softmax) on a 16 mm^3 block of air: its output must have the bundle's
  classes and be finite.

Every failure raises ModelPreflightError, whose message names the file and the problem.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from service.domain.paths import resolve_model_path
from service.segmentation.settings import SegmentationSettings

log = logging.getLogger(__name__)

BUNDLE_FILES = (Path("configs") / "metadata.json", Path("configs") / "inference.json", Path("models") / "model.pt")
WARM_BLOCK_VOXELS = 16
"""Edge of the warm-up block: the networks' stride product (4 strides of 2)."""
AIR_HU = -1000.0


class ModelPreflightError(Exception):
    """The configured segmentation model cannot be used; ``path`` is the file (or folder) at fault."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"segmentation model file {path}: {problem}")
        self.path = path
        self.problem = problem


def bundle_dirs(settings: SegmentationSettings) -> tuple[Path, ...]:
    """The bundle folders the configured backend loads (resolved like the loader does); none for TotalSegmentator,
    which manages its own weights."""
    if settings.backend != "bmd-node":
        return ()
    dirs = [settings.bundle_dir, *([settings.fine_bundle_dir] if settings.fine_stage else [])]
    return tuple(resolve_model_path(Path(d)) for d in dirs)


def required_model_files(settings: SegmentationSettings) -> tuple[Path, ...]:
    return tuple(folder / name for folder in bundle_dirs(settings) for name in BUNDLE_FILES)


def check_model_files(settings: SegmentationSettings) -> tuple[Path, ...]:
    """Each bundle file present, a regular file, readable and not empty; returns them."""
    files = required_model_files(settings)
    for path in files:
        if not path.exists():
            raise ModelPreflightError(path, "missing")
        if not path.is_file():
            raise ModelPreflightError(path, "not a regular file")
        if not os.access(path, os.R_OK):
            raise ModelPreflightError(path, "not readable by this user")
        if path.stat().st_size == 0:
            raise ModelPreflightError(path, "empty")
        if path.suffix == ".pt":
            _check_weights_archive(path)
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                raise ModelPreflightError(path, f"not valid JSON ({exc})") from exc
    return files


def _check_weights_archive(path: Path) -> None:
    """Without torch: ``torch.save`` writes a zip archive (since PyTorch 1.6); a truncated or damaged file fails
    its central directory or a member's CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelPreflightError(path, f"not a readable torch weights archive ({type(exc).__name__}: {exc}): "
                                        f"truncated or damaged") from exc
    if bad_member is not None:
        raise ModelPreflightError(path, f"damaged: the CRC of its member {bad_member} does not match")


def _check_weights_file(path: Path) -> None:
    import torch  # noqa: PLC0415  # heavy (seconds): only where the model is loaded anyway

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, unpickling refused...: all mean a broken file
        raise ModelPreflightError(path, f"not a readable torch weights file ({type(exc).__name__}: "
                                        f"{str(exc)[:200]})") from exc
    if not isinstance(state, dict) or not state:
        raise ModelPreflightError(path, "holds no state dict of weights")


def load_checked_segmenter(settings: SegmentationSettings) -> Any:
    """The configured segmenter, loaded and warmed, or ModelPreflightError naming the file at fault."""
    # torch and MONAI (seconds to import) load with the model
    from service.segmentation.bundle import BundleError  # noqa: PLC0415
    from service.segmentation.inference import load_segmenter  # noqa: PLC0415

    check_model_files(settings)
    for folder in bundle_dirs(settings):
        _check_weights_file(folder / "models" / "model.pt")
    try:
        segmenter = load_segmenter(settings)
    except BundleError as exc:  # its message names the file; the path is the bundle it names
        named = [d for d in bundle_dirs(settings) if str(d) in str(exc)]
        raise ModelPreflightError(named[-1] if named else Path(settings.bundle_dir), str(exc)) from exc
    for bundle_dir, bundle in zip(bundle_dirs(settings), _bundles(segmenter), strict=False):
        warm_forward_pass(bundle, getattr(segmenter, "device", None), bundle_dir)
    log.info("segmentation model checked: %d bundle file(s), warm-up forward pass on %s",
             len(required_model_files(settings)), getattr(segmenter, "device", "?"))
    return segmenter


def _bundles(segmenter: Any) -> list[Any]:
    return [b for b in (getattr(segmenter, "bundle", None), getattr(segmenter, "fine_bundle", None)) if b is not None]


def warm_forward_pass(bundle: Any, device: Any, bundle_dir: Path) -> None:
    """One forward pass through the job's inference path on a block of air: the classes and finite values."""
    from service.segmentation.bundle import softmax_sliding_window  # noqa: PLC0415  # torch, as above

    edge = WARM_BLOCK_VOXELS
    try:
        probs = softmax_sliding_window(bundle, device, np.full((edge, edge, edge), AIR_HU, np.float32),
                                       (edge, edge, edge))
    except Exception as exc:  # a network that cannot run on this device / input is a broken model for the node
        raise ModelPreflightError(bundle_dir / "models" / "model.pt",
                                  f"warm-up forward pass failed ({type(exc).__name__}: {str(exc)[:200]})") from exc
    expected = len(bundle.class_names) or probs.shape[0]
    if probs.shape != (expected, edge, edge, edge) or not np.isfinite(probs).all():
        raise ModelPreflightError(bundle_dir / "models" / "model.pt",
                                  f"warm-up forward pass gave shape {probs.shape} (expected {expected} classes) "
                                  f"or non-finite values")
