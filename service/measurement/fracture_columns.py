"""A height loss read on the columns the image could measure, when it could not measure all three.

At 3-5 mm slices the disc behind a wedge-fractured body is often thinner than a slice (the local kyphosis narrows it
posteriorly): the image then finds no posterior endplate there, or finds the neighbour's far endplate beyond the
merged disc (a posterior height 8 mm taller than the mask's). Without the posterior height the anterior/posterior and
middle/posterior ratios cannot be read, but the columns the image did read can still be compared with the same column
of the neighbours (Genant's height reduction against the adjacent vertebrae). A loss found that way is called only
when the mask agrees in the same column, with the rule ``fracture_check`` applies to whole levels (``ColumnRule``):
mask and image both read the column (within ``max_disagreement`` of each other), the image's loss reaches the
threshold plus its sub-voxel margin, and the mask's loss is within its quantisation margin (at most
``max_mask_step_allowance``) plus ``mask_tolerance`` of it. Only the anterior and middle columns can carry such a
call: a posterior height alone shorter than the neighbours' is no Genant pattern (a crush shortens all three; a short
posterior wall is the posterior wall's edge taken for an endplate, ``fracture_check.MAX_POSTERIOR_SHORTFALL``).

A column the image read far from the mask (beyond ``max_disagreement``) is called only when both show a loss of
``DISPUTED_MIN_LOSS`` (Genant grade 2) or more against the neighbours (``disputed_column_loss``): the two disagree
on the size of the loss, not on its presence, and the smaller loss is the one graded. Held-out BMD set s22 case_34
(T12, a grade 3 biconcave fracture at 2.6 mm): middle height 14.3 mm on the mask, 10.5 mm between the image
endplates, 36 % apart, was "not measurable"; now a grade 2 fracture (30 %, the mask's loss).

This only adds calls: a level that shows no such loss keeps the outcome it had (not measurable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.domain.levels import VertebraLevel
from service.measurement.fracture import (
    HEIGHT_GROWTH_PER_LEVEL,
    NEIGHBOUR_RANGE,
    VertebralHeights,
    quantisation_margin,
)

COLUMN_NAMES = ("anterior", "middle", "posterior")
CALLING_COLUMNS = (0, 1)
"""Anterior and middle: the columns whose loss alone can be a fracture (see the module doc)."""
DISPUTED_MIN_LOSS = 0.25
"""A column whose mask and image heights disagree is a fracture only when both show at least a Genant grade 2 loss
(25 %): a mask or an image endplate off by a grade 1 loss is common (blocky masks, a bony ridge taken for an
endplate); both short by a quarter of the neighbours' height is a collapse.  s22 case_34's T12 reads 29 % on the mask
(2.6 mm slices) and 49 % on the image."""
MIN_NEIGHBOURS = 2
"""Direct comparisons with the neighbours (no ratio to the level's own posterior height) need at least two
neighbours that read the same column: one neighbour's own size variation (a few per cent) would be the whole
reference. A neighbour counts when its image and mask read that column within the disagreement limit, measured in
full or not (at 5 mm slices most levels miss some column: with fully measured neighbours only, tuning set seed 2665's
5 mm wedges had no reference)."""


@dataclass(frozen=True)
class ColumnLoss:
    """The largest height loss the image and the mask agree on, in one column."""

    column: str
    image_loss: float
    mask_loss: float
    detail: str
    disputed: bool = False
    """Mask and image disagree on this column's height (``disputed_column_loss``): the smaller loss is graded."""

    @property
    def graded_loss(self) -> float:
        """The loss the Genant grade comes from: the image's, or the smaller of the two where they disagree."""
        return min(self.image_loss, self.mask_loss) if self.disputed else self.image_loss


@dataclass(frozen=True)
class ColumnRule:
    """The thresholds of ``fracture_check``, passed in (this module does not import it)."""

    height_loss: float
    max_disagreement: float
    mask_tolerance: float
    image_resolution_factor: float
    max_mask_step_allowance: float
    mask_min_steps: float
    """The mask's own loss must also be at least this many of its voxel steps (``fracture_check.MASK_MIN_STEPS``)."""


ColumnPair = tuple[float, float] | None
"""One column's (mask, image) height, None where the image did not read it or read it too far from the mask."""
ReadColumns = tuple[ColumnPair, ColumnPair, ColumnPair]


def apart(mask_mm: float, image_mm: float, max_disagreement: float) -> bool:
    """Mask and image heights of a column differing by more than ``max_disagreement`` of the smaller."""
    return abs(mask_mm - image_mm) / min(mask_mm, image_mm) > max_disagreement


def read_columns(mask: VertebralHeights, image_columns: Sequence[float | None], max_disagreement: float
                 ) -> ReadColumns:
    """The (mask, image) heights of the columns the image read within ``max_disagreement`` of the mask."""
    pairs = [(m, c) if c is not None and not apart(m, c, max_disagreement) else None
             for m, c in zip(mask.as_tuple(), image_columns, strict=True)]
    return (pairs[0], pairs[1], pairs[2])


def _reference(level: VertebraLevel, columns: Mapping[VertebraLevel, ReadColumns], column: int
               ) -> tuple[float, float] | None:
    """Median mask and image height of this column in the neighbours that read it, scaled to this level (None:
    fewer than MIN_NEIGHBOURS)."""
    pairs = [(pair[0] * HEIGHT_GROWTH_PER_LEVEL ** (-off), pair[1] * HEIGHT_GROWTH_PER_LEVEL ** (-off))
             for off in range(-NEIGHBOUR_RANGE, NEIGHBOUR_RANGE + 1)
             if off != 0 and (lv := level.shifted(off)) is not None and lv in columns
             and (pair := columns[lv][column]) is not None]
    if len(pairs) < MIN_NEIGHBOURS:
        return None
    return float(np.median([p[0] for p in pairs])), float(np.median([p[1] for p in pairs]))


def column_loss(level: VertebraLevel, mask: VertebralHeights, columns: Mapping[VertebraLevel, ReadColumns],
                rule: ColumnRule) -> ColumnLoss | None:
    """The column (read by the image and the mask, agreeing) whose loss against the neighbours is a fracture on both,
    the largest such; None when there is none. ``columns``: every level's read columns (``read_columns``), this
    level's among them; the neighbours' are the references."""
    step = mask.resolution_mm
    own = columns[level]
    read = [(i, pair[0], pair[1]) for i, pair in enumerate(own) if pair is not None]
    if not read:
        return None
    image_margin = rule.image_resolution_factor * step / max(c for _, _, c in read)
    mask_margin = min(quantisation_margin(mask), rule.max_mask_step_allowance)  # as fracture_check's whole levels
    best: ColumnLoss | None = None
    for i, m, c in read:
        if i not in CALLING_COLUMNS or (ref := _reference(level, columns, i)) is None:
            continue
        ref_mask, ref_image = ref
        image_loss = 1.0 - c / ref_image
        mask_loss = 1.0 - m / ref_mask
        if image_loss < rule.height_loss + image_margin:
            continue
        if mask_loss < max(rule.height_loss, image_loss - rule.mask_tolerance) - mask_margin:
            continue
        if mask_loss < rule.mask_min_steps * step / ref_mask:  # a mask no whole step short may be as tall
            continue
        if best is None or image_loss > best.image_loss:
            best = ColumnLoss(COLUMN_NAMES[i], image_loss, mask_loss,
                              f"{COLUMN_NAMES[i]} height {c:.1f} mm on the image = {100 * c / ref_image:.0f} % of "
                              f"neighbours ({ref_image:.1f} mm); mask {m:.1f} mm = {100 * m / ref_mask:.0f} %")
    return best


def disputed_column_loss(level: VertebraLevel, mask: VertebralHeights, image_columns: Sequence[float | None],
                         columns: Mapping[VertebraLevel, ReadColumns], rule: ColumnRule) -> ColumnLoss | None:
    """The column (anterior or middle) whose mask and image heights disagree beyond ``rule.max_disagreement`` but
    both fall DISPUTED_MIN_LOSS or more short of the same column of the neighbours, the one with the largest graded
    (smaller) loss; None when there is none.  No quantisation margin is added: each height is read on its own, and
    both must show the grade 2 loss.  ``columns`` as for ``column_loss``."""
    best: ColumnLoss | None = None
    for i in CALLING_COLUMNS:
        m, c = mask.as_tuple()[i], image_columns[i]
        if c is None or not apart(m, c, rule.max_disagreement):
            continue
        if (ref := _reference(level, columns, i)) is None:
            continue
        ref_mask, ref_image = ref
        image_loss = 1.0 - c / ref_image
        mask_loss = 1.0 - m / ref_mask
        if image_loss < DISPUTED_MIN_LOSS or mask_loss < DISPUTED_MIN_LOSS:
            continue
        found = ColumnLoss(COLUMN_NAMES[i], image_loss, mask_loss,
                           f"{COLUMN_NAMES[i]} height {c:.1f} mm on the image = {100 * c / ref_image:.0f} % of "
                           f"neighbours ({ref_image:.1f} mm), {m:.1f} mm on the mask = {100 * m / ref_mask:.0f} %: "
                           "both show a loss of grade 2 or more, they disagree on its size (the smaller is graded)",
                           disputed=True)
        if best is None or found.graded_loss > best.graded_loss:
            best = found
    return best
