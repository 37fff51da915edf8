"""Shared helpers for the DICOM network tests: test CT files, DCMTK transcoding and peers, a recorder, configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, generate_uid
from pynetdicom.dsutils import split_dataset

from service.config import Config, build_config
from service.receive.handlers import ReceivedInstance
from tests.support.ct_series import CTSeriesHeader, ct_slice, write_ct_series
from tests.support.net import wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"
J2K_SLAB_DIR = SHARED_DATA / "ts_abdomen_slab_j2k" / "dicom"

# DCMTK and Orthanc stall ~40 ms per PDU without TCP_NODELAY (see ARCHITECTURE.md).
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def require_tool(name: str) -> str:
    """Path of a system tool (DCMTK), skipping the virtual environment's bin folder: pynetdicom installs Python
    apps named storescp / storescu / echoscu there, which shadow DCMTK's when the environment is activated."""
    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    search = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                             if d and os.path.abspath(d) != venv_bin)
    path = shutil.which(name, path=search)
    if path is None:
        raise RuntimeError(f"{name} is not installed (make install installs the Debian packages the tests need)")
    return path


NET_HEADER = {"PatientName": "Test^Network", "PatientID": "NET-0001", "SeriesNumber": 2}
"""What the network tests' images carry over the writer's defaults."""


def _net_header(study_instance_uid: str, series_instance_uid: str, *, bits_allocated: int = 16,
                modality: str = "CT", sop_class_uid: str = CTImageStorage) -> CTSeriesHeader:
    return CTSeriesHeader(study_instance_uid=study_instance_uid, series_instance_uid=series_instance_uid,
                          frame_of_reference_uid=generate_uid(entropy_srcs=[study_instance_uid, "for"]),
                          pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=2.0,
                          bits_stored=12 if bits_allocated == 16 else 8,
                          extra={**NET_HEADER, "Modality": modality, "SOPClassUID": sop_class_uid})


def _net_pixels(rows: int, columns: int, bits_allocated: int, seed: int) -> npt.NDArray[np.unsignedinteger]:
    """A smooth pattern with a little noise from ``seed`` (uint16 within 12 bits, or uint8)."""
    rng = np.random.default_rng(seed)
    high = 4095 if bits_allocated == 16 else 255
    dtype = np.uint16 if bits_allocated == 16 else np.uint8
    yy, xx = np.mgrid[0:rows, 0:columns]
    pixels = ((np.sin(xx / 7.0) + np.cos(yy / 5.0) + 2.0) * high / 4.0).astype(dtype)
    return np.clip(pixels + rng.integers(0, 8, size=pixels.shape), 0, high).astype(dtype)


def make_image_dataset(
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 64,
    columns: int = 64,
    bits_allocated: int = 16,
    modality: str = "CT",
    sop_class_uid: str = CTImageStorage,
    seed: int = 0,
) -> Dataset:
    """A small, valid single-frame image (CT by default) in Explicit VR Little Endian."""
    header = _net_header(study_instance_uid, series_instance_uid, bits_allocated=bits_allocated, modality=modality,
                         sop_class_uid=sop_class_uid)
    return ct_slice(_net_pixels(rows, columns, bits_allocated, seed + instance_number), header,
                    instance_number=instance_number, position_lps_mm=(-100.0, -100.0, -2.0 * instance_number),
                    sop_instance_uid=sop_instance_uid)


def write_series(
    directory: Path,
    count: int,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    bits_allocated: int = 16,
    seed: int = 0,
) -> list[Path]:
    """``count`` images of one CT series (``make_image_dataset``'s), positions 2 mm apart going down."""
    header = _net_header(study_instance_uid or generate_uid(), series_instance_uid or generate_uid(),
                         bits_allocated=bits_allocated)
    frames = (_net_pixels(rows, columns, bits_allocated, seed + k + 1) for k in range(count))
    return write_ct_series(directory, frames, header, origin_lps_mm=(-100.0, -100.0, -2.0), slice_step_mm=-2.0)


def make_secondary_capture(study_instance_uid: str, directory: Path, name: str = "sc.dcm") -> Path:
    """A non-CT object in the given study (used as a stand-in result object)."""
    ds = make_image_dataset(
        study_instance_uid=study_instance_uid,
        series_instance_uid=generate_uid(),
        modality="OT",
        sop_class_uid=SecondaryCaptureImageStorage,
        bits_allocated=8,
    )
    ds.ConversionType = "WSD"
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "KVP", "FrameOfReferenceUID",
               "RescaleIntercept", "RescaleSlope", "RescaleType"):
        delattr(ds, kw)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    ds.save_as(path, enforce_file_format=True)
    return path


