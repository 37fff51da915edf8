"""Labelling logic on phantom truth labels (coarse 3 mm phantoms): anchors, 11/13 ribs, transitional vertebrae."""

from __future__ import annotations

import numpy as np
import pytest

from service.domain.levels import VertebraLevel as V
from service.offline.phantom.api import generate, random_spec
from service.segmentation import classes as cls
from service.segmentation.features import features_from_masks
from service.segmentation.geometry import canonical_frame
from service.segmentation.labelling import LabellingResult, label_bodies


def _label_truth(**overrides: object) -> tuple[list[V], LabellingResult]:
    rng = np.random.default_rng(11)
    spec = random_spec(rng, fracture_levels=(), scoliosis_deg=0.0, pedicle_screw_levels=(), feet_first=False,
                       **overrides)
    ph = generate(spec, spacing_mm=(3.0, 3.0, 3.0))
    frame = canonical_frame(ph.volume.affine_lps, ph.volume.shape)
    lab = frame.to_canonical(ph.labels)
    target = cls.phantom_targets(lab, lumbarised_s1=spec.lumbar_variant == "lumbarised_s1")
    levels = cls.phantom_body_levels(lab)
    body = (target == cls.BODY_THORACIC) | (target == cls.BODY_LUMBAR)
    present = sorted({int(v) for v in np.unique(levels[body]) if v}, reverse=False)
    masks, names = [], []
    for v in present:
        m = (levels == v) & body
        if m.sum() * 27 < 1500:
            continue
        masks.append(m)
        names.append(V(v))
    order = np.argsort([-np.argwhere(m)[:, 2].mean() for m in masks])
    masks = [masks[i] for i in order]
    names = [names[i] for i in order]
    feats, sac = features_from_masks(masks, target == cls.RIB, target == cls.SACRUM, frame.spacing_mm)
    return names, label_bodies(feats, sac)


@pytest.mark.slow
def test_normal_abdomen_is_named_and_certain() -> None:
    names, res = _label_truth(region="abdomen", rib_pairs=12, lumbar_variant="normal")
    got = [d.level for d in res.decisions]
    full = [(n, d) for n, d in zip(names, res.decisions, strict=True)]
    assert got == names, (got, names, res.notes)
    assert not any(d.uncertain for _, d in full), res.notes


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"region": "abdomen", "rib_pairs": 13, "lumbar_variant": "normal"},
    {"region": "abdomen", "rib_pairs": 11, "lumbar_variant": "normal"},
    {"region": "abdomen", "rib_pairs": 12, "lumbar_variant": "lumbarised_s1"},
])
def test_variants_are_uncertain(overrides: dict[str, object]) -> None:
    names, res = _label_truth(**overrides)
    assert res.decisions, res.notes
    assert all(d.uncertain for d in res.decisions), (names, [d.level for d in res.decisions], res.notes)
    assert all(d.reason for d in res.decisions)
