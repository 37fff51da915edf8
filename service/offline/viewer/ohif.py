"""Drive the OHIF viewer (3.13, basic viewer mode) as a radiologist would, and read back what it shows.

Selectors are OHIF's own ``data-cy`` attributes: ``study-browser-thumbnail*`` (series list, with
``series-modality-label``), ``viewport-pane``, ``viewport-action-arrows-right`` (next SR measurement),
``trackedMeasurements-btn`` (the measurement panel). SEG and SR loads end with OHIF's prompt ("Do you want to open
this Segmentation?", "Do you want to continue tracking measurements for this study?"), answered Yes as a reader
would. The SR prompt goes away (as "No") at the first click elsewhere, e.g. on the viewport's measurement arrows.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver import Chrome
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from service.offline.viewer.browser import ConsoleLog, coloured_pixels, element_image

SERIES_ITEMS = "[data-cy^='study-browser-thumbnail']"
VIEWPORT = "[data-cy='viewport-pane'] .viewport-element"
NEXT_MEASUREMENT = "[data-cy='viewport-action-arrows-right']"
MEASUREMENT_PANEL_BUTTON = "[data-cy='trackedMeasurements-btn']"
MEASUREMENT_PANEL = "[data-cy='trackedMeasurements-panel']"
POLL_S = 0.5
LIT_FRACTION_MIN = 0.02
"""The viewport shows an image once this fraction of its pixels is brighter than near-black."""
VIEWPORT_MARGIN_PX = 80
"""Left out at the viewport's edges when counting colour: active-viewport border, corner icons, overlay text."""
BMD_VALUE = re.compile(r"(-?\d+(?:\.\d+)?)\s*mg/cm3")
PANEL_COUNT = re.compile(r"Measurements \((\d+)\)")


