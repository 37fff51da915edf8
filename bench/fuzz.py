"""Seeded fuzzing of the node's C-STORE path: mutated CT files sent over a few associations to a real SCP.

    .venv/bin/python -m bench.fuzz --files 10000 --associations 20 --seed 19 [--json out.json]

Each file is a small CT image (64 x 64, Explicit VR Little Endian, a known patient name, ID and accession) whose
dataset (never its File Meta, which carries the C-STORE's SOP Class / Instance UID and transfer syntax) is mutated
by one of: flipped bytes, an overwritten run of random bytes, a length field set to ~2 GiB, a truncation, an
inserted run of garbage, or nothing (a control). They go by pynetdicom to the node's SCP (``start_scp``: spool,
batched SQLite recorder) on loopback. Afterwards:

* crashes: associations the node aborted or that ended without a C-STORE response, and exceptions in the sender;
* every SOP Instance UID sent is either stored (a file in the spool) or recorded with a reason (ignored / rejected);
* the node still answers a C-ECHO and stores an intact file;
* quarantine: files and bytes kept in storage_dir/_rejected.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import struct
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from sqlalchemy import select

from service.config import build_config
from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Instance
from service.receive.scp import start_scp
from tests.support.ct_series import CTSeriesHeader, write_ct_series
from tests.support.net import free_port

logger = logging.getLogger("bench.fuzz")

SENDER_AE, NODE_AE = "FUZZSCU", "BMDNODE"
KNOWN_PATIENT = {"PatientName": "FUZZ^KNOWN^PERSON", "PatientID": "FUZZ-ID-0019", "AccessionNumber": "FUZZACC0019"}
"""Values every fuzzed file carries, so that a log / page check can look for them."""
MUTATIONS = ("flip", "overwrite", "huge_length", "truncate", "insert", "none")
META_START = 132  # 128-byte preamble + "DICM"


@dataclass(frozen=True)
class FuzzReport:
    files: int
    associations: int
    seed: int
    seconds: float
    statuses: dict[str, int]
    mutations: dict[str, int]
    recorded: dict[str, int]
    unaccounted: int
    """SOP Instance UIDs sent that are neither stored nor recorded with a reason (must be 0)."""
    crashes: int
    """Associations aborted or without a response, and sender exceptions (must be 0)."""
    serving_after: bool
    quarantine_files: int
    quarantine_bytes: int


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts: after the File Meta group, whose length is its first element's value."""
    (group_length,) = struct.unpack("<I", data[META_START + 8:META_START + 12])
    return META_START + 12 + group_length


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(MUTATIONS)
    start = dataset_offset(data)
    body = bytearray(data[start:])
    head = min(len(body), 1024)  # the header part; the pixels are the rest
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            body[rng.randrange(head)] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        at, size = rng.randrange(head), rng.randint(1, 64)
        body[at:at + size] = rng.randbytes(size)
    elif kind == "huge_length":
        at = rng.randrange(max(1, head - 4))
        body[at:at + 4] = struct.pack("<I", rng.choice((0x7FFFFFFF, 0xFFFFFFFE, 0x10000000)))
    elif kind == "truncate":
        del body[rng.randrange(len(body)):]
    elif kind == "insert":
        at = rng.randrange(head)
        body[at:at] = rng.randbytes(rng.randint(1, 256))
    return kind, data[:start] + bytes(body)


def write_fuzz_files(folder: Path, count: int, seed: int) -> tuple[list[Path], Counter[str]]:
    rng = random.Random(seed)
    frames = (np.frombuffer(rng.randbytes(64 * 64 * 2), dtype=np.uint16).reshape(64, 64) % 2000
              for _ in range(count))
    header = CTSeriesHeader(extra=KNOWN_PATIENT)
    paths = write_ct_series(folder, frames, header, slice_step_mm=-2.0)
    kinds: Counter[str] = Counter()
    for path in paths:
        kind, data = mutate(path.read_bytes(), rng)
        path.write_bytes(data)
        kinds[kind] += 1
    return paths, kinds


