"""Where a viewer can draw each level's ROI: an ellipse on the CT slice through the ROI's centre.

Viewers draw SR measurements from image coordinates (SCOORD), not from SEG segments. For each level the SR gets,
beside its TID 1411 group on the SEG segment, a TID 1410 group with an ELLIPSE on one source image: the slice that
holds the ROI's centre of mass (along the slice axis), and on it the ellipse with the same centroid and second
moments as the ROI's cross-section there. For Pan's elliptical-cylinder ROI that ellipse is the ROI's own outline;
for the eroded-body ROI it is the moment ellipse of the eroded body (same area and orientation, not its exact
outline).

Coordinates are SCOORD image coordinates (PS3.3 C.18.6.1.2): (column, row) with (0, 0) at the top-left corner of the
top-left pixel, so the centre of pixel (i = column, j = row) is (i + 0.5, j + 0.5).

``planar_roi_group`` builds the level's TID 1410 group so that OHIF (3.13) can also *track* it, i.e. list it in its
measurement panel (OHIF calls this "hydrating" the SR; the reader answers "Yes" to its prompt). OHIF needs:
- a Tracking Identifier that names one of its Cornerstone tools: ``Cornerstone3DTools@^0.1.0:PlanarFreehandROI``,
  followed by the level's own identifier (OHIF matches the prefix), e.g.
  ``Cornerstone3DTools@^0.1.0:PlanarFreehandROI:L1 trabecular BMD``. For other viewers it stays a readable text
  identifier with the level's name; the Tracking UID (shared with the level's TID 1411 group) is what links them;
- a NUM whose INFERRED FROM child is the outline it was measured on: the ellipse's area (mm2), inferred from the
  ellipse as a closed POLYLINE (64 sides). The freehand tool, not OHIF's ellipse tool: the ellipse tool reads its
  four points as (bottom, top, left, right), which contradicts DICOM's ELLIPSE (major axis first) whenever the body
  is wider than deep, and then measures an empty area;
- a "Comment" (121106, DCM) TEXT: OHIF's name of the measurement in the panel ("L1: BMD 73.25 mg/cm3").
The Image Region ELLIPSE of TID 1410 stays as it was, so viewers that draw SR regions draw the same ellipse. PixelMed's
DicomSRValidator reports the INFERRED FROM outline and the Comment as "Content Item not in template" (warnings; TID
1410 has no rows for them), with 0 errors. The group must come before the level's TID 1411 group: OHIF names a
tracking UID after the first group that carries it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes

from service.domain.levels import VertebraLevel
from service.domain.results import VertebraMeasurement
from service.series.multiframe import frame_number

MIN_PIXELS = 3
"""Fewer pixels on the centre slice cannot define an ellipse: the level gets no planar group."""
CORNERSTONE_TRACKING_PREFIX = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
"""OHIF 3.13 tracks an SR measurement whose Tracking Identifier starts with one of its tools' tags."""
OUTLINE_SIDES = 64
"""The ellipse as a closed polygon of this many sides (its area is 0.16 % under the ellipse's)."""


@dataclass(frozen=True)
class PlanarEllipse:
    """An ellipse on source slice ``k``: ``points`` = major axis end points, then minor axis end points."""

    k: int
    points: tuple[tuple[float, float], ...]
    """Four (column, row) SCOORD points: major axis first, then minor axis (DICOM ELLIPSE)."""
    area_pixels: float

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if len(self.points) != 4:
            raise ValueError(f"points must hold 4 (column, row) points, got {len(self.points)}")

    def graphic_data(self) -> npt.NDArray[np.float32]:
        return np.asarray(self.points, dtype=np.float32)

    def outline(self, sides: int = OUTLINE_SIDES) -> npt.NDArray[np.float32]:
        """The ellipse as a closed POLYLINE: ``sides + 1`` (column, row) points, the last one equal to the first."""
        if sides < 3:
            raise ValueError(f"sides must be >= 3, got {sides}")
        p = np.asarray(self.points, dtype=np.float64)
        centre, major, minor = (p[0] + p[1]) / 2, (p[1] - p[0]) / 2, (p[3] - p[2]) / 2
        t = 2 * np.pi * np.arange(sides + 1) / sides
        ring = centre + np.outer(np.cos(t), major) + np.outer(np.sin(t), minor)
        ring[-1] = ring[0]
        return ring.astype(np.float32)


def centre_slice_ellipses(labels: npt.NDArray[np.integer],
                          levels: tuple[VertebraLevel, ...]) -> dict[VertebraLevel, PlanarEllipse]:
    """Per level with at least ``MIN_PIXELS`` on its centre slice: its moment ellipse there.

    ``labels`` uses the project's convention ``labels[i=column, j=row, k=slice]`` with label value = level value.
    """
    out: dict[VertebraLevel, PlanarEllipse] = {}
    for level in levels:
        ijk = np.argwhere(labels == int(level))
        if len(ijk) == 0:
            continue
        k = _centre_slice(ijk[:, 2])
        plane = ijk[ijk[:, 2] == k][:, :2].astype(np.float64)
        if len(plane) < MIN_PIXELS:
            continue
        out[level] = moment_ellipse(plane, k)
    return out


