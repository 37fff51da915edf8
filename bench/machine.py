"""Where and with what the benchmark ran: CPU, cores, RAM, load, date, tool and library versions."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import service
from bench import REPO_ROOT
from bench.procs import find_pg_bin, orthanc_binary_or_none

PYTHON_PACKAGES = ("torch", "numpy", "pydicom", "pynetdicom", "highdicom", "monai", "SQLAlchemy", "psycopg2-binary",
                   "psycopg2", "scipy", "scikit-image")


def _first_line(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    except OSError:
        return None
    return round(int(match.group(1)) / 1024**2, 1) if match else None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _dcmtk_version() -> str | None:
    line = _first_line(["storescu", "--version"])
    match = re.search(r"v(\d+\.\d+\.\d+)", line or "")
    return match.group(1) if match else line


def _orthanc_version() -> str | None:
    binary = orthanc_binary_or_none()
    if binary is None:
        return None
    line = _first_line([binary, "--version"])
    match = re.search(r"(\d+\.\d+\.\d+)", line or "")
    return match.group(1) if match else line


def _postgres_version() -> str | None:
    pg_bin = find_pg_bin()
    if pg_bin is None:
        return None
    line = _first_line([str(pg_bin / "postgres"), "--version"])
    match = re.search(r"(\d+(\.\d+)+)", line or "")
    return match.group(1) if match else line


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def gpu() -> dict[str, Any]:
    try:
        import torch  # noqa: PLC0415 (optional and heavy: only to name the GPU, in this function)
    except ImportError:
        return {"available": False, "name": None}
    if not torch.cuda.is_available():
        return {"available": False, "name": None}
    return {"available": True, "name": torch.cuda.get_device_name(0)}


def describe_machine() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "platform": platform.platform(),
        "load_average_1_5_15": load_average(),
        "gpu": gpu(),
    }


def describe_versions() -> dict[str, Any]:
    packages = {name: _package_version(name) for name in PYTHON_PACKAGES}
    return {
        "bmd_node": service.__version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        **{name.lower(): v for name, v in packages.items() if v is not None},
        "sqlite": sqlite3.sqlite_version,
        "orthanc": _orthanc_version(),
        "dcmtk": _dcmtk_version(),
        "postgresql": _postgres_version(),
    }


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
