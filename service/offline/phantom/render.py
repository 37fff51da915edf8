"""Paint the anatomy onto a canonical grid: a label map and a noise-free, unblurred HU map.

Painter's order: later structures override earlier ones (soft tissue, organs, then bone, then metal). Every
structure is evaluated analytically only inside its own bounding block, so the cost follows the anatomy, not the
whole volume. HU values are those of the acquisition (kVp, contrast) before blur and noise.

The painters of each region live in render_torso, render_thorax, render_abdomen, render_spine and
render_skeleton; the canvas, tissue HU, options and the fields they share in canvas.
"""

from __future__ import annotations

import numpy as np

from service.offline.phantom import physics
from service.offline.phantom.anatomy import Anatomy
from service.offline.phantom.canvas import METAL_HU, Canvas, RenderOptions, TissueHU
from service.offline.phantom.grid import Grid
from service.offline.phantom.render_abdomen import paint_abdomen
from service.offline.phantom.render_skeleton import (
    paint_bone_island,
    paint_pelvis,
    paint_ribs_and_sternum,
    paint_screws,
    paint_shoulder_girdle,
)
from service.offline.phantom.render_spine import paint_spine
from service.offline.phantom.render_thorax import paint_thorax
from service.offline.phantom.render_torso import paint_arms, paint_breasts, paint_calibration, paint_table, paint_torso


def render(anat: Anatomy, grid: Grid, opts: RenderOptions, rng: np.random.Generator) -> Canvas:
    """Paint all structures; returns the canvas (labels, unblurred HU, texture amplitudes, core HU)."""
    tissue = TissueHU.for_acquisition(physics.beam(opts.kvp, opts.water_path_cm), opts.contrast,
                                      anat.cortical_mineral_mg_cm3)
    cv = Canvas.empty(grid)
    if opts.table:
        paint_table(cv, opts)
    if opts.calibration_box is not None:
        paint_calibration(cv, opts)
    paint_torso(cv, anat, tissue)
    if anat.arms_in_fov:
        paint_arms(cv, anat, tissue)
    if anat.extras.get("breast_size", 0.0) > 0:
        paint_breasts(cv, anat, tissue, rng)
    paint_thorax(cv, anat, tissue)
    paint_abdomen(cv, anat, tissue, rng)
    paint_ribs_and_sternum(cv, anat, tissue, opts)
    paint_shoulder_girdle(cv, anat, tissue, opts)
    paint_pelvis(cv, anat, tissue, opts)
    paint_spine(cv, anat, tissue, opts)
    if opts.bone_island is not None:
        paint_bone_island(cv, opts, tissue)
    if opts.screw_levels:
        paint_screws(cv, anat, opts.screw_levels)
    return cv


__all__ = ["METAL_HU", "Canvas", "RenderOptions", "TissueHU", "render"]
