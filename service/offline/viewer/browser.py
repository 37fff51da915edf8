"""Debian's Chromium, headless with software WebGL (SwiftShader), driven by Selenium through chromedriver.

No GPU: ANGLE on SwiftShader gives the WebGL2 context cornerstone3D needs (``--enable-unsafe-swiftshader`` is
required since Chromium 137 for the software fallback). The console of the page is kept (``goog:loggingPrefs``) so
that callers can report what OHIF logged. ``coloured_pixels`` counts pixels whose channels differ, i.e. not grey:
the CT renders in grey levels, overlays (SEG, SR annotations) in colour.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "chromium")
CHROMEDRIVER_BINARIES = ("/usr/bin/chromedriver", "chromedriver")
WINDOW_SIZE = (1600, 1000)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--enable-webgl",
    "--disable-extensions",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
COLOUR_SPREAD_MIN = 40
"""A pixel is coloured when max(R,G,B) - min(R,G,B) reaches this (grey CT and white text stay below)."""


def _first_existing(candidates: tuple[str, ...], package: str) -> str:
    for candidate in candidates:
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found:
            return found
    raise RuntimeError(f"{candidates[0]} not found: install the Debian package '{package}' (`make install`)")


def chromium_options(window_size: tuple[int, int] = WINDOW_SIZE) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = _first_existing(CHROMIUM_BINARIES, "chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={window_size[0]},{window_size[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@contextmanager
def chromium(window_size: tuple[int, int] = WINDOW_SIZE) -> Iterator[webdriver.Chrome]:
    """A headless Chromium session; quits on exit."""
    service = Service(executable_path=_first_existing(CHROMEDRIVER_BINARIES, "chromium-driver"))
    driver = webdriver.Chrome(options=chromium_options(window_size), service=service)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class ConsoleLog:
    """Every browser console line seen so far (chromedriver hands each line out once)."""

    lines: list[str] = field(default_factory=list)

    def collect(self, driver: webdriver.Chrome) -> list[str]:
        new = [f"{entry.get('level')}: {entry.get('message')}" for entry in driver.get_log("browser")]
        self.lines.extend(new)
        return new

    def matching(self, *words: str) -> list[str]:
        lowered = [w.lower() for w in words]
        return [line for line in self.lines if any(w in line.lower() for w in lowered)]


def element_image(element: WebElement) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The element as it shows on screen, RGB (rows, columns, 3)."""
    png = element.screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def coloured_pixels(rgb: np.ndarray[Any, np.dtype[np.uint8]], spread_min: int = COLOUR_SPREAD_MIN,
                    margin_px: int = 0) -> int:
    """How many pixels are clearly not grey (channel spread >= ``spread_min``), ``margin_px`` from the edges in."""
    if margin_px:
        rgb = rgb[margin_px:-margin_px, margin_px:-margin_px]
    channels = rgb.astype(np.int16)
    spread = channels.max(axis=2) - channels.min(axis=2)
    return int(np.count_nonzero(spread >= spread_min))


def save_png(rgb: np.ndarray[Any, np.dtype[np.uint8]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path
