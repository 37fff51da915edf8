"""Key image: a Secondary Capture (RGB) a viewer without SR/SEG support still shows.

Left: sagittal reformat through the spine, right of it a coronal one (patient right on screen left), each level
filled in its colour and named, trabecular ROIs outlined in white. Right column: table level / HU / BMD / status
(a suspected fracture as "fracture G2 (32 %)", and under the table "Suspected vertebral fracture: L1 fracture G2
(32 %)" and, on thick slices, "Fracture check limited by 5.0 mm slices (see SR)"),
the patient category, summary BMD and method, calibration, and a banner "AI result, to be reviewed".
Reformats are sampled in patient (LPS) coordinates, so any acquisition orientation gives the same picture.
No patient identifiers are burned in (Burned In Annotation NO); the viewer shows them from the header.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import textwrap
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from service.domain.guidelines import Thresholds, thresholds_from_record
from service.domain.levels import VertebraLevel
from service.domain.results import (
    FRACTURE_CHECK_LIMITED_NOTE,
    Category,
    FractureStatus,
    PatientSummary,
    ScreeningResult,
    VertebraMeasurement,
)
from service.domain.segmentation import SpineSegmentation
from service.domain.trend import trend_of
from service.domain.volume import CTVolume
from service.results.common import (
    KEY_IMAGE_SERIES_NUMBER,
    AlgorithmInfo,
    secondary_capture,
)
from service.results.seg import TRABECULAR_ROI_RGB, level_color_rgb
from service.results.trend_plot import draw_trend

logger = logging.getLogger(__name__)

# Layout (pixels). 1800 x 1200 fills most of a 2 MP reading-room monitor at 1:1 without scaling.
CANVAS_WIDTH = 1800
CANVAS_HEIGHT = 1200
BANNER_HEIGHT = 96
PANEL_WIDTH = 540
PANEL_HEIGHT = CANVAS_HEIGHT - BANNER_HEIGHT - 60
MARGIN = 16

# Display window for the reformats: wide enough for cortex and trabecular bone, soft tissue stays visible.
WINDOW_CENTER_HU = 300.0
WINDOW_WIDTH_HU = 1400.0
FIELD_MARGIN_MM = 25.0  # shown above/below the outermost labelled vertebrae
HALF_WIDTH_MIN_MM = 70.0  # at least +/- 70 mm around the spine in the in-plane direction
LABEL_SLAB_OFFSETS_MM = (0.0, -3.0, 3.0, -6.0, 6.0, -9.0, 9.0)  # labels off the central plane (scoliosis)
FILL_ALPHA = 0.32
SPINE_LINE_BIN_MM = 5.0  # height bins of the spine centre line the curved reformats follow
SAGITTAL_POSTERIOR_SHIFT_MM = 20.0  # bodies are the anterior part of the vertebra: show the posterior elements too

BACKGROUND = (12, 12, 16)
TEXT = (235, 235, 235)
MUTED = (170, 170, 170)
BANNER_BG = (150, 20, 20)
BANNER_FG = (255, 240, 120)
CATEGORY_COLORS: dict[Category, tuple[int, int, int]] = {
    Category.NORMAL: (90, 200, 110),
    Category.OSTEOPENIA: (255, 170, 40),
    Category.OSTEOPOROSIS: (255, 80, 80),
    Category.INDETERMINATE: (180, 180, 180),
}
EXCLUDED_COLOR = (255, 150, 60)
FRACTURE_COLOR = (255, 90, 90)


@functools.cache
def text_font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``size`` pixels (shared by the key images)."""
    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, size)


@dataclass(frozen=True)
class _Reformat:
    ct_rgb: npt.NDArray[np.uint8]  # (rows, cols, 3)
    body: npt.NDArray[np.int16]  # (rows, cols) level values
    roi: npt.NDArray[np.int16]


