"""Public API of the synthetic CT phantom: spec, generation, writing.

    spec = PhantomSpec(seed=7, region="abdomen", kvp=120)
    phantom = generate(spec)                     # acquisition grid (512 x 512, slice thickness)
    coarse = generate(spec, spacing_mm=(3, 3, 3))  # fast coarse grid for segmentation training
    write_phantom(phantom, Path("out"))           # out/dicom/*.dcm, out/labels.nii.gz, out/truth.json

Geometry: ``Phantom.volume`` follows the project convention (``CTVolume``: hu[i=column, j=row, k=slice], k along
the slice normal of the DICOM orientation). ``Phantom.labels`` is on the same grid. Head-first supine images
have ImageOrientationPatient (1,0,0,0,1,0) (k towards the head); feet-first supine (-1,0,0,0,1,0) (k towards the
feet). Acquisition order (InstanceNumber) is superior -> inferior head-first and inferior -> superior feet-first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.uid import generate_uid

from service.domain.levels import VertebraLevel
from service.domain.volume import CTVolume
from service.offline.phantom import density, physics
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.acquisition import finish, noise_sd_hu, to_dicom_order
from service.offline.phantom.anatomy import Anatomy
from service.offline.phantom.anatomy_build import build_anatomy
from service.offline.phantom.canvas import Canvas
from service.offline.phantom.dicom_writer import write_labels_nifti, write_series
from service.offline.phantom.grid import Grid
from service.offline.phantom.layout import (
    BoneIsland,
    CalibrationSetup,
    acquisition_grid,
    bone_island,
    calibration_setup,
    z_range_mm,
)
from service.offline.phantom.render import RenderOptions, render
from service.offline.phantom.spec import MANUFACTURER, PhantomSpec, random_spec
from service.offline.phantom.subject import Subject, draw_scanner, draw_subject, streams, water_path_cm
from service.offline.phantom.truth import AcquisitionRecord, phantom_truth, vertebra_truth

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Phantom:
    volume: CTVolume
    labels: npt.NDArray[np.int16]
    """Same grid as ``volume.hu`` (see labels.py for the scheme)."""
    truth: dict[str, Any]
    """The truth.json content."""
    spec: PhantomSpec | None = None
    instance_numbers: tuple[int, ...] = field(default=())
    """InstanceNumber of each slice k (acquisition order)."""

    def __post_init__(self) -> None:
        if self.labels.shape != self.volume.hu.shape:
            raise ValueError(f"labels shape {self.labels.shape} differs from the volume {self.volume.hu.shape}")


def body_mask(labels: npt.NDArray[np.integer], level: VertebraLevel) -> npt.NDArray[np.bool_]:
    """Vertebral body of ``level`` including its trabecular core."""
    return L.body_mask(labels, level)


# ------------------------------------------------------------------------------------------- generation


def reconstruction_kernel(noise_scale: float) -> tuple[str, float]:
    """ConvolutionKernel and in-plane resolution (Gaussian sigma, mm) for a noise scale: sharp kernels are noisier.

    Sharp ~0.45 mm, standard ~0.65 mm, smooth ~0.85 mm.
    """
    if noise_scale > 1.6:
        return "SHARP", 0.45
    if noise_scale > 0.7:
        return "STANDARD", 0.65
    return "SMOOTH", 0.85


def generate(
    spec: PhantomSpec,
    *,
    spacing_mm: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
) -> Phantom:
    """Render a phantom: on the acquisition grid of the spec, or on ``spacing_mm`` / ``shape`` (fast, coarse)."""
    t0 = time.perf_counter()
    rs = streams(spec)
    subject = draw_subject(spec, rs)
    anat = build_anatomy(rs["anatomy"], subject.anatomy_options(spec))
    z_range = z_range_mm(spec, anat, rs["defaults"])
    grid, fov_offset = acquisition_grid(spec, anat, rs["defaults"], z_range, spacing_mm, shape)
    size_factor = _size_factor(anat)
    beam = physics.beam(spec.kvp, water_path_cm(size_factor))
    scanner = draw_scanner(spec, rs["scanner"])
    raw_trab = {lv: subject.patient.trabecular_hu(lv, beam, spec.contrast) for lv in density.PHANTOM_LEVELS}
    trab_hu = {lv: scanner.apply(hu) for lv, hu in raw_trab.items()}
    calibration = calibration_setup(spec, anat, z_range, beam, scanner)
    island = bone_island(spec, anat, rs["findings"])
    kernel, blur_mm = reconstruction_kernel(spec.noise_scale)
    opts = _render_options(spec, grid, raw_trab, calibration, island, blur_mm, beam.water_path_cm)
    cv = render(anat, grid, opts, rs["render"])
    _apply_scanner(cv, scanner)
    t_render = time.perf_counter() - t0
    coarse = spacing_mm is not None or shape is not None
    noise = _noise_sd(spec, size_factor, grid, coarse)
    acquired = finish(cv, rs["acquisition"], slice_thickness_mm=spec.slice_thickness_mm, noise_sd=noise,
                      in_plane_blur_mm=blur_mm)
    vertebrae = vertebra_truth(anat, grid, acquired.labels, subject.patient, trab_hu, spec, island)
    hu_arr, affine = to_dicom_order(acquired.hu, grid, spec.feet_first)
    lab_arr, _ = to_dicom_order(acquired.labels, grid, spec.feet_first)
    nz = grid.shape[2]
    # Acquisition order: HFS superior -> inferior with k = 0 the most inferior slice; FFS inferior -> superior
    # with k = 0 the most superior slice. In both cases the first acquired slice is k = nz - 1.
    instance_numbers = tuple(nz - k for k in range(nz))
    uids = _uids(spec, nz, spacing_mm, shape)
    volume = _volume(spec, subject, hu_arr, affine, uids, kernel)
    acq = AcquisitionRecord(grid=grid, affine_lps=affine, shape=tuple(hu_arr.shape), z_range_mm=z_range,
                            fov_offset_mm=fov_offset, noise_sd_hu=noise, convolution_kernel=kernel, coarse_grid=coarse,
                            beam=beam, scanner=scanner)
    truth = phantom_truth(spec, subject, acq, vertebrae, calibration.truth, island, uids)
    logger.info("phantom seed %d rendered in %.2f s (%.2f s anatomy+paint), grid %s", spec.seed,
                time.perf_counter() - t0, t_render, grid.shape)
    return Phantom(volume=volume, labels=lab_arr, truth=truth, spec=spec, instance_numbers=instance_numbers)


def _render_options(spec: PhantomSpec, grid: Grid, trab_hu: dict[VertebraLevel, float],
                    calibration: CalibrationSetup, island: BoneIsland | None, blur_mm: float,
                    water_path: float) -> RenderOptions:
    return RenderOptions(
        kvp=spec.kvp, contrast=spec.contrast, trabecular_hu=trab_hu, table=spec.table,
        calibration_rods=calibration.rods, calibration_box=calibration.box, calibration_z=calibration.z_mm,
        table_y=calibration.table_y_mm, bone_island=island, screw_levels=spec.pedicle_screw_levels,
        blur_xy_mm=blur_mm, blur_z_mm=max(spec.slice_thickness_mm, grid.spacing_mm[2]) / 2.355,
        water_path_cm=water_path,
    )


def _size_factor(anat: Anatomy) -> float:
    """Patient size relative to an average adult (max torso half width / 165 mm): noise and beam hardening."""
    return float(np.max(anat.torso.half_width) / 165.0)


def _apply_scanner(cv: Canvas, scanner: physics.Scanner) -> None:
    """The scanner's HU scale on every rendered value but metal (saturated) and the declared core HU."""
    if scanner.gain == 1.0 and scanner.offset_hu == 0.0:
        return
    keep = cv.labels == L.METAL
    metal = cv.hu[keep]
    cv.hu *= np.float32(scanner.gain)
    cv.hu += np.float32(scanner.offset_hu)
    cv.hu[keep] = metal
    cv.core_hu = {label: scanner.apply(hu) for label, hu in cv.core_hu.items()}


