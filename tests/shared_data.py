"""Where the real CT cases of ../shared/data live; tests that need them fail (never skip) when missing."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_case(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(f"real CT case {name!r} missing: expected {path} (../shared/data beside the repository)")
    return path
