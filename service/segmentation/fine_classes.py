"""Classes and grid of the fine body model (stage 2: vertebral bodies at ~1.25 mm in a tube around the spine).

The coarse model (3 mm) finds the spine and the anatomy that names the levels (ribs, sacrum, thoracic/lumbar
groups); the fine model draws the body outlines and the discs between them at a resolution where a 3-4 mm
thoracic disc is several voxels thick, so neighbouring bodies separate and the body mask is accurate to a
fraction of a millimetre.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.segmentation import classes as cls

FINE_SPACING_MM = 1.25
FINE_BACKGROUND = 0
FINE_BODY = 1
FINE_DISC = 2
FINE_POSTERIOR = 3
FINE_RIB = 4
"""Rib heads and necks inside the tube: the rib-bearing check of the labelling at 1.25 mm, where a short 12th rib
and a lumbar transverse process (posterior elements) are told apart."""
FINE_NUM_CLASSES = 5
FINE_CLASS_NAMES = ("background", "vertebral_body", "disc", "posterior_elements", "rib")
TUBE_MARGIN_MM = 20.0
"""Margin around the spine (bodies + posterior elements) of the fine model's field."""


def phantom_fine_targets(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """Phantom label map -> fine classes (every vertebral body C1..S1 is 'body', the sacrum below S1 is not)."""
    lab = labels.astype(np.int32)
    out = np.zeros(lab.shape, dtype=np.uint8)
    for r in cls.PHANTOM_RIBS:
        out[(lab >= r.start) & (lab < r.stop)] = FINE_RIB
    post = (lab >= cls.PHANTOM_POSTERIOR_OFFSET + 1) & (lab <= cls.PHANTOM_POSTERIOR_OFFSET + 25)
    out[post] = FINE_POSTERIOR
    out[lab == cls.PHANTOM_DISC] = FINE_DISC
    out[cls.phantom_body_levels(lab) > 0] = FINE_BODY
    return out