@dataclass
class OhifPage:
    """One OHIF tab on ``origin``; ``console`` keeps every browser console line seen."""

    driver: Chrome
    origin: str
    console: ConsoleLog = field(default_factory=ConsoleLog)

    def open_study(self, study_instance_uid: str, timeout_s: float = 120.0) -> None:
        """Open the study in the basic viewer; returns once the first image is drawn."""
        self.driver.get(f"{self.origin}/viewer?StudyInstanceUIDs={study_instance_uid}")
        self._wait(lambda: self._lit_fraction() >= LIT_FRACTION_MIN, "the first CT image", timeout_s)
        self.click_if_present("//*[text()='Skip all']")  # the first-visit tour

    def series_items(self) -> list[tuple[str, str, WebElement]]:
        """(modality, description, element) per entry of the study browser."""
        out = []
        try:
            for element in self.driver.find_elements(By.CSS_SELECTOR, SERIES_ITEMS):
                modality = self._text_of(element, "[data-cy='series-modality-label']")
                description = self._text_of(element, "[data-cy='series-description-label']")
                out.append((modality, description, element))
        except StaleElementReferenceException:
            return []  # the list re-rendered: callers poll again
        return out

    def load_series(self, modality: str, timeout_s: float = 30.0) -> str:
        """Double-click the first series of ``modality`` into the active viewport; returns its description."""
        def find() -> tuple[str, WebElement] | None:
            for found_modality, description, element in self.series_items():
                if found_modality == modality:
                    return description, element
            return None
        description, element = self._wait(find, f"a {modality} series in the study browser", timeout_s)
        ActionChains(self.driver).double_click(element).perform()
        return description

    def answer_prompt_yes(self, timeout_s: float = 20.0) -> bool:
        """Click OHIF's "Yes" (open segmentation / track measurements) if it shows within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.click_if_present("//button[normalize-space(text())='Yes']"):
                return True
            time.sleep(POLL_S)
        return False

    def viewport_rgb(self, attempts: int = 5) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """The viewport as shown; retried while React replaces the element under us."""
        for _ in range(attempts - 1):
            try:
                return element_image(self.driver.find_element(By.CSS_SELECTOR, VIEWPORT))
            except StaleElementReferenceException:
                time.sleep(POLL_S)
        return element_image(self.driver.find_element(By.CSS_SELECTOR, VIEWPORT))

    def wait_for_coloured_pixels(self, more_than: int, timeout_s: float) -> int:
        """The viewport's coloured pixel count once it exceeds ``more_than``; else the last count seen."""
        deadline = time.monotonic() + timeout_s
        count = coloured_pixels(self.viewport_rgb(), margin_px=VIEWPORT_MARGIN_PX)
        while count <= more_than and time.monotonic() < deadline:
            time.sleep(POLL_S)
            count = coloured_pixels(self.viewport_rgb(), margin_px=VIEWPORT_MARGIN_PX)
        return count

    def annotation_texts(self) -> list[str]:
        """The text boxes drawn on the viewport (SR measurement labels), one string per box."""
        boxes = self.driver.find_elements(By.CSS_SELECTOR, f"{VIEWPORT} svg text")
        return [" | ".join(t.text for t in box.find_elements(By.TAG_NAME, "tspan")) or box.text for box in boxes]

    def walk_sr_measurements(self, max_steps: int, settle_s: float = 2.0) -> list[str]:
        """Every SR measurement label OHIF draws, stepping through them with the viewport's "next" arrow."""
        seen: list[str] = []
        for _ in range(max_steps):
            time.sleep(settle_s)
            new = [text for text in self.annotation_texts() if text not in seen]
            seen.extend(new)
            if not self.click_if_present(NEXT_MEASUREMENT, by=By.CSS_SELECTOR):
                break
        return seen

    def measurement_panel_text(self, settle_s: float = 2.0) -> str:
        """The text of OHIF's measurement panel (opened first if closed)."""
        if not self.driver.find_elements(By.CSS_SELECTOR, MEASUREMENT_PANEL):
            self.click_if_present(MEASUREMENT_PANEL_BUTTON, by=By.CSS_SELECTOR)
            time.sleep(settle_s)
        panels = self.driver.find_elements(By.CSS_SELECTOR, MEASUREMENT_PANEL)
        return str(panels[0].text) if panels else ""

    def panel_measurement_count(self) -> int:
        """The count in the measurement panel's header ("Measurements (6)"); 0 while it lists none."""
        found = PANEL_COUNT.search(self.measurement_panel_text(settle_s=0.5))
        return int(found.group(1)) if found else 0

    def wait_for_panel_measurements(self, at_least: int, timeout_s: float) -> int:
        """The panel's measurement count once it reaches ``at_least``; else the last count seen."""
        deadline = time.monotonic() + timeout_s
        count = self.panel_measurement_count()
        while count < at_least and time.monotonic() < deadline:
            time.sleep(POLL_S)
            count = self.panel_measurement_count()
        return count

    def click_if_present(self, selector: str, by: str = By.XPATH) -> bool:
        for element in self.driver.find_elements(by, selector):
            try:
                if element.is_displayed() and element.is_enabled():
                    element.click()
                    return True
            except (StaleElementReferenceException, WebDriverException):
                continue
        return False

    def _lit_fraction(self) -> float:
        try:
            rgb = self.viewport_rgb()
        except WebDriverException:
            return 0.0
        return float(np.mean(rgb.max(axis=2) > 16)) if rgb.size else 0.0

    def _text_of(self, element: WebElement, css: str) -> str:
        found = element.find_elements(By.CSS_SELECTOR, css)
        return str(found[0].text).strip() if found else ""

    def _wait(self, condition: Any, what: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            self.console.collect(self.driver)
            time.sleep(POLL_S)
        self.console.collect(self.driver)
        raise TimeoutError(f"OHIF did not show {what} within {timeout_s} s; console: {self.console.lines[-15:]}")


def bmd_values_by_level(texts: list[str], levels: list[str]) -> dict[str, list[float]]:
    """Per level name, the mg/cm3 values in the texts that name the level (``"L1"`` matches ``"L1 vertebra"``)."""
    out: dict[str, list[float]] = {level: [] for level in levels}
    for text in texts:
        for level in levels:
            if re.search(rf"\b{re.escape(level)}\b", text):
                out[level].extend(float(v) for v in BMD_VALUE.findall(text))
    return out
