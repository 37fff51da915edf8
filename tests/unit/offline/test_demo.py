"""`make demo` mechanics: node + PACS + phantom in, results back, table and locations printed. The screening
pipeline is the small test pipeline here (the real one needs the trained segmentation model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_demo_round_trip(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.offline.demo.node_demo", "--workdir", str(tmp_path / "demo"), "--matrix", "256",
         "--timeout-s", "240", "--pipeline", "tests.node_support:make_mean_hu_pipeline"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "per-vertebra results" in out and "summary:" in out
    assert out.count("PACS:  ") == 2 and "NOT RECEIVED" not in out
    received = list((tmp_path / "demo" / "pacs").glob("*.dcm"))
    assert len(received) == 2
    assert all(str(p) in out for p in received)
