"""The key image's trend panel (issue 20): the prior and current BMD on a date axis, the band of the least
significant change around the prior, and the change in words. Drawn with PIL like the rest of the key image."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont

from service.domain.trend import Trend

TREND_BEYOND_COLOR = (255, 60, 200)
"""The change beyond the least significant change (magenta: no other element of the key image uses it)."""
TREND_WITHIN_COLOR = (120, 200, 255)
TREND_TEXT = (235, 235, 235)
TREND_MUTED = (170, 170, 170)
TREND_WARNING = (255, 150, 60)
LSC_BAND = (45, 45, 60)
PLOT_HEIGHT = 150
LINE_HEIGHT = 28
MIN_PLOT_ROOM = PLOT_HEIGHT + 4 * LINE_HEIGHT + 40
"""Below this much room the panel is text only."""


FontOf = Callable[[int, bool], ImageFont.FreeTypeFont]
"""The key image's font loader (size in pixels, bold)."""


def change_text(trend: Trend) -> str:
    """"-12.0 mg/cm³ (-12.0 %, -12.0 %/year) since 2025-03-01", or why no change is given."""
    since = f"since {trend.prior_study_date.isoformat()}"
    if not trend.comparable or trend.change_mg_cm3 is None:
        return f"Not comparable with the prior study {since}"
    percent = "" if trend.change_percent is None else f"{trend.change_percent:+.1f} %"
    rate = "" if trend.percent_per_year is None else f", {trend.percent_per_year:+.1f} %/year"
    return f"{trend.change_mg_cm3:+.1f} mg/cm³ ({percent}{rate}) {since}"


def flag_text(trend: Trend) -> str:
    if not trend.comparable:
        return "least significant change: not assessed"
    word = "BEYOND" if trend.beyond_lsc else "within"
    return f"{word} least significant change ({trend.lsc_percent:.1f} %)"


def _plot(draw: ImageDraw.ImageDraw, trend: Trend, x: int, y: int, width: int, font: FontOf) -> None:
    """Two points (prior, current) on a date axis, the prior +/- LSC band, value labels."""
    before, after = trend.prior_bmd_mg_cm3, trend.current_bmd_mg_cm3
    if before is None or after is None:
        return
    band = abs(before) * trend.lsc_percent / 100.0
    low = min(before - band, after) - 5.0
    high = max(before + band, after) + 5.0
    left, right = x + 70, x + width - 90
    top, bottom = y + 8, y + PLOT_HEIGHT - 26

    def row(value: float) -> float:
        return bottom - (value - low) / (high - low) * (bottom - top)

    draw.rectangle((left, row(before + band), right, row(before - band)), fill=LSC_BAND)
    draw.line((left, bottom, right, bottom), fill=TREND_MUTED, width=1)
    draw.line((left, top, left, bottom), fill=TREND_MUTED, width=1)
    color = TREND_BEYOND_COLOR if trend.beyond_lsc else TREND_WITHIN_COLOR
    p0, p1 = (left + 14, row(before)), (right - 14, row(after))
    draw.line((*p0, *p1), fill=color, width=4)
    for (px, py), when in ((p0, trend.prior_study_date), (p1, trend.current_study_date)):
        draw.ellipse((px - 8, py - 8, px + 8, py + 8), fill=color)
        draw.text((px, bottom + 4), when.isoformat(), font=font(18, False), fill=TREND_MUTED, anchor="mt")
    draw.text((p0[0] - 14, p0[1]), f"{before:.0f}", font=font(22, True), fill=TREND_TEXT, anchor="rm")
    draw.text((p1[0] + 14, p1[1]), f"{after:.0f}", font=font(22, True), fill=TREND_TEXT, anchor="lm")
    draw.text((left - 6, top), "mg/cm³", font=font(16, False), fill=TREND_MUTED, anchor="rt")


def draw_trend(canvas: Image.Image, trend: Trend, x: int, y: int, width: int, bottom: int, font: FontOf
               ) -> int:
    """Draw the panel from ``y`` down, not below ``bottom``; returns the y under it."""
    draw = ImageDraw.Draw(canvas)
    draw.text((x, y), "Change since prior study", font=font(28, True), fill=TREND_TEXT)
    y += 38
    color = TREND_BEYOND_COLOR if trend.comparable and trend.beyond_lsc else (
        TREND_WITHIN_COLOR if trend.comparable else TREND_MUTED)
    if trend.comparable and bottom - y >= MIN_PLOT_ROOM:
        _plot(draw, trend, x, y, width, font)
        y += PLOT_HEIGHT
    lines = [(change_text(trend), font(24, True), TREND_TEXT), (flag_text(trend), font(24, True), color)]
    levels = "-".join(trend.levels_compared) or "-".join(trend.prior_levels) or "none"
    prior = f"levels {levels} · prior: {trend.prior_calibration_kind.replace('_', ' ') or 'unknown'} calibration"
    if trend.prior_kvp:
        prior += f", {trend.prior_kvp:g} kVp"
    lines.append((prior, font(21, False), TREND_MUTED))
    lines += [(f"Warning: {w}", font(21, False), TREND_WARNING) for w in trend.warnings]
    for text, line_font, fill in lines:
        for wrapped in textwrap.wrap(text, width=52):
            if y + LINE_HEIGHT > bottom:
                return y
            draw.text((x, y), wrapped, font=line_font, fill=fill)
            y += LINE_HEIGHT
    return y + 8
