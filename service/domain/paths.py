"""Where shipped files live: the project root that holds models/ and how configured model paths resolve."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout / install root that holds models/ (bundles and calibration files shipped with the code)."""


def resolve_model_path(path: Path) -> Path:
    """A model path from the configuration: absolute as given; relative to the working directory when it exists
    there, else relative to the project root (so that ``models/...`` works whatever the working directory,
    e.g. under systemd with WorkingDirectory=/var/lib/bmd-node)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path