# DCMTK commands that transcode an Explicit VR LE file into each transfer syntax, and the storescu option that
# proposes it.
TRANSCODE_COMMANDS: dict[str, tuple[list[str], str]] = {
    "1.2.840.10008.1.2": (["dcmconv", "+ti"], "-xi"),
    "1.2.840.10008.1.2.1": (["dcmconv", "+te"], "-xe"),
    "1.2.840.10008.1.2.1.99": (["dcmconv", "+td"], "-xd"),
    "1.2.840.10008.1.2.4.50": (["dcmcjpeg", "+eb"], "-xy"),
    "1.2.840.10008.1.2.4.57": (["dcmcjpeg", "+el"], "-xs"),
    "1.2.840.10008.1.2.4.70": (["dcmcjpeg", "+e1"], "-xs"),
    "1.2.840.10008.1.2.4.80": (["dcmcjpls", "+el"], "-xt"),
    "1.2.840.10008.1.2.4.81": (["dcmcjpls", "+en"], "-xu"),
    "1.2.840.10008.1.2.5": (["dcmcrle"], "-xr"),
}
STORESCU_PROPOSE = {
    **{ts: opt for ts, (_, opt) in TRANSCODE_COMMANDS.items()},
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


def transcode(src: Path, dst: Path, transfer_syntax_uid: str) -> Path:
    cmd, _ = TRANSCODE_COMMANDS[transfer_syntax_uid]
    require_tool(cmd[0])
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*cmd, str(src), str(dst)], check=True, capture_output=True, timeout=60)
    return dst


def real_j2k_with_uids(dst: Path, *, study_instance_uid: str, series_instance_uid: str) -> Path:
    """A copy of one real JPEG 2000 slice (shared data) with the UIDs its anonymisation emptied filled in.

    dcmodify rewrites the header only; the scanner's JPEG 2000 codestream is kept as it is.
    """
    if not J2K_SLAB_DIR.is_dir():
        raise FileNotFoundError(f"real data folder {J2K_SLAB_DIR} is missing (../shared/data, see its README)")
    require_tool("dcmodify")
    src = sorted(J2K_SLAB_DIR.glob("*.dcm"))[0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    sop = src.name.removeprefix("CT.").removesuffix(".dcm")
    edits = {
        "(0008,0016)": CTImageStorage,
        "(0008,0018)": sop,
        "(0020,000D)": study_instance_uid,
        "(0020,000E)": series_instance_uid,
    }
    cmd = ["dcmodify", "-nb", *[arg for tag, value in edits.items() for arg in ("-m", f"{tag}={value}")], str(dst)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return dst


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a DICOM file (after preamble and file meta)."""
    _, offset = split_dataset(path)
    with path.open("rb") as f:
        f.seek(offset)
        return f.read()


@dataclass
class ListRecorder:
    """In-memory recorder with the database's duplicate semantics (thread-safe)."""

    rows: dict[str, ReceivedInstance] = field(default_factory=dict)
    calls: list[ReceivedInstance] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, row: ReceivedInstance) -> bool:
        with self.lock:
            self.calls.append(row)
            existing = self.rows.get(row.sop_instance_uid)
            if existing is not None and (existing.status == "stored" or row.status != "stored"):
                return False
            self.rows[row.sop_instance_uid] = row
            return True

    def by_status(self, status: str) -> list[ReceivedInstance]:
        with self.lock:
            return [r for r in self.rows.values() if r.status == status]


def node_config(
    tmp_path: Path,
    *,
    port: int,
    peers: Sequence[dict[str, Any]] = (),
    ae_title: str = "BMDNODE",
    exporter: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    raw: dict[str, Any] = {
        "node": {
            "ae_title": ae_title,
            "host": "127.0.0.1",
            "port": port,
            "http_port": 0,
            "storage_dir": str(tmp_path / "storage"),
            "database_url": f"sqlite:///{tmp_path / 'node.db'}",
            "series_stable_seconds": 1,
        },
        "peers": [dict(p) for p in peers],
    }
    if exporter:
        raw["exporter"] = exporter
    if extra:
        raw.update(extra)
    return build_config(raw, source="test")


def storescu(
    files: Sequence[Path],
    *,
    port: int,
    calling_ae: str,
    called_ae: str = "BMDNODE",
    options: Sequence[str] = (),
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("storescu"), "-aet", calling_ae, "-aec", called_ae, *options, "127.0.0.1", str(port),
           *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=PEER_ENV)


def echoscu(*, port: int, calling_ae: str, called_ae: str = "BMDNODE") -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("echoscu"), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=PEER_ENV)


@contextmanager
def storescp_process(
    out_dir: Path, *, port: int, ae_title: str = "PACS", options: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """DCMTK storescp writing every received object into out_dir under a unique file name (+uf), so that an
    object received twice leaves two files (tests count copies per SOP Instance UID)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [require_tool("storescp"), "-aet", ae_title, "-od", str(out_dir), "+uf", *options, str(port)]
    proc = subprocess.Popen(cmd, env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