def send(paths: list[Path], port: int, associations: int) -> tuple[Counter[str], int]:
    """Send ``paths`` in ``associations`` rounds; (status counts, crashes)."""
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes as they are (no decode / re-encode by pynetdicom)
    try:
        return _send(paths, port, associations)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def _send(paths: list[Path], port: int, associations: int) -> tuple[Counter[str], int]:
    statuses: Counter[str] = Counter()
    crashes = 0
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    per = -(-len(paths) // associations)
    for index in range(0, len(paths), per):
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        if not assoc.is_established:
            crashes += 1
            continue
        for path in paths[index:index + per]:
            try:
                status = assoc.send_c_store(path)
            except Exception as exc:  # the sender's own failure to read a mutated file is not the node's
                statuses[f"not sent ({type(exc).__name__})"] += 1
                continue
            if not assoc.is_established:
                crashes += 1
                break
            statuses["no response" if "Status" not in status else f"0x{int(status.Status):04X}"] += 1
        if assoc.is_established:
            assoc.release()
    crashes += statuses["no response"]
    return statuses, crashes


def _sent_uids(paths: list[Path]) -> set[str]:
    out = set()
    for path in paths:
        data = path.read_bytes()
        meta = data[META_START:dataset_offset(data)]
        at = meta.find(b"\x02\x00\x03\x00UI")  # (0002,0003) MediaStorageSOPInstanceUID
        (size,) = struct.unpack("<H", meta[at + 6:at + 8])
        out.add(meta[at + 8:at + 8 + size].rstrip(b"\0 ").decode("ascii"))
    return out


def run_fuzz(work_dir: Path, *, files: int, associations: int, seed: int) -> FuzzReport:
    paths, kinds = write_fuzz_files(work_dir / "files", files, seed)
    port = free_port()
    config = build_config({
        "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": port, "http_port": 0,
                 "storage_dir": str(work_dir / "storage"), "database_url": f"sqlite:///{work_dir / 'node.db'}"},
        "peers": [{"name": "fuzz", "ae_title": SENDER_AE, "host": "127.0.0.1", "port": 104}],
    }, source="bench.fuzz")
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    server = start_scp(config, engine)
    started = time.monotonic()
    try:
        statuses, crashes = send(paths, port, associations)
        seconds = time.monotonic() - started
        control = write_ct_series(work_dir / "control", [np.zeros((64, 64), np.uint16)], CTSeriesHeader())
        ae = AE(ae_title=SENDER_AE)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        serving = bool(assoc.is_established and assoc.send_c_echo().Status == 0
                       and assoc.send_c_store(control[0]).Status == 0)
        if assoc.is_established:
            assoc.release()
    finally:
        server.shutdown()  # flushes the batched recorder
    with read_session(engine) as session:
        rows = {uid: (status, path, reason) for uid, status, path, reason in session.execute(
            select(Instance.sop_instance_uid, Instance.status, Instance.path, Instance.reason))}
    engine.dispose()
    recorded: Counter[str] = Counter()
    unaccounted = 0
    for uid in _sent_uids(paths):
        status, path, reason = rows.get(uid, (None, None, None))
        ok = (status == "stored" and path and Path(path).is_file()) or (status in ("ignored", "rejected") and reason)
        recorded[str(status)] += 1
        unaccounted += not ok
    rejected = [p for p in (work_dir / "storage" / "_rejected").rglob("*") if p.is_file()]
    return FuzzReport(files=files, associations=associations, seed=seed, seconds=round(seconds, 1),
                      statuses=dict(statuses), mutations=dict(kinds), recorded=dict(recorded),
                      unaccounted=unaccounted, crashes=crashes, serving_after=serving,
                      quarantine_files=len(rejected), quarantine_bytes=sum(p.stat().st_size for p in rejected))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--associations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bmd-fuzz-") as tmp:
        report = run_fuzz(Path(tmp), files=args.files, associations=args.associations, seed=args.seed)
    text = json.dumps(asdict(report), indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if report.crashes == 0 and report.unaccounted == 0 and report.serving_after else 1


if __name__ == "__main__":
    raise SystemExit(main())
