"""What OHIF shows of our result objects, read the same way by the viewer tests and the screenshot command.

``read_seg`` loads the SEG over the CT and counts coloured viewport pixels before and after (the CT is grey, the
segment overlay is coloured). ``read_sr`` loads the SR and steps through the measurements OHIF draws (their on-image
labels). ``track_sr`` does what a reader does to get the SR's measurements into OHIF's measurement panel: open the
study afresh, open the SR, answer Yes to "Do you want to continue tracking measurements for this study?"; it then
reads the panel. (The two are separate visits: stepping through the SR's measurements dismisses OHIF's prompt.) All
keep the browser console lines that mention SEG, SR or SCOORD, which is where OHIF says why an object does not
display.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.offline.viewer.browser import coloured_pixels, save_png
from service.offline.viewer.ohif import VIEWPORT_MARGIN_PX, OhifPage, bmd_values_by_level

CONSOLE_WORDS = ("seg", "sr ", "sr:", "scoord", "segmentation", "measurement", "error")
SEG_MIN_NEW_PIXELS = 200
"""A SEG overlay must colour at least this many more viewport pixels than the bare CT shows."""


@dataclass
class SegReading:
    description: str
    coloured_before: int
    coloured_after: int
    prompt_answered: bool
    console: list[str] = field(default_factory=list)

    @property
    def overlay_shown(self) -> bool:
        return self.coloured_after - self.coloured_before >= SEG_MIN_NEW_PIXELS


@dataclass
class SrReading:
    description: str
    annotation_texts: list[str]
    console: list[str] = field(default_factory=list)

    def annotation_bmd(self, levels: list[str]) -> dict[str, list[float]]:
        return bmd_values_by_level(self.annotation_texts, levels)


@dataclass
class TrackedReading:
    """OHIF's measurement panel after the reader accepted to track the SR's measurements."""

    description: str
    prompt_answered: bool
    panel_count: int
    panel_text: str
    console: list[str] = field(default_factory=list)

    def panel_bmd(self, levels: list[str]) -> dict[str, list[float]]:
        """Per level, the mg/cm3 values the measurement panel lists on lines that name the level."""
        return bmd_values_by_level(self.panel_text.splitlines(), levels)


def _console(page: OhifPage, since: int) -> list[str]:
    page.console.collect(page.driver)
    return [line for line in page.console.lines[since:] if any(w in line.lower() for w in CONSOLE_WORDS)]


def read_seg(page: OhifPage, screenshot: Path | None = None, timeout_s: float = 90.0) -> SegReading:
    since = len(page.console.lines)
    before = coloured_pixels(page.viewport_rgb(), margin_px=VIEWPORT_MARGIN_PX)
    description = page.load_series("SEG")
    answered = page.answer_prompt_yes(timeout_s=min(30.0, timeout_s))
    after = page.wait_for_coloured_pixels(before + SEG_MIN_NEW_PIXELS, timeout_s)
    time.sleep(1.0)  # let the overlay finish drawing before the picture
    rgb = page.viewport_rgb()
    after = max(after, coloured_pixels(rgb, margin_px=VIEWPORT_MARGIN_PX))
    if screenshot is not None:
        save_png(rgb, screenshot)
    return SegReading(description, before, after, answered, _console(page, since))


def read_sr(page: OhifPage, max_measurements: int, screenshot_dir: Path | None = None,
            settle_s: float = 4.0) -> SrReading:
    since = len(page.console.lines)
    description = page.load_series("SR")
    time.sleep(settle_s)
    texts: list[str] = []
    for step in range(max_measurements + 1):
        texts.extend(t for t in page.annotation_texts() if t not in texts)
        if screenshot_dir is not None and page.annotation_texts():
            save_png(page.viewport_rgb(), screenshot_dir / f"sr_roi_{step + 1:02d}.png")
        if step == max_measurements or not page.click_if_present("[data-cy='viewport-action-arrows-right']",
                                                                  by="css selector"):
            break
        time.sleep(settle_s / 2)
    return SrReading(description, texts, _console(page, since))


def track_sr(page: OhifPage, study_instance_uid: str, expected_measurements: int,
             screenshot: Path | None = None, timeout_s: float = 90.0) -> TrackedReading:
    """Open the study, open the SR, answer Yes to OHIF's tracking prompt; the panel once it lists
    ``expected_measurements`` (or at ``timeout_s``)."""
    since = len(page.console.lines)
    page.open_study(study_instance_uid, timeout_s=timeout_s)
    description = page.load_series("SR")
    answered = page.answer_prompt_yes(timeout_s=min(60.0, timeout_s))
    count = page.wait_for_panel_measurements(expected_measurements, timeout_s) if answered else 0
    time.sleep(1.0)  # let the last rows render before the picture
    if screenshot is not None:
        page.driver.save_screenshot(str(screenshot))
    return TrackedReading(description, answered, count, page.measurement_panel_text(), _console(page, since))


def readings_json(**parts: Any) -> dict[str, Any]:
    """A JSON-ready dict of readings (dataclasses become dicts, with the derived flags)."""
    out: dict[str, Any] = {}
    for name, part in parts.items():
        if isinstance(part, SegReading):
            out[name] = {**asdict(part), "overlay_shown": part.overlay_shown}
        elif isinstance(part, (SrReading, TrackedReading)):
            out[name] = asdict(part)
        else:
            out[name] = part
    return out
