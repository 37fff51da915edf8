"""The canvas the renderer paints on, the tissue HU of one acquisition, the render options, and the geometric
fields the region painters share (slices, ellipsoids, the body cavity, the diaphragm, cortical shells).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.offline.phantom import physics
from service.offline.phantom.anatomy import Anatomy, cavity
from service.offline.phantom.density import BLOOD_IODINE_MG_ML
from service.offline.phantom.grid import F32, Block, Grid

METAL_HU = 3071.0
"""12-bit CT scale maximum; metal saturates as on most clinical reconstructions."""
PORTAL_VENOUS_IODINE_MG_ML: dict[str, float] = {
    "blood": BLOOD_IODINE_MG_ML, "muscle": 0.3, "myocardium": 2.4, "liver": 2.0, "spleen": 2.6,
    "kidney_cortex": 5.5, "kidney_medulla": 3.2, "bowel_wall": 2.4,
}
"""Iodine (mg/mL) in each tissue in the portal-venous phase: at 120 kVp (~25 HU per mg/mL) blood +125, liver +50,
spleen +65, kidney cortex +140, muscle +8 HU, the usual portal-venous enhancement."""


@dataclass(frozen=True)
class TissueHU:
    """HU of the soft tissues for one acquisition (kVp, contrast)."""

    fat: float
    muscle: float
    skin: float
    lung: float
    blood: float
    myocardium: float
    liver: float
    spleen: float
    kidney_cortex: float
    kidney_medulla: float
    bowel_wall: float
    bowel_content: float
    disc_annulus: float
    disc_nucleus: float
    csf: float
    cartilage: float
    cortical: float
    air: float = -1000.0

    @staticmethod
    def for_acquisition(beam: physics.Beam, contrast: bool, cortical_mineral_mg_cm3: float) -> TissueHU:
        """HU of every tissue from its composition (``physics.MATERIALS``) in ``beam``; with contrast each tissue
        holds ``PORTAL_VENOUS_IODINE_MG_ML`` of iodine."""
        iodine_hu = beam.hu_per_mg("iodine") if contrast else 0.0

        def hu(material: str, tissue: str = "", density: float | None = None) -> float:
            return beam.hu(material, density) + iodine_hu * PORTAL_VENOUS_IODINE_MG_ML.get(tissue, 0.0)

        return TissueHU(
            fat=hu("adipose"),
            muscle=hu("muscle", "muscle"),
            skin=hu("skin"),
            lung=hu("lung"),
            blood=hu("blood", "blood"),
            myocardium=hu("muscle", "myocardium"),
            liver=hu("liver", "liver"),
            spleen=hu("spleen", "spleen"),
            kidney_cortex=hu("kidney", "kidney_cortex"),
            kidney_medulla=hu("kidney", "kidney_medulla"),
            bowel_wall=hu("gi_tract", "bowel_wall"),
            bowel_content=hu("water", density=1.015),
            disc_annulus=hu("cartilage"),
            disc_nucleus=hu("cartilage", density=1.07),
            csf=hu("csf"),
            cartilage=hu("cartilage"),
            cortical=beam.hu_solution("hydroxyapatite", cortical_mineral_mg_cm3),
        )


@dataclass
class Canvas:
    """Label and HU arrays in Fortran order (x fastest) so that axial slices are contiguous."""

    grid: Grid
    labels: npt.NDArray[np.int16]
    hu: npt.NDArray[np.float32]
    texture_amp: npt.NDArray[np.uint8]
    """Per-voxel amplitude (HU, 0-255) of the tissue texture added later."""
    core_hu: dict[int, float] = field(default_factory=dict)
    core_blocks: dict[int, tuple[slice, slice, slice]] = field(default_factory=dict)

    @staticmethod
    def empty(grid: Grid) -> Canvas:
        return Canvas(
            grid=grid,
            labels=np.zeros(grid.shape, dtype=np.int16, order="F"),
            hu=np.full(grid.shape, F32(-1000.0), dtype=F32, order="F"),
            texture_amp=np.zeros(grid.shape, dtype=np.uint8, order="F"),
        )

    def paint(
        self,
        block: Block,
        mask: npt.NDArray[np.bool_],
        label: int,
        hu: float | npt.NDArray[np.float32],
        texture: float = 0.0,
    ) -> None:
        if not mask.any():
            return
        sl = block.slices
        where = np.broadcast_to(mask, block.shape)
        np.copyto(self.labels[sl], np.int16(label), where=where)
        if np.ndim(hu) == 0:
            np.copyto(self.hu[sl], F32(hu), where=where)
        else:
            np.copyto(self.hu[sl], np.broadcast_to(np.asarray(hu, dtype=F32), block.shape), where=where)
        np.copyto(self.texture_amp[sl], np.uint8(min(max(texture, 0.0), 255.0)), where=where)


@dataclass(frozen=True)
class RenderOptions:
    kvp: int
    contrast: bool
    trabecular_hu: dict[VertebraLevel, float]
    table: bool = True
    calibration_rods: tuple[tuple[float, float, float, float], ...] = ()
    """(x, y, radius, hu) of each rod; rods run along z over ``calibration_z``."""
    calibration_box: tuple[float, float, float, float] | None = None
    """(x0, x1, y0, y1) of the calibration phantom body."""
    calibration_z: tuple[float, float] = (0.0, 0.0)
    table_y: float = 0.0
    bone_island: tuple[VertebraLevel, tuple[float, float, float], float] | None = None
    screw_levels: tuple[VertebraLevel, ...] = ()
    blur_xy_mm: float = 0.65
    """In-plane Gaussian sigma of the acquisition blur (the core margin depends on it)."""
    blur_z_mm: float = 0.42
    """Through-plane Gaussian sigma of the slice profile."""
    water_path_cm: float = physics.REFERENCE_WATER_PATH_CM
    """Water-equivalent path of the patient (beam hardening, see physics)."""


def slice_blocks(cv: Canvas, z_lo: float = -1e9, z_hi: float = 1e9) -> Iterator[tuple[int, Block]]:
    """Yield (k, single-slice Block) for the slices with z in [z_lo, z_hi]."""
    g = cv.grid
    zs = g.axis(2)
    for k in np.nonzero((zs >= z_lo) & (zs <= z_hi))[0]:
        yield int(k), Block(g, (slice(0, g.shape[0]), slice(0, g.shape[1]), slice(int(k), int(k) + 1)))


def ellipsoid(blk: Block, c: npt.ArrayLike, axes: tuple[float, float, float]) -> npt.NDArray[np.float32]:
    c = np.asarray(c, dtype=F32)
    return np.sqrt(((blk.X - c[0]) / axes[0]) ** 2 + ((blk.Y - c[1]) / axes[1]) ** 2 + ((blk.Z - c[2]) / axes[2]) ** 2)


def diaphragm_z(anat: Anatomy, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32],
                 cy: npt.NDArray[np.float32], ax: npt.NDArray[np.float32], by: npt.NDArray[np.float32],
                 cx: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """z of the diaphragm surface over (x, y): two domes, lower laterally and posteriorly."""
    dome = np.where(x < cx, F32(anat.diaphragm_right_z), F32(anat.diaphragm_left_z))
    lat = np.maximum((np.abs(x - cx) / ax - 0.45) / 0.55, F32(-0.35))
    post = np.clip((y - cy) / by, -1.0, 1.0)
    return dome - F32(40.0) * lat**2 - F32(30.0) * np.clip(post, 0, 1) ** 2 - F32(8.0) * np.clip(-post, 0, 1) ** 2


def cavity_fields(blk: Block, anat: Anatomy) -> tuple[npt.NDArray[np.float32], ...]:
    z = blk.Z[0, 0, :].astype(np.float64)
    cx, cy, ax, by = (a.astype(F32)[None, None, :] for a in cavity(anat.torso, z))
    rc = np.sqrt(((blk.X - cx) / ax) ** 2 + ((blk.Y - cy) / by) ** 2)
    return rc, cx, cy, ax, by


def shell_mm(g: Grid, thickness_mm: float) -> float:
    """Cortical shell thickness drawn on this grid: at least half a voxel, so coarse grids do not alias it."""
    return max(thickness_mm, 0.5 * max(g.spacing_mm))


def shell_hu(cortical_hu: float, inner_hu: float, thickness_mm: float, drawn_mm: float) -> float:
    """HU of a shell drawn ``drawn_mm`` thick for a true ``thickness_mm``: the same mineral per area."""
    return inner_hu + (cortical_hu - inner_hu) * thickness_mm / drawn_mm
