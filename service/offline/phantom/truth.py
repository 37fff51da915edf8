"""The truth.json content of one phantom: patient, HU-to-BMD line, acquisition, variants, vertebrae (measured on
the acquired label map), calibration phantom, findings, label scheme and UIDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.offline.phantom import density, physics
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.anatomy import GENANT_WALL_B, Anatomy, Fracture
from service.offline.phantom.grid import Grid
from service.offline.phantom.layout import BoneIsland
from service.offline.phantom.spec import GENERATOR_VERSION, MANUFACTURER, PhantomSpec
from service.offline.phantom.subject import Subject

V = VertebraLevel


@dataclass(frozen=True, eq=False)
class AcquisitionRecord:
    """How the phantom was acquired, as far as truth.json tells."""

    grid: Grid
    affine_lps: npt.NDArray[np.float64]
    """Affine of the volume in DICOM order (after the head-first / feet-first flip)."""
    shape: tuple[int, ...]
    z_range_mm: tuple[float, float]
    fov_offset_mm: tuple[float, float]
    noise_sd_hu: float
    convolution_kernel: str
    coarse_grid: bool
    beam: physics.Beam = field(default_factory=lambda: physics.beam(density.REFERENCE_KVP))
    scanner: physics.Scanner = field(default_factory=physics.Scanner)

    def __post_init__(self) -> None:
        if self.affine_lps.shape != (4, 4):
            raise ValueError(f"affine_lps must be 4x4, got {self.affine_lps.shape}")
        if self.noise_sd_hu < 0:
            raise ValueError(f"noise_sd_hu must be >= 0, got {self.noise_sd_hu}")


def _cut_in_plane(body: npt.NDArray[np.bool_], slices: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """Whether the body reaches the edge of the reconstructed field in plane: the grid's edge or the reconstruction
    circle (outside which the labels are 0), within a voxel. Such a body is not fully visible, like one cut by the
    first or last slice."""
    ii, jj = np.nonzero(body.any(axis=2))
    i = ii + slices[0].start
    j = jj + slices[1].start
    nx, ny = shape[0], shape[1]
    if i.min() == 0 or j.min() == 0 or i.max() == nx - 1 or j.max() == ny - 1:
        return True
    r = min(nx, ny) / 2
    return bool((((i - (nx - 1) / 2) ** 2 + (j - (ny - 1) / 2) ** 2) > (r - 1.5) ** 2).any())


def vertebra_truth(anat: Anatomy, grid: Grid, labels: npt.NDArray[np.int16], patient: density.PatientDensity,
                   trab_hu: dict[VertebraLevel, float], spec: PhantomSpec,
                   island: BoneIsland | None) -> list[dict[str, Any]]:
    """One entry per level whose body is on the grid (``labels`` on ``grid``, before the DICOM-order flip)."""
    out = []
    aff = grid.affine()
    for lv in density.PHANTOM_LEVELS:
        vg = anat.vertebrae[lv]
        r = max(vg.width_mm, vg.depth_mm, vg.height_mm) / 2 + 10.0
        blk = grid.block(vg.centre - r, vg.centre + r)
        if blk is None:
            continue
        sub = labels[blk.slices]
        body = (sub == L.body_shell(lv)) | (sub == L.body_core(lv))
        n = int(body.sum())
        if n == 0:
            continue
        idx = np.argwhere(body).mean(axis=0) + np.array([s.start for s in blk.slices])
        centroid = aff[:3, :3] @ idx + aff[:3, 3]
        kz = np.nonzero(body.any(axis=(0, 1)))[0] + blk.slices[2].start
        cut = bool(kz.min() == 0 or kz.max() == grid.shape[2] - 1) or _cut_in_plane(body, blk.slices, grid.shape)
        f = vg.fracture
        h = vg.height_mm

        def height(b_norm: float, r_norm: float, conc: float, fr: Fracture | None = f, hh: float = h) -> float:
            loss = 0.0 if fr is None else float(fr.loss_at(np.float32(b_norm), np.float32(r_norm)))
            return round(hh * (1.0 - loss) - 2.0 * conc, 2)

        conc = vg.endplate_concavity_mm
        wall = GENANT_WALL_B
        back = GENANT_WALL_B - 0.1  # the mid-sagittal posterior wall is notched from +0.8 on (render_spine)
        out.append({
            "level": lv.name,
            "bmd_mg_cm3": patient.bmd_by_level[lv],
            "trabecular_hu": round(trab_hu[lv], 4),
            "centroid_lps_mm": [round(float(c), 3) for c in centroid],
            "model_centre_lps_mm": [round(float(c), 3) for c in vg.centre],
            "axis_superior": [round(float(c), 5) for c in vg.frame[2]],
            "axis_posterior": [round(float(c), 5) for c in vg.frame[1]],
            "fractured": f is not None,
            "fracture": None if f is None else {"kind": f.kind, "height_loss": round(f.height_loss, 4),
                                                "max_height_loss": round(f.max_loss, 4)},
            "heights_mm": {"anterior": height(-wall, wall, conc * (1 - wall**2)), "middle": height(0.0, 0.0, conc),
                           "posterior": height(back, back, conc * (1 - back**2))},
            "body_size_mm": {"width": round(vg.width_mm, 2), "depth": round(vg.depth_mm, 2),
                             "height": round(vg.height_mm, 2)},
            "voxel_count": n,
            "core_voxel_count": int((sub == L.body_core(lv)).sum()),
            "cut_by_fov": cut,
            "bone_island": island is not None and island[0] == lv,
            "metal": lv in spec.pedicle_screw_levels,
            "kind": vg.kind,
        })
    return out


def phantom_truth(spec: PhantomSpec, subject: Subject, acq: AcquisitionRecord, vertebrae: list[dict[str, Any]],
                  calibration: dict[str, Any] | None, island: BoneIsland | None,
                  uids: dict[str, Any]) -> dict[str, Any]:
    """The truth.json content (without its ``files`` entry, added when written)."""
    patient = subject.patient
    slope, intercept = density.hu_to_bmd_line(spec.kvp, acq.beam.water_path_cm, acq.scanner)
    s120, i120 = density.hu_to_bmd_line(120, acq.beam.water_path_cm, acq.scanner)
    return {
        "generator": {"name": MANUFACTURER, "version": GENERATOR_VERSION},
        "seed": spec.seed,
        "spec": spec.to_json_dict(),
        "patient": {
            "sex": patient.sex,
            "age_years": patient.age_years,
            "category": patient.category,
            "l1_l2_bmd_mg_cm3": round(patient.l1_l2_bmd_mg_cm3, 3),
            "bmd_by_level_mg_cm3": {lv.name: b for lv, b in patient.bmd_by_level.items()},
            "habitus": subject.habitus,
        },
        "hu_to_bmd": {"slope": slope, "intercept": intercept, "kvp": spec.kvp,
                      "applies_to": "unenhanced trabecular bone of this acquisition (kVp, patient size, scanner "
                                    "gain and offset), from the phantom's physics; bmd = slope * hu + intercept"},
        "hu_to_bmd_120kvp": {"slope": s120, "intercept": i120},
        "contrast_trabecular_rise_hu": round(acq.scanner.gain * density.contrast_trabecular_rise_hu(
            spec.kvp, acq.beam.water_path_cm), 3) if spec.contrast else 0.0,
        "acquisition": _acquisition_truth(spec, acq),
        "variants": _variants_truth(spec, subject),
        "vertebrae": vertebrae,
        "calibration_phantom": calibration,
        "findings": _findings_truth(spec, subject, island),
        "label_scheme": {
            "body_shell": "1..25 = VertebraLevel value", "trabecular_core": "200 + level value",
            "posterior_elements": "40 + level value", "left_ribs": "71..83", "right_ribs": "91..103",
            **{name: value for value, name in L.NAMES.items()},
        },
        "uids": {"study": uids["study"], "series": uids["series"], "frame_of_reference": uids["frame_of_reference"]},
    }


def _acquisition_truth(spec: PhantomSpec, acq: AcquisitionRecord) -> dict[str, Any]:
    grid = acq.grid
    affine = acq.affine_lps
    return {
        "region": spec.region,
        "kvp": spec.kvp,
        "contrast": spec.contrast,
        "low_dose": spec.low_dose,
        "noise_free": spec.noise_free,
        "noise_sd_hu": round(acq.noise_sd_hu, 3),
        "convolution_kernel": acq.convolution_kernel,
        "slice_thickness_mm": spec.slice_thickness_mm,
        "pixel_spacing_mm": [grid.spacing_mm[1], grid.spacing_mm[0]],
        "spacing_mm": list(grid.spacing_mm),
        "shape": list(acq.shape),
        "n_slices": grid.shape[2],
        "patient_position": "FFS" if spec.feet_first else "HFS",
        "image_orientation_patient": [float(v) for v in (affine[:3, 0] / grid.spacing_mm[0])]
        + [float(v) for v in (affine[:3, 1] / grid.spacing_mm[1])],
        "affine_lps": affine.tolist(),
        "acquisition_order": "superior_to_inferior" if not spec.feet_first else "inferior_to_superior",
        "fov_z_range_mm": [round(acq.z_range_mm[0], 3), round(acq.z_range_mm[1], 3)],
        "fov_offset_mm": list(acq.fov_offset_mm),
        "coarse_grid": acq.coarse_grid,
        "water_path_cm": round(acq.beam.water_path_cm, 3),
        "mean_detected_energy_kev": round(acq.beam.mean_energy_kev, 2),
        "scanner_gain": acq.scanner.gain,
        "scanner_offset_hu": acq.scanner.offset_hu,
    }


def _variants_truth(spec: PhantomSpec, subject: Subject) -> dict[str, Any]:
    return {
        "rib_pairs": spec.rib_pairs,
        "last_rib_level": VertebraLevel(int(V.T1) + spec.rib_pairs - 1).name,
        "last_rib_scale": [round(v, 3) for v in spec.last_rib_scale],
        "lumbar_variant": spec.lumbar_variant,
        "transitional": spec.lumbar_variant != "normal",
        "lumbar_vertebra_count": 5 + (1 if spec.lumbar_variant == "lumbarised_s1" else 0)
        - (1 if spec.lumbar_variant == "sacralised_l5" else 0),
        "scoliosis_deg": spec.scoliosis_deg,
        "osteophytes": subject.osteophytes,
        "arms_in_fov": subject.arms_in_fov,
    }


def _findings_truth(spec: PhantomSpec, subject: Subject, island: BoneIsland | None) -> dict[str, Any]:
    return {
        "fractures": [{"level": lv.name, "kind": f.kind, "height_loss": round(f.height_loss, 4)}
                      for lv, f in subject.fractures.items()],
        "bone_island": None if island is None else {"level": island[0].name,
                                                    "centre_lps_mm": [round(v, 2) for v in island[1]],
                                                    "radius_mm": round(island[2], 2)},
        "pedicle_screw_levels": [lv.name for lv in spec.pedicle_screw_levels],
    }