def _plane_indices(volume: CTVolume, top_centre: npt.NDArray[np.float64], down: npt.NDArray[np.float64],
                   right: npt.NDArray[np.float64], depth: npt.NDArray[np.float64],
                   depth_by_row_mm: npt.NDArray[np.float64], cols: int, mm_per_px: float) -> npt.NDArray[np.float64]:
    """Fractional voxel indices (3, rows, cols) of a surface in LPS: a plane bent along ``depth`` row by row.

    Computed per axis (no large matrix product). ``depth_by_row_mm`` follows the spine (curved planar reformat).
    """
    inv = np.linalg.inv(volume.affine_lps)
    origin = inv[:3, :3] @ top_centre + inv[:3, 3]
    step_r = inv[:3, :3] @ (down * mm_per_px)
    step_c = inv[:3, :3] @ (right * mm_per_px)
    step_d = inv[:3, :3] @ depth
    rows = depth_by_row_mm.shape[0]
    r = np.arange(rows, dtype=np.float64)[:, None]
    c = (np.arange(cols, dtype=np.float64) - cols / 2)[None, :]
    d = depth_by_row_mm[:, None]
    return np.stack([origin[a] + r * step_r[a] + c * step_c[a] + d * step_d[a] for a in range(3)])


def _sample(array: npt.NDArray, ijk: npt.NDArray[np.float64], order: int, cval: float) -> npt.NDArray:
    return ndimage.map_coordinates(array, ijk, order=order, mode="constant", cval=cval, prefilter=False)


