"""Helpers for the phantom-based tests: the phantom's truth labels as a SpineSegmentation."""

from __future__ import annotations

import numpy as np

from service.domain.levels import VertebraLevel
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.offline.phantom import labels as phantom_labels
from service.offline.phantom.api import Phantom


def truth_segmentation(phantom: Phantom) -> SpineSegmentation:
    """Body = shell | core of each level (labels == v | labels == 200 + v); posterior elements 41..65."""
    body = phantom_labels.body_labels_of(phantom.labels)
    offset = phantom_labels.POSTERIOR_OFFSET
    posterior = (phantom.labels > offset) & (phantom.labels <= offset + 25)
    present = {int(v) for v in np.unique(body) if v}
    vertebrae = []
    for t in phantom.truth["vertebrae"]:
        level = VertebraLevel.from_name(t["level"])
        if int(level) in present:
            vertebrae.append(LabelledVertebra(level=level, centroid_lps_mm=tuple(t["centroid_lps_mm"]),
                                              cut_by_fov=bool(t["cut_by_fov"])))
    return SpineSegmentation(body_labels=body, posterior_mask=posterior, vertebrae=tuple(vertebrae),
                             model_name="phantom-truth", model_version="1")
