"""The key image of a result, as PNG for the result page: rendered from the stored DICOM Secondary Capture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

MAX_SIDE_PIXELS = 1600
"""Larger key images are scaled down for the page."""


class NoImageError(LookupError):
    """The object has no renderable pixel data; the message says why."""


def _to_uint8(pixels: npt.NDArray[np.generic], ds: pydicom.Dataset) -> npt.NDArray[np.uint8]:
    if pixels.dtype == np.uint8:
        return pixels.astype(np.uint8)
    values = pixels.astype(np.float64)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        low, high = c - w / 2, c + w / 2
    else:
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) / max(high - low, 1e-6) * 255.0
    return np.clip(scaled, 0, 255).astype(np.uint8)


def key_image_png(path: Path) -> bytes:
    """PNG bytes of the first frame of the DICOM object at ``path``; raises NoImageError."""
    try:
        ds = pydicom.dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise NoImageError(f"cannot read the key image ({type(exc).__name__})") from exc
    if "PixelData" not in ds:
        raise NoImageError("the key image object holds no pixel data")
    try:
        pixels = ds.pixel_array
    except (ValueError, RuntimeError, AttributeError) as exc:
        raise NoImageError(f"cannot decode the key image ({type(exc).__name__})") from exc
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    pixels = _to_uint8(pixels, ds)
    if samples == 1 and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = 255 - pixels
    image = Image.fromarray(np.ascontiguousarray(pixels))  # 2-D: L, (rows, columns, 3): RGB
    image.thumbnail((MAX_SIDE_PIXELS, MAX_SIDE_PIXELS))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
