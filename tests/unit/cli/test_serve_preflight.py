"""``bmd-node serve`` (the real CLI, a subprocess) with a missing or broken segmentation model: it exits non-zero
within seconds with a message naming the file, and never listens on its DICOM port (issue 19 pt 6)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from service.config import Config
from service.domain.paths import PROJECT_ROOT
from service.segmentation.settings import SegmentationSettings
from service.serve import EXIT_PREFLIGHT_FAILED, preflight_model_files
from tests.support.net import free_port

SHIPPED = PROJECT_ROOT / "models"


def _serve(tmp_path: Path, bundle_dir: Path, timeout_s: float) -> tuple[int, str, float]:
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(f"""
[node]
host = "127.0.0.1"
port = {port}
http_port = 0
storage_dir = "{tmp_path / 'storage'}"
database_url = "sqlite:///{tmp_path / 'node.db'}"
[segmentation]
bundle_dir = "{bundle_dir}"
device = "cpu"
[worker]
processes = 1
""")
    script = Path(sys.executable).parent / "bmd-node"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "service"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BMD_NODE_CONFIG", None)
    started = time.monotonic()
    done = subprocess.run([*command, "--config", str(config), "serve"], capture_output=True, text=True,
                          timeout=timeout_s, cwd=tmp_path, env=env)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def _bundle_copy(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(SHIPPED / "vertebra_seg", target)
    return target


def test_missing_model_file_stops_serve(tmp_path: Path) -> None:
    bundle = _bundle_copy(tmp_path)
    (bundle / "models" / "model.pt").unlink()
    code, output, seconds = _serve(tmp_path, bundle, timeout_s=60)
    assert code == EXIT_PREFLIGHT_FAILED, output[-2000:]
    assert f"{bundle / 'models' / 'model.pt'}: missing" in output
    assert "listening" not in output
    assert seconds < 15, seconds  # the file check runs in the parent, before any worker starts (~3 s here)


def test_truncated_model_file_stops_serve(tmp_path: Path) -> None:
    bundle = _bundle_copy(tmp_path)
    weights = bundle / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:100_000])
    code, output, seconds = _serve(tmp_path, bundle, timeout_s=60)
    assert code == EXIT_PREFLIGHT_FAILED, output[-2000:]
    assert str(weights) in output and "truncated or damaged" in output
    assert "listening" not in output
    assert seconds < 15, seconds


def test_weights_that_do_not_load_stop_serve_from_the_worker(tmp_path: Path) -> None:
    """A whole torch file with the wrong network's weights passes the parent's file check; the worker's load and
    warm-up fail, it reports to the parent, and serve stops before listening."""
    bundle = _bundle_copy(tmp_path)
    weights = bundle / "models" / "model.pt"
    shutil.copyfile(SHIPPED / "vertebra_body_fine" / "models" / "model.pt", weights)
    code, output, seconds = _serve(tmp_path, bundle, timeout_s=120)
    assert code == EXIT_PREFLIGHT_FAILED, output[-2000:]
    assert "worker-0: segmentation model file" in output and str(weights) in output
    assert "listening" not in output
    assert seconds < 60, seconds


def test_what_the_parent_checks(tmp_path: Path) -> None:
    missing = Config(segmentation=SegmentationSettings(bundle_dir=tmp_path / "none"))
    assert preflight_model_files(missing, None, 0) is None  # no worker here: no pipeline runs in this node
    assert preflight_model_files(missing, "tests.node_support:make_mean_hu_pipeline", 1) is None  # needs no model
    problem = preflight_model_files(missing, None, 1)
    assert problem is not None and str(tmp_path / "none" / "configs" / "metadata.json") in problem
    assert preflight_model_files(Config(), None, 1) is None  # the shipped bundles
