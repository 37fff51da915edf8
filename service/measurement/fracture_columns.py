"""A height loss read on the columns the image could measure, when it could not measure all three.

At 3-5 mm slices the disc behind a wedge-fractured body is often thinner than a slice (the local kyphosis narrows it
posteriorly): the image then finds no posterior endplate there, or finds the neighbour's far endplate beyond the
merged disc (a posterior height 8 mm taller than the mask's). Without the posterior height the anterior/posterior and
middle/posterior ratios cannot be read, but the columns the image did read can still be compared with the same column
of the neighbours (Genant's height reduction against the adjacent vertebrae). A loss found that way is called only
when the mask agrees in the same column, with the rule ``fracture_check`` applies to whole levels (``ColumnRule``):
mask and image both read the column (within ``max_disagreement`` of each other), the image's loss reaches the
threshold plus its sub-voxel margin, and the mask's loss is within one voxel step (at most
``max_mask_step_allowance``) plus ``mask_tolerance`` of it. Only the anterior and middle columns can carry such a
call: a posterior height alone shorter than the neighbours' is no Genant pattern (a crush shortens all three; a short
posterior wall is the posterior wall's edge taken for an endplate, ``fracture_check.MAX_POSTERIOR_SHORTFALL``).

This only adds calls: a level that shows no such loss keeps the outcome it had (not measurable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.domain.levels import VertebraLevel
from service.measurement.fracture import HEIGHT_GROWTH_PER_LEVEL, NEIGHBOUR_RANGE, VertebralHeights

COLUMN_NAMES = ("anterior", "middle", "posterior")
CALLING_COLUMNS = (0, 1)
"""Anterior and middle: the columns whose loss alone can be a fracture (see the module doc)."""
MIN_NEIGHBOURS = 2
"""Direct comparisons with the neighbours (no ratio to the level's own posterior height) need at least two
neighbours measured in full: one neighbour's own size variation (a few per cent) would be the whole reference."""


@dataclass(frozen=True)
class ColumnLoss:
    """The largest height loss the image and the mask agree on, in one column."""

    column: str
    image_loss: float
    mask_loss: float
    detail: str


@dataclass(frozen=True)
class ColumnRule:
    """The thresholds of ``fracture_check``, passed in (this module does not import it)."""

    height_loss: float
    max_disagreement: float
    mask_tolerance: float
    image_resolution_factor: float
    max_mask_step_allowance: float


def _reference(level: VertebraLevel, full: Mapping[VertebraLevel, VertebralHeights], column: int) -> float | None:
    """Median height of this column in the neighbours measured in full, scaled to this level (None: too few)."""
    values = [full[lv].as_tuple()[column] * HEIGHT_GROWTH_PER_LEVEL ** (-off)
              for off in range(-NEIGHBOUR_RANGE, NEIGHBOUR_RANGE + 1)
              if off != 0 and (lv := level.shifted(off)) is not None and lv in full]
    return float(np.median(values)) if len(values) >= MIN_NEIGHBOURS else None


def column_loss(level: VertebraLevel, mask: VertebralHeights, image_columns: Sequence[float | None],
                full_mask: Mapping[VertebraLevel, VertebralHeights],
                full_image: Mapping[VertebraLevel, VertebralHeights], rule: ColumnRule) -> ColumnLoss | None:
    """The column (read by the image and the mask, agreeing) whose loss against the neighbours is a fracture on both,
    the largest such; None when there is none. ``full_*``: the heights of the levels measured in full."""
    step = mask.resolution_mm
    read = [(i, m, c) for i, (m, c) in enumerate(zip(mask.as_tuple(), image_columns, strict=True))
            if c is not None and abs(m - c) / min(m, c) <= rule.max_disagreement]
    if not read:
        return None
    image_margin = rule.image_resolution_factor * step / max(c for _, _, c in read)
    mask_margin = min(step / max(mask.as_tuple()), rule.max_mask_step_allowance)
    best: ColumnLoss | None = None
    for i, m, c in read:
        if i not in CALLING_COLUMNS:
            continue
        ref_image = _reference(level, full_image, i)
        ref_mask = _reference(level, full_mask, i)
        if ref_image is None or ref_mask is None:
            continue
        image_loss = 1.0 - c / ref_image
        mask_loss = 1.0 - m / ref_mask
        if image_loss < rule.height_loss + image_margin:
            continue
        if mask_loss < max(rule.height_loss, image_loss - rule.mask_tolerance) - mask_margin:
            continue
        if best is None or image_loss > best.image_loss:
            best = ColumnLoss(COLUMN_NAMES[i], image_loss, mask_loss,
                              f"{COLUMN_NAMES[i]} height {c:.1f} mm on the image = {100 * c / ref_image:.0f} % of "
                              f"neighbours ({ref_image:.1f} mm); mask {m:.1f} mm = {100 * m / ref_mask:.0f} %")
    return best
