"""Anatomy of one phantom patient: spine, ribs, torso outline, organs (parameters only, no voxels).

Coordinates are DICOM patient coordinates (LPS, mm): x to the patient's left, y posterior, z superior.
The values are drawn by ``anatomy_build.build_anatomy`` (spine, organs) and ``anatomy_torso`` (torso, ribs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel

FRACTURE_TYPES = ("wedge", "biconcave", "crush")
GENANT_WALL_B = 0.8
"""Genant's anterior and posterior heights are read about 10 % of the depth inside the walls: normalised AP
position -0.8 / +0.8 (Genant et al., J Bone Miner Res 1993; the node reads its bands at 6-16 %)."""
WEDGE_EXPONENT = 1.2
WEDGE_EDGE_FACTOR = float((2.0 / (1.0 + GENANT_WALL_B)) ** WEDGE_EXPONENT)
"""A wedge's loss at the anterior edge over its loss at Genant's anterior height (1.135)."""


@dataclass(frozen=True)
class Fracture:
    kind: str
    """'wedge' (anterior height loss), 'biconcave' (middle) or 'crush' (uniform)."""
    height_loss: float
    """Fraction 0.2-0.5 of the normal height lost where Genant's method reads it: at the anterior height of a wedge
    (``GENANT_WALL_B``, 10 % of the depth inside the anterior wall), the middle height of a biconcave body, every
    height of a crush. The phantom's Genant grade follows from this geometry."""

    @property
    def max_loss(self) -> float:
        """The largest fraction lost anywhere (a wedge's anterior edge loses more than its anterior height)."""
        return self.height_loss * (WEDGE_EDGE_FACTOR if self.kind == "wedge" else 1.0)

    def loss_at(self, b_norm: npt.NDArray[np.float32], r_norm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Fraction of height lost at normalised AP position b (-1 anterior .. +1 posterior) and radius r."""
        if self.kind == "wedge":
            reach = np.clip((1.0 - b_norm) / (1.0 + GENANT_WALL_B), 0.0, 2.0 / (1.0 + GENANT_WALL_B))
            return np.float32(self.height_loss) * reach.astype(np.float32) ** np.float32(WEDGE_EXPONENT)
        if self.kind == "biconcave":
            return np.float32(self.height_loss) * np.clip(1.0 - r_norm**2, 0.0, 1.0)
        return np.float32(self.height_loss) * np.ones_like(b_norm)


@dataclass(frozen=True, eq=False)
class VertebraGeom:
    level: VertebraLevel
    centre: npt.NDArray[np.float64]
    frame: npt.NDArray[np.float64]
    """Rows: lateral (to patient left), AP (posterior), axial (superior) unit vectors."""
    width_mm: float
    depth_mm: float
    height_mm: float
    disc_below_mm: float
    cortical_mm: float
    endplate_concavity_mm: float
    waist: float
    osteophyte_mm: float
    fracture: Fracture | None
    kind: str
    """'cervical', 'thoracic', 'lumbar', 'sacral' (S1 fused into the sacrum) or 'sacralised' (L5 fused)."""
    canal_width_mm: float
    canal_depth_mm: float
    pedicle_radius_mm: float
    pedicle_length_mm: float
    transverse_length_mm: float
    transverse_angle_deg: float
    spinous_length_mm: float
    spinous_angle_deg: float

    def to_world(self, a: float, b: float, c: float) -> npt.NDArray[np.float64]:
        return self.centre + a * self.frame[0] + b * self.frame[1] + c * self.frame[2]


@dataclass(frozen=True, eq=False)
class RibGeom:
    side: str
    number: int
    level: VertebraLevel
    path: npt.NDArray[np.float64]
    """(n, 3) centreline points from the head to the anterior bony end."""
    cartilage: npt.NDArray[np.float64] | None
    """(m, 3) costal cartilage centreline from the bony end towards the sternum, or None."""
    radius_mm: float
    z_scale: float


@dataclass(frozen=True, eq=False)
class Torso:
    """Torso outline and cavities as smooth functions of z (sampled on ``z_mm``)."""

    z_mm: npt.NDArray[np.float64]
    spine_y: npt.NDArray[np.float64]
    """AP position of the vertebral-body centre line at each z."""
    spine_x: npt.NDArray[np.float64]
    half_width: npt.NDArray[np.float64]
    """Skin: lateral semi-axis."""
    front_y: npt.NDArray[np.float64]
    back_y: npt.NDArray[np.float64]
    subcut_fat_mm: float
    wall_muscle_mm: float
    back_muscle_mm: float
    exponent: float
    """Superellipse exponent of the skin outline (2 = ellipse, larger = boxier)."""
    cage_half_width: npt.NDArray[np.float64]
    """Lateral semi-axis limit of the thoracic cage (cone-shaped towards the apex; large below mid-thorax)."""
    cage_half_depth: npt.NDArray[np.float64]
    """AP semi-axis limit of the thoracic cage."""

    def at(self, z: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
        return np.interp(np.asarray(z, dtype=np.float64), self.z_mm, getattr(self, name))


@dataclass(frozen=True, eq=False)
class Anatomy:
    vertebrae: dict[VertebraLevel, VertebraGeom]
    sacral_segments: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, float, float]]
    """(centre, frame, width, depth, height) of S2..coccyx (or S2.. after a lumbarised S1)."""
    ribs: list[RibGeom]
    torso: Torso
    diaphragm_right_z: float
    diaphragm_left_z: float
    lung_apex_z: float
    heart_centre: npt.NDArray[np.float64]
    heart_axes_mm: tuple[float, float, float]
    sternum_path: npt.NDArray[np.float64]
    sternum_width_mm: float
    liver_shift: tuple[float, float, float]
    kidney_shift_mm: float
    arms_in_fov: bool
    osteophytes: bool
    cortical_mineral_mg_cm3: float
    """Apparent HA density of the vertebral cortical shell (density.CORTICAL_MINERAL_RANGE_MG_CM3)."""
    lumbar_variant: str
    extras: dict[str, float] = field(default_factory=dict)

    def level_z(self, level: VertebraLevel) -> float:
        return float(self.vertebrae[level].centre[2])


def unit_vector(v: npt.ArrayLike) -> npt.NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def frame_from_tangent(t_up: npt.ArrayLike, rotation_deg: float = 0.0) -> npt.NDArray[np.float64]:
    """Rows (lateral, posterior, superior) with the superior axis along ``t_up`` and a rotation about it."""
    t = unit_vector(t_up)
    lat = np.array([1.0, 0.0, 0.0]) - t[0] * t
    lat = unit_vector(lat)
    ap = np.cross(t, lat)
    if rotation_deg:
        r = np.deg2rad(rotation_deg)
        lat, ap = np.cos(r) * lat + np.sin(r) * ap, -np.sin(r) * lat + np.cos(r) * ap
    return np.stack([lat, ap, t])


@dataclass(frozen=True)
class AnatomyOptions:
    rib_pairs: int = 12
    last_rib_scale: tuple[float, float] = (1.0, 1.0)
    """(left, right) length share of the last rib beyond its tubercle (PhantomSpec.last_rib_scale)."""
    lumbar_variant: str = "normal"
    scoliosis_deg: float = 0.0
    fractures: dict[VertebraLevel, Fracture] = field(default_factory=dict)
    sex: str = "F"
    habitus: str = "average"
    curvature_scale: float = 1.0
    arms_in_fov: bool = False
    osteophytes: bool = False


def cavity(torso: Torso, z: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], ...]:
    """Inner (thoracic/abdominal) cavity ellipse at z: centre x, centre y, lateral and AP semi-axes."""
    z = np.asarray(z, dtype=np.float64)
    inset = torso.subcut_fat_mm + torso.wall_muscle_mm
    hw = np.minimum(torso.at(z, "half_width") - inset, torso.at(z, "cage_half_width"))
    post = torso.at(z, "spine_y") + 38.0
    front = np.maximum(torso.at(z, "front_y") + inset, post - 2.0 * torso.at(z, "cage_half_depth"))
    cx = torso.at(z, "spine_x") * 0.5
    return cx, (front + post) / 2, np.maximum(hw, 20.0), np.maximum((post - front) / 2, 20.0)