def _centre_slice(ks: npt.NDArray[np.integer]) -> int:
    """The slice nearest the mean slice index that holds voxels of the ROI (the ROI may have holes)."""
    present = np.unique(ks)
    return int(present[np.argmin(np.abs(present - ks.mean()))])


def moment_ellipse(pixels_ij: npt.NDArray[np.float64], k: int) -> PlanarEllipse:
    """The ellipse with the centroid and the variances along columns and rows of the pixel set (i = column,
    j = row), as a uniform-disc fit: a uniformly filled ellipse with semi-axis a has variance a^2 / 4 along that
    axis, so a = 2 sqrt(variance). Pixels are unit squares: their own variance (1/12 per axis) is added so that a
    single row still has width.

    The axes are kept parallel to the image rows and columns: OHIF 3.13 does not draw an oblique SR ellipse
    ("OBLIQUE ELLIPSE NOT YET SUPPORTED"). An axial vertebral body is near mirror-symmetric about the sagittal
    plane, so its ROI's own axes are close to the image axes on a supine scan."""
    centre = pixels_ij.mean(axis=0) + 0.5
    variances = pixels_ij.var(axis=0) + 1.0 / 12.0
    axes = [(2.0 * math.sqrt(float(v)), np.eye(2)[axis]) for axis, v in enumerate(variances)]
    (semi_minor, minor_axis), (semi_major, major_axis) = sorted(axes, key=lambda a: a[0])
    points = (
        tuple(centre - semi_major * major_axis), tuple(centre + semi_major * major_axis),
        tuple(centre - semi_minor * minor_axis), tuple(centre + semi_minor * minor_axis),
    )
    return PlanarEllipse(k=k, points=tuple((float(c), float(r)) for c, r in points),
                         area_pixels=math.pi * semi_major * semi_minor)



def viewer_label(m: VertebraMeasurement) -> str:
    """The measurement's name in OHIF's panel: the level ("T12?" when its name is uncertain) and its BMD."""
    name = f"{m.level.name}?" if m.level_uncertain else m.level.name
    if m.bmd_mg_cm3 is None or not math.isfinite(m.bmd_mg_cm3):
        return f"{name}: no BMD (not evaluable)" if not m.evaluable else f"{name}: no BMD"
    return f"{name}: BMD {m.bmd_mg_cm3:.2f} mg/cm3" + ("" if m.evaluable else " (not evaluable)")


def tracking_identifier_text(identifier: str) -> str:
    """The TID 1410 group's Tracking Identifier: OHIF's tool tag, then the level's own identifier."""
    return f"{CORNERSTONE_TRACKING_PREFIX}:{identifier}"


def pixel_spacing_mm(image: Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) of a CT slice or frame header, in mm."""
    spacing = image.get("PixelSpacing")
    if spacing is None or len(spacing) != 2 or min(float(v) for v in spacing) <= 0:
        raise ValueError(f"image {image.get('SOPInstanceUID', '?')} has no usable PixelSpacing: {spacing!r}")
    return float(spacing[0]), float(spacing[1])


def planar_roi_group(common: Mapping[str, Any], tracking_uid: str, identifier: str, image: Dataset,
                     ellipse: PlanarEllipse, label: str) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the level's ROI as an ellipse on the CT slice through its centre, with the ellipse's area (inferred
    from its outline) and ``label`` as a Comment; finding, site and algorithm of ``common`` (the level's TID 1411
    group's), ``tracking_uid`` shared with that group, Tracking Identifier ``tracking_identifier_text(identifier)``.
    The level's numbers stay in its TID 1411 group: they are measured on the 3D ROI."""
    frame = frame_number(image)  # a slice of a multi-frame CT instance is one of its frames
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(image.SOPClassUID),
        referenced_sop_instance_uid=str(image.SOPInstanceUID),
        referenced_frame_numbers=None if frame is None else [frame],
    )
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.ELLIPSE, graphic_data=ellipse.graphic_data(),
                               source_image=source)
    row_mm, column_mm = pixel_spacing_mm(image)
    area = hd.sr.Measurement(name=pydicom_codes.SCT.Area, value=ellipse.area_pixels * row_mm * column_mm,
                             unit=pydicom_codes.UCUM.SquareMillimeter)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=region, **{
            **common, "measurements": [area], "qualitative_evaluations": None,
            "tracking_identifier": hd.sr.TrackingIdentifier(uid=tracking_uid,
                                                            identifier=tracking_identifier_text(identifier)),
        })
    items = group[0].ContentSequence
    scoord = next(item for item in items if item.ValueType == "SCOORD")
    outline = copy.deepcopy(scoord)  # keeps its SELECTED FROM source image
    outline.RelationshipType = hd.sr.RelationshipTypeValues.INFERRED_FROM.value
    outline.GraphicType = hd.sr.GraphicTypeValues.POLYLINE.value
    outline.GraphicData = [float(v) for v in ellipse.outline().ravel()]
    num = next(item for item in items if item.ValueType == "NUM")
    num.ContentSequence = [*num.get("ContentSequence", []), outline]
    items.append(hd.sr.TextContentItem(name=pydicom_codes.DCM.Comment, value=label,
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group