def _noise_sd(spec: PhantomSpec, size_factor: float, grid: Grid, coarse: bool) -> float:
    """Noise SD (HU) of the acquisition; on a coarse grid lowered as averaging the acquired voxels would."""
    noise = 0.0 if spec.noise_free else noise_sd_hu(spec.kvp, spec.slice_thickness_mm, spec.low_dose, size_factor,
                                                    spec.noise_scale)
    if coarse:
        acq_voxel = spec.pixel_spacing_mm**2 * spec.slice_thickness_mm
        noise *= math.sqrt(min(1.0, acq_voxel / float(np.prod(grid.spacing_mm))))
    return noise


def _volume(spec: PhantomSpec, subject: Subject, hu: npt.NDArray[Any], affine: npt.NDArray[np.float64],
            uids: dict[str, Any], kernel: str) -> CTVolume:
    return CTVolume(
        hu=hu.astype(np.float32, copy=False),
        affine_lps=affine,
        study_instance_uid=uids["study"],
        series_instance_uid=uids["series"],
        frame_of_reference_uid=uids["frame_of_reference"],
        sop_instance_uids=tuple(uids["sop"]),
        kvp=float(spec.kvp),
        manufacturer=MANUFACTURER,
        manufacturer_model_name="synthetic CT",
        station_name="PHANTOM",
        convolution_kernel=kernel,
        contrast_bolus_agent="IODINE" if spec.contrast else "",
        patient_sex=subject.patient.sex,
        patient_age_years=subject.patient.age_years,
    )


def _uids(spec: PhantomSpec, nz: int, spacing_mm: Any, shape: Any) -> dict[str, Any]:
    key = hashlib.sha256(repr((spec, spacing_mm, shape)).encode()).hexdigest()
    return {
        "study": generate_uid(entropy_srcs=["bmd-node-phantom", "study", key]),
        "series": generate_uid(entropy_srcs=["bmd-node-phantom", "series", key]),
        "frame_of_reference": generate_uid(entropy_srcs=["bmd-node-phantom", "for", key]),
        "sop": [generate_uid(entropy_srcs=["bmd-node-phantom", "sop", key, str(k)]) for k in range(nz)],
    }


def write_phantom(phantom: Phantom, out_dir: Path, *, jpeg2000: bool = False) -> list[Path]:
    """Write DIR/dicom/*.dcm, DIR/labels.nii.gz and DIR/truth.json; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_series(phantom, out_dir / "dicom", jpeg2000=jpeg2000)
    paths.append(write_labels_nifti(phantom, out_dir / "labels.nii.gz"))
    truth_path = out_dir / "truth.json"
    truth = dict(phantom.truth)
    truth["files"] = {"dicom": "dicom/", "labels": "labels.nii.gz", "transfer_syntax":
                      "JPEG2000Lossless" if jpeg2000 else "ExplicitVRLittleEndian"}
    truth_path.write_text(json.dumps(truth, indent=1))
    paths.append(truth_path)
    return paths


__all__ = ["Phantom", "PhantomSpec", "body_mask", "generate", "random_spec", "write_phantom"]
