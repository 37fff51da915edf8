"""The fracture check on the real CT of ../shared/data with their reference body masks: no fracture on review, so
no level may be called fractured (the former mask-only check excluded L1 of the abdomen)."""

from __future__ import annotations

import numpy as np

from service.domain.levels import VertebraLevel as V
from service.domain.results import FractureStatus
from service.domain.volume import CTVolume
from service.measurement.fracture_check import FractureAssessment, classify_fractures, measure_level
from service.measurement.geometry import crop_labels, mask_centroid_lps, vertebra_frame
from service.offline.evaluation.segmentation import labels_on_ct_grid, load_ct, load_reference
from tests.shared_data import shared_case

VERSE_LEVELS = {21: V.L2, 22: V.L3, 23: V.L4}
VERSE_BODY_SUBREGIONS = (49, 50)  # vertebral body border (cortex, endplates) and interior


def _touching_scan_ends(body_labels: np.ndarray, axis: int) -> set[V]:
    """Levels whose mask reaches the first or last plane along the craniocaudal grid axis."""
    out = set()
    for value in np.unique(body_labels[body_labels > 0]):
        present = np.flatnonzero(np.any(body_labels == value, axis=tuple(a for a in range(3) if a != axis)))
        if present[0] == 0 or present[-1] == body_labels.shape[axis] - 1:
            out.add(V(int(value)))
    return out


def _check(volume: CTVolume, body_labels: np.ndarray) -> dict[V, FractureAssessment]:
    """As the assessment runs it: levels cut by the scan are neither checked nor used for the axis."""
    crops = crop_labels(body_labels)
    cut = _touching_scan_ends(body_labels, volume.superior_axis()[0])
    levels = [V(v) for v in crops if V(v) not in cut]
    centroids = {lv: mask_centroid_lps(volume, crops[int(lv)]) for lv in levels}
    heights = {lv: measure_level(volume, crops[int(lv)], vertebra_frame(lv, centroids[lv], centroids))
               for lv in levels}
    return classify_fractures(heights)


def test_abdomen_t11_l2_totalsegmentator_bodies_no_fracture() -> None:
    case = shared_case("ts_abdomen_t11_l2")
    volume = load_ct(case)
    found = _check(volume, load_reference(case, volume).body_labels)
    assert V.L1 in found, "L1 is the complete level of this case"
    assert all(f.status is not FractureStatus.FRACTURED for f in found.values()), \
        {lv.name: f.detail for lv, f in found.items()}


def test_tptbox_l3_verse_body_not_fractured() -> None:
    case = shared_case("tptbox_l3_crop")
    volume = load_ct(case)
    sub = labels_on_ct_grid(case / "subregion_labels.nii.gz", volume)
    vert = labels_on_ct_grid(case / "vertebra_labels.nii.gz", volume)
    body = np.zeros(volume.shape, dtype=np.int16)
    for value, level in VERSE_LEVELS.items():
        body[(vert == value) & np.isin(sub, VERSE_BODY_SUBREGIONS)] = int(level)
    found = _check(volume, body)
    assert set(found) == {V.L3}, "L2 and L4 are cut by the crop"
    # a complete, unfractured L3 with 1.5 mm voxels: the image endplates are found, and read as not fractured
    assert found[V.L3].status is FractureStatus.NOT_FRACTURED, found[V.L3].detail