def _spine_line(points_lps: npt.NDArray[np.float64], s_values: npt.NDArray[np.float64], axis: int
                ) -> npt.NDArray[np.float64]:
    """Median coordinate ``axis`` of the body voxels at each height ``s_values`` (5 mm bins, smoothed, held at
    the ends): where the spine is, row by row."""
    bins = np.floor(points_lps[:, 2] / SPINE_LINE_BIN_MM).astype(np.int64)
    keys = np.unique(bins)
    centres = np.array([(k + 0.5) * SPINE_LINE_BIN_MM for k in keys])
    values = np.array([np.median(points_lps[bins == k, axis]) for k in keys])
    if len(values) >= 3:
        values = np.convolve(np.pad(values, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    return np.interp(s_values, centres, values)


def _reformat(volume: CTVolume, body: npt.NDArray, roi: npt.NDArray, points_lps: npt.NDArray[np.float64],
              horizontal: npt.NDArray[np.float64], depth: npt.NDArray[np.float64], s_range: tuple[float, float],
              half_width_mm: float, horizontal_shift_mm: float = 0.0) -> _Reformat:
    """Curved reformat: screen right = ``horizontal``, screen down = -S, following the spine along ``depth``."""
    s_top, s_bottom = s_range
    mm_per_px = max((s_top - s_bottom) / PANEL_HEIGHT, 2 * half_width_mm / PANEL_WIDTH)
    rows = round((s_top - s_bottom) / mm_per_px)
    cols = round(2 * half_width_mm / mm_per_px)
    down = np.array([0.0, 0.0, -1.0])
    h_axis, d_axis = int(np.argmax(np.abs(horizontal))), int(np.argmax(np.abs(depth)))
    top_centre = np.zeros(3)
    top_centre[h_axis] = float(np.median(points_lps[:, h_axis])) + horizontal_shift_mm
    top_centre[2] = s_top
    depth_by_row = _spine_line(points_lps, s_top - np.arange(rows) * mm_per_px, d_axis)
    hu = _sample(volume.hu, _plane_indices(volume, top_centre, down, horizontal, depth, depth_by_row, cols,
                                           mm_per_px), 1, -1024.0)
    body_img = np.zeros((rows, cols), dtype=np.int16)
    roi_img = np.zeros((rows, cols), dtype=np.int16)
    for offset in LABEL_SLAB_OFFSETS_MM:
        ijk = _plane_indices(volume, top_centre, down, horizontal, depth, depth_by_row + offset, cols, mm_per_px)
        b = _sample(body, ijk, 0, 0).astype(np.int16)
        body_img = np.where(body_img == 0, b, body_img)
        q = _sample(roi, ijk, 0, 0).astype(np.int16)
        roi_img = np.where(roi_img == 0, q, roi_img)
    lo = WINDOW_CENTER_HU - WINDOW_WIDTH_HU / 2
    grey = np.clip((hu - lo) / WINDOW_WIDTH_HU * 255.0, 0, 255).astype(np.uint8)
    return _Reformat(np.repeat(grey[:, :, None], 3, axis=2), body_img, roi_img)


def _outline(mask: npt.NDArray[np.bool_], width: int = 2) -> npt.NDArray[np.bool_]:
    inner = ndimage.binary_erosion(mask, iterations=width)
    return mask & ~inner


def level_text(level: VertebraLevel, uncertain: bool) -> str:
    """A level's name as drawn: "T12", or "T12?" when labelling could not confirm the name."""
    return level.name + ("?" if uncertain else "")


def _draw_panel(canvas: Image.Image, reformat: _Reformat, origin: tuple[int, int], title: str,
                left_label: str, right_label: str, name_side: str, uncertain: frozenset[int] = frozenset()) -> None:
    rgb = reformat.ct_rgb.astype(np.float32)
    levels = sorted({int(v) for v in np.unique(reformat.body) if v != 0})
    for value in levels:
        mask = reformat.body == value
        color = np.array(level_color_rgb(VertebraLevel(value)), dtype=np.float32)
        rgb[mask] = (1 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * color
        rgb[_outline(mask, 2)] = color
    for value in sorted({int(v) for v in np.unique(reformat.roi) if v != 0}):
        rgb[_outline(reformat.roi == value, 2)] = TRABECULAR_ROI_RGB
    panel = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    x0 = origin[0] + (PANEL_WIDTH - panel.width) // 2
    y0 = origin[1] + 44
    canvas.paste(panel, (x0, y0))
    draw = ImageDraw.Draw(canvas)
    draw.text((origin[0] + PANEL_WIDTH // 2, origin[1] + 4), title, font=text_font(30, bold=True), fill=TEXT,
              anchor="mt")
    draw.text((x0 + 6, y0 + panel.height // 2), left_label, font=text_font(26, bold=True), fill=MUTED, anchor="lm")
    draw.text((x0 + panel.width - 6, y0 + panel.height // 2), right_label, font=text_font(26, bold=True), fill=MUTED,
              anchor="rm")
    font = text_font(30, bold=True)
    for value in levels:
        rr, cc = np.nonzero(reformat.body == value)
        row = int(np.median(rr))
        if name_side == "left":
            x, anchor = x0 + int(cc.min()) - 12, "rm"
        else:
            x, anchor = x0 + int(cc.max()) + 12, "lm"
        text = level_text(VertebraLevel(value), value in uncertain)
        box = draw.textbbox((x, y0 + row), text, font=font, anchor=anchor)
        draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
        draw.text((x, y0 + row), text, font=font, fill=level_color_rgb(VertebraLevel(value)), anchor=anchor)


def fracture_text(m: VertebraMeasurement) -> str | None:
    """"L1 fracture G2 (32 %)" for a level the check called fractured, else None."""
    if m.fracture_status is not FractureStatus.FRACTURED or m.genant_grade is None:
        return None
    loss = "" if m.height_loss is None else f" ({100 * m.height_loss:.0f} %)"
    return f"{m.level.name} fracture G{m.genant_grade}{loss}"


def _status(m: VertebraMeasurement, used: bool) -> tuple[str, tuple[int, int, int]]:
    fracture = fracture_text(m)
    if fracture is not None:
        return fracture.split(" ", 1)[1], FRACTURE_COLOR
    if not m.evaluable:
        reason = m.exclusion_reason.value.replace("_", " ") if m.exclusion_reason else "excluded"
        return f"excluded: {reason}", EXCLUDED_COLOR
    if m.level_uncertain:
        return "level uncertain" + (", used" if used else ""), EXCLUDED_COLOR
    return ("used" if used else "evaluable"), (CATEGORY_COLORS[Category.NORMAL] if used else TEXT)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_thresholds(summary: PatientSummary) -> Thresholds | None:
    """The cut-offs that gave the summary's category: the ones it carries, else the ones its ``threshold_set``
    records (identifier with cut-offs, or a published set's name); None when neither says."""
    return summary.thresholds if summary.thresholds is not None else thresholds_from_record(summary.threshold_set)


def category_legend(summary: PatientSummary) -> tuple[str, str]:
    """The two legend lines under the BMD: the category cut-offs used for this result (mg/cm³)."""
    t = summary_thresholds(summary)
    if t is None:
        return "QCT (mg/cm³): cut-offs not recorded", f"threshold set {summary.threshold_set}"
    low, high = f"{t.osteoporosis_below_mg_cm3:g}", f"{t.normal_above_mg_cm3:g}"
    return (f"QCT (mg/cm³): <{low} osteoporosis · {low}–{high} osteopenia",
            f">{high} normal ({t.versioned_name})")


def _draw_fracture_lines(draw: ImageDraw.ImageDraw, result: ScreeningResult, x: int, y: int) -> int:
    """Under the table: the suspected fractures, and the thick-slice limitation of the fracture check (in full among
    the notes of the SR; here one line that always fits). Returns the next free row."""
    fractures = [t for m in result.vertebrae if (t := fracture_text(m)) is not None]
    if fractures:
        for wrapped in textwrap.wrap("Suspected vertebral fracture: " + ", ".join(fractures), width=40):
            draw.text((x, y), wrapped, font=text_font(28, bold=True), fill=FRACTURE_COLOR)
            y += 36
    for note in result.summary.notes:
        if note.startswith(FRACTURE_CHECK_LIMITED_NOTE):  # e.g. "Fracture check limited by 5.0 mm slices (see SR)"
            draw.text((x, y), note.split(":")[0].capitalize() + " (see SR)", font=text_font(22, bold=True),
                      fill=FRACTURE_COLOR)
            y += 34
    return y


def _draw_table(canvas: Image.Image, result: ScreeningResult, algorithm: AlgorithmInfo, x: int, y: int,
                width: int) -> None:
    draw = ImageDraw.Draw(canvas)
    summary = result.summary
    category_color = CATEGORY_COLORS[summary.category]
    draw.text((x, y), summary.category.value.upper(), font=text_font(56, bold=True), fill=category_color)
    y += 72
    bmd_text = f"BMD {_fmt(summary.bmd_mg_cm3, 0)} mg/cm³"
    levels = "–".join([summary.levels_used[0].name, summary.levels_used[-1].name]) if len(summary.levels_used) > 1 \
        else (summary.levels_used[0].name if summary.levels_used else "no level")
    category_only = summary.bmd_mg_cm3 is None and summary.category is not Category.INDETERMINATE
    draw.text((x, y), "BMD: no value" if category_only else f"{bmd_text}   ({levels})", font=text_font(36, bold=True),
              fill=TEXT)
    y += 50
    if category_only:
        for line in ("level names uncertain:", "category of every level around L1–L2"):
            draw.text((x, y), line, font=text_font(24), fill=MUTED)
            y += 30
    if summary.lumbar_equivalent:
        draw.text((x, y), "lumbar equivalent from thoracolumbar curve", font=text_font(24), fill=MUTED)
        y += 32
    legend = category_legend(summary)
    draw.text((x, y), legend[0], font=text_font(21), fill=MUTED)
    y += 27
    draw.text((x, y), legend[1], font=text_font(21), fill=MUTED)
    y += 36

    columns = (("Level", 0), ("HU", 130), ("BMD", 250), ("Status", 380))
    header_font, row_font = text_font(28, bold=True), text_font(28)
    for label, dx in columns:
        draw.text((x + dx, y), label, font=header_font, fill=MUTED)
    y += 38
    draw.line((x, y, x + width, y), fill=MUTED, width=2)
    y += 8
    row_height = 38 if len(result.vertebrae) <= 14 else 32
    used = set(summary.levels_used)
    for m in result.vertebrae:
        color = level_color_rgb(m.level)
        draw.rectangle((x, y + 6, x + 18, y + 26), fill=color)
        draw.text((x + 28, y), level_text(m.level, m.level_uncertain), font=text_font(28, bold=True), fill=TEXT)
        draw.text((x + 130, y), _fmt(m.trabecular_hu_mean), font=row_font, fill=TEXT)
        draw.text((x + 250, y), _fmt(m.bmd_mg_cm3), font=row_font, fill=TEXT)
        status, status_color = _status(m, m.level in used)
        draw.text((x + 380, y), status, font=text_font(24), fill=status_color)
        y += row_height
    y += 12
    draw.line((x, y, x + width, y), fill=MUTED, width=1)
    y += 12
    y = _draw_fracture_lines(draw, result, x, y)
    trend = trend_of(result.extra)
    if trend is not None:  # the change since the patient's prior study (service/results/trend_plot.py)
        y = draw_trend(canvas, trend, x, y, width, CANVAS_HEIGHT - 76, text_font)
    cal = result.calibration
    lines = [
        f"Method: {summary.method}",
        f"Calibration: {cal.kind.value.replace('_', ' ')} (BMD = {cal.slope:.3g}·HU {cal.intercept:+.3g})"
        + (f", {cal.scanner}" if cal.scanner else ""),
    ]
    if cal.flags:
        lines.append("Flags: " + ", ".join(cal.flags))
    if result.curve_fit is not None:
        lines.append(f"Thoracolumbar curve: k {result.curve_fit.k:.2f} HU/level, R² {result.curve_fit.r2:.2f}")
    lines.append(f"Thresholds: {summary.threshold_set}")
    lines += [f"Note: {note}" for note in summary.notes if not note.startswith(FRACTURE_CHECK_LIMITED_NOTE)]
    font = text_font(22)
    footer_y = CANVAS_HEIGHT - 40
    draw.text((x, footer_y), f"{algorithm.name} {algorithm.version} · model {algorithm.model_name} "
              f"{algorithm.model_version}", font=font, fill=TEXT)
    for line in lines:
        for wrapped in textwrap.wrap(line, width=52):
            if y > footer_y - 58:  # room for this line and the marker above the footer
                draw.text((x, y), "… (full details in the SR)", font=font, fill=MUTED)
                return
            draw.text((x, y), wrapped, font=font, fill=MUTED)
            y += 28


def render_key_image(volume: CTVolume, segmentation: SpineSegmentation, roi_labels: npt.NDArray[np.integer],
                     result: ScreeningResult, algorithm: AlgorithmInfo) -> npt.NDArray[np.uint8]:
    """The key image as an RGB array (rows, columns, 3)."""
    canvas = Image.new("RGB", (CANVAS_WIDTH, CANVAS_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, CANVAS_WIDTH, BANNER_HEIGHT), fill=BANNER_BG)
    draw.text((MARGIN + 4, BANNER_HEIGHT // 2), "AI result, to be reviewed", font=text_font(50, bold=True),
              fill=BANNER_FG, anchor="lm")
    draw.text((CANVAS_WIDTH - MARGIN - 4, BANNER_HEIGHT // 2), "Vertebral trabecular bone density (QCT)",
              font=text_font(34, bold=True), fill=(255, 255, 255), anchor="rm")

    body = segmentation.body_labels
    top = BANNER_HEIGHT + 16
    if np.any(body):
        ijk = np.argwhere(body != 0)[:: max(1, int(np.count_nonzero(body)) // 200_000)]
        lps = volume.index_to_lps(ijk)
        s_range = (float(lps[:, 2].max()) + FIELD_MARGIN_MM, float(lps[:, 2].min()) - FIELD_MARGIN_MM)
        span_s = s_range[0] - s_range[1]
        half_width = max(HALF_WIDTH_MIN_MM, span_s * PANEL_WIDTH / PANEL_HEIGHT / 2)
        right = np.array([1.0, 0.0, 0.0])  # +L: patient left goes to screen right (radiological convention)
        posterior = np.array([0.0, 1.0, 0.0])  # +P: anterior on screen left
        sagittal = _reformat(volume, body, roi_labels, lps, posterior, right, s_range, half_width,
                             SAGITTAL_POSTERIOR_SHIFT_MM)
        coronal = _reformat(volume, body, roi_labels, lps, right, posterior, s_range, half_width)
        uncertain = frozenset(int(v.level) for v in segmentation.vertebrae if v.level_uncertain)
        _draw_panel(canvas, sagittal, (MARGIN, top), "Sagittal", "A", "P", "left", uncertain)
        _draw_panel(canvas, coronal, (MARGIN * 2 + PANEL_WIDTH, top), "Coronal", "R", "L", "right", uncertain)
    else:
        draw.text((MARGIN + 20, top + 80), "no vertebra segmented", font=text_font(36, bold=True), fill=EXCLUDED_COLOR)
    table_x = MARGIN * 4 + 2 * PANEL_WIDTH
    _draw_table(canvas, result, algorithm, table_x, top + 8, CANVAS_WIDTH - table_x - MARGIN)
    return np.asarray(canvas, dtype=np.uint8)


def build_key_image(volume: CTVolume, segmentation: SpineSegmentation, roi_labels: npt.NDArray[np.integer],
                    result: ScreeningResult, algorithm: AlgorithmInfo, source_header: Dataset,
                    when: dt.datetime) -> hd.sc.SCImage:
    """The key image as a Secondary Capture instance in its own series of the source study."""
    pixels = render_key_image(volume, segmentation, roi_labels, result, algorithm)
    # Two reformats side by side: both have rows toward the feet; columns differ, so only F is stated.
    sc = secondary_capture(pixels, source_header=source_header, series_number=KEY_IMAGE_SERIES_NUMBER,
                           series_description="AI bone density key image (to be reviewed)",
                           patient_orientation=("P", "F"), algorithm=algorithm, when=when)
    sc.DerivationDescription = "Sagittal and coronal reformats with AI vertebral segmentation and BMD table"
    sc.ImageComments = "AI result, to be reviewed"
    return sc
