"""bench/results.json and the tables of docs/PERFORMANCE.md, from the figures of one benchmark run."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.receive import BREAKDOWN_BEFORE_MS, BREAKDOWN_BEFORE_RUN, SCP_MEMORY_GROWTH_MAX_MB
from bench.stats import Figure, fmt
from service.config import WorkerSettings

# Targets of issue 8.
INGEST_VS_ORTHANC_MIN = 1.0
"""At least as fast as Orthanc 1.10 (Debian, default SQLite index) on the same data in the same run."""
INGEST_VS_ORTHANC_AIM = 1.5
CPU_E2E_CHEST_MAX_S = 60.0
"""300-slice chest, CPU."""
GPU_E2E_CHEST_MAX_S = 10.0
WORKER_PEAK_600_MAX_BYTES = 4e9
"""Worker peak memory for a 600-slice study: 4 GB (decimal, strict)."""
MIB = 1024 * 1024
# Target of issue 17: a 0.5 mm series of 1500+ slices stays under the default [worker] memory_limit_mb (MiB).
THIN_SERIES_KEY = "memory.worker_peak.thin1500"
WORKER_MEMORY_LIMIT_MIB = float(WorkerSettings.memory_limit_mb)

SECTION_TITLES = {
    "ingest": "Ingest (C-STORE receive rate, storescu sender)",
    "stages": "Pipeline stages in one worker process (in-process clocks)",
    "e2e": "End-to-end latency through the running node",
    "throughput": "Throughput on PostgreSQL",
    "memory": "Memory",
}


@dataclass(frozen=True)
class TargetCheck:
    name: str
    target: str
    measured: str
    met: bool | None
    """None: not measured in this run."""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "measured": self.measured, "met": self.met,
                "note": self.note}


def all_figures(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Figure]:
    out: dict[str, Figure] = {}
    for section in sections.values():
        for raw in section.get("figures", []):
            figure = Figure.from_dict(raw)
            out[figure.key] = figure
    return out


def _spread(figure: Figure, unit: str | None = None) -> str:
    u = figure.unit if unit is None else unit
    if figure.repeats == 1:
        return f"{fmt(figure.median)} {u} (1 run)"
    return f"{fmt(figure.median)} {u} (min {fmt(figure.min)}, max {fmt(figure.max)}, n={figure.repeats})"


def check_targets(figures: Mapping[str, Figure], gpu_available: bool) -> list[TargetCheck]:
    checks = []
    ratio = figures.get("ingest.single.ratio_node_orthanc")
    if ratio is None:
        checks.append(TargetCheck("Ingest vs Orthanc 1.10, 1 association", f">= {INGEST_VS_ORTHANC_MIN}x", "-", None,
                                  "not measured in this run"))
    else:
        met = ratio.median >= INGEST_VS_ORTHANC_MIN
        aim = "aim 1.5x reached" if ratio.median >= INGEST_VS_ORTHANC_AIM else "aim 1.5x not reached"
        checks.append(TargetCheck("Ingest vs Orthanc 1.10, 1 association",
                                  f">= {INGEST_VS_ORTHANC_MIN}x (aim {INGEST_VS_ORTHANC_AIM}x)", _spread(ratio), met,
                                  aim))
    for key, figure in sorted(figures.items()):
        if key.startswith("ingest.concurrent") and key.endswith("ratio_node_orthanc"):
            n = key.split(".")[1].removeprefix("concurrent")
            checks.append(TargetCheck(f"Ingest vs Orthanc 1.10, {n} associations", f">= {INGEST_VS_ORTHANC_MIN}x",
                                      _spread(figure), figure.median >= INGEST_VS_ORTHANC_MIN))
    growth = figures.get("memory.scp.growth")
    if growth is not None:
        checks.append(TargetCheck("SCP memory flat: RSS after 8 concurrent studies vs after 1",
                                  f"<= {SCP_MEMORY_GROWTH_MAX_MB:g} MB more", _spread(growth),
                                  growth.max <= SCP_MEMORY_GROWTH_MAX_MB, "issue 18; every receiver process summed"))
    storescp = figures.get("ingest.single.ratio_node_storescp")
    if storescp is not None:
        checks.append(TargetCheck("Ingest vs DCMTK storescp, 1 association", "reported (pure-Python PDU ceiling "
                                  "~0.4x)", _spread(storescp), None, "informative, no target"))
    e2e = figures.get("e2e.chest300.latency")
    if e2e is None:
        checks.append(TargetCheck("CPU end-to-end, 300-slice chest", f"<= {CPU_E2E_CHEST_MAX_S:.0f} s", "-", None,
                                  "not measured in this run"))
    else:
        checks.append(TargetCheck("CPU end-to-end, 300-slice chest", f"<= {CPU_E2E_CHEST_MAX_S:.0f} s",
                                  _spread(e2e), e2e.max <= CPU_E2E_CHEST_MAX_S,
                                  "met only when every repeat is within the target"))
    gpu = figures.get("e2e.chest300.gpu_latency")
    projection = figures.get("projection.gpu_e2e_chest300_lower_bound")
    if gpu is not None:
        checks.append(TargetCheck("GPU end-to-end, 300-slice chest", f"<= {GPU_E2E_CHEST_MAX_S:.0f} s", _spread(gpu),
                                  gpu.max <= GPU_E2E_CHEST_MAX_S))
    else:
        note = "no GPU on this machine" if not gpu_available else "not measured in this run"
        measured = "-"
        if projection is not None:
            measured = f"projection >= {fmt(projection.median)} s (CPU stages without the network)"
        checks.append(TargetCheck("GPU end-to-end, 300-slice chest", f"<= {GPU_E2E_CHEST_MAX_S:.0f} s", measured, None,
                                  note))
    mem = figures.get("memory.worker_peak.chestabd600")
    if mem is None:
        checks.append(TargetCheck("Worker peak memory, 600-slice study", "<= 4 GB", "-", None,
                                  "not measured in this run"))
    else:
        checks.append(TargetCheck("Worker peak memory, 600-slice study", "<= 4 GB",
                                  f"{mem.max * MIB / 1e9:.2f} GB peak ({fmt(mem.max)} MiB)",
                                  mem.max * MIB <= WORKER_PEAK_600_MAX_BYTES))
    checks.extend(memory_targets(figures))
    return checks


def memory_targets(figures: Mapping[str, Figure]) -> list[TargetCheck]:
    """Issue 17: the 1500-slice 0.5 mm series under [worker] memory_limit_mb, and the admission estimate at or
    above every measured peak (a job the estimate admits does not outgrow the limit)."""
    limit = f"<= {WORKER_MEMORY_LIMIT_MIB:.0f} MiB ([worker] memory_limit_mb default)"
    thin = figures.get(THIN_SERIES_KEY)
    checks = [TargetCheck("Worker peak memory, 0.5 mm 1500 x 512 x 512 series", limit, "-", None,
                          "not measured in this run") if thin is None else
              TargetCheck("Worker peak memory, 0.5 mm 1500 x 512 x 512 series", limit,
                          f"{fmt(thin.max)} MiB peak ({thin.max * MIB / 1e9:.2f} GB)",
                          thin.max <= WORKER_MEMORY_LIMIT_MIB)]
    pairs = [(key.removeprefix("memory.estimate."), est, figures.get("memory.worker_peak." + key.split(".")[-1]))
             for key, est in sorted(figures.items()) if key.startswith("memory.estimate.")]
    pairs = [(name, est, peak) for name, est, peak in pairs if peak is not None]
    if pairs:
        worst = min(pairs, key=lambda p: p[1].median / p[2].max)
        checks.append(TargetCheck("Admission estimate >= measured worker peak", "every study of the memory section",
                                  f"lowest estimate/peak {worst[1].median / worst[2].max:.2f} ({worst[0]})",
                                  all(est.median >= peak.max for _, est, peak in pairs),
                                  "service/pipeline/memory.py"))
    return checks


def receive_breakdown_lines(figures: Mapping[str, Figure]) -> list[str]:
    """Issue 18: the node's time per image with one association, before the receive path was reworked (the
    figures committed then) and in this run (medians, ms)."""
    rows = []
    for part, label in (("node_ms_per_image", "storescu wall time per image"),
                        ("node_ms.handler", "C-STORE handler on the association thread"),
                        ("node_ms.spool_write", "  of which: spool write, durable before the response (before: "
                                                "temp file, fsync, rename, dir fsync; after: see spool_mode)"),
                        ("node_ms.parse_header", "  of which: header parse"),
                        ("node_ms.db_record", "database bookkeeping (before: in the handler; after: batched, "
                                              "recorder thread)"),
                        ("node_ms.outside_handler", "outside the handler (pynetdicom network, PDU/DIMSE)"),
                        ("durable_write_ms", "disk alone: one file written durably (separate probe; the machine's "
                                             "state)")):
        after = figures.get(f"ingest.single.{part}" if part.startswith("node_") else f"ingest.{part}")
        rows.append((label, fmt(BREAKDOWN_BEFORE_MS[part]), "-" if after is None else fmt(after.median)))
    return ["", f"Per image, 1 association, ms: before = {BREAKDOWN_BEFORE_RUN}; after = this run.", "",
            *_table(("part", "before", "after"), rows)]


def write_results(path: Path, document: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


def _met(value: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "n/a"}[value]


METHOD = """\
## How it is measured

* **Ingest**: DCMTK `storescu` (TCP_NODELAY=1) sends the same synthetic CT series (300 x 512 x 512, 16-bit,
  Explicit VR Little Endian, ~0.5 MB per image) over one association, then N studies over N concurrent associations,
  to three receivers started fresh for every run, in turn within each repeat: the node's SCP (`bmd-node scp`,
  pynetdicom, `[node] receive_processes` processes (default min(4, cores)) accepting from one listening socket,
  a new connection going to the least busy; the clock starts once all of them accept (the node logs "receiving
  with N process(es)") and 2 s more have passed (bench/procs.py WARM_UP_S); each instance durable before
  the C-STORE response: `[node] spool_mode = "pool"` (default) writes it into an empty file created and
  directory-fsynced ahead of need and fdatasyncs it (one flush), the renames into place and their directory fsyncs
  batched on the recorder thread before the rows' commit; `"direct"` writes a temporary file, fsyncs, renames and
  fsyncs the directory (two flushes); the mode that is not the default runs in the same rounds as an A/B figure;
  SQLite rows written afterwards in batched transactions by a recorder thread, the spool and the pools reconciled
  at start-up), DCMTK `storescp` (writes files, no
  fsync, no database; `--fork` for concurrent associations) and Orthanc 1.10 (Debian package, default SQLite index,
  storage in a temp dir, loopback). The time is storescu's wall time; every instance is checked stored afterwards.
  The node's SCP is started through `bench/scp_probe.py`, which wraps the C-STORE handler, the spool write and the
  SQLite bookkeeping with clocks (~1 us per call; every receiver process summed) for the per-image breakdown; a
  diagnostic run with fsync disabled shows what durability costs (not a deployable setting, never compared with a
  target). SCP memory: the summed RSS of the receiver processes after one study, then after 8 more studies sent at
  once over 8 associations (`bench.receive.scp_memory`). CPU per image: user + system time of the receiver's
  processes (with reaped children: storescp --fork) during the send, from /proc, divided by the images sent.
* **Stages**: a child process that is what a worker is (loads the model once, then screens the study) with clocks
  around each step of the screening recipe (`bench/pipeline.py` calls the same steps as
  `service/pipeline/screening.py`), plus writing the result files (fsync) and sending them to a DCMTK storescp. Its
  peak RSS is the worker's peak memory for that study.
* **End-to-end**: `bmd-node serve` (SCP, scheduler, 1 worker, exporter; SQLite; polls 0.2 s) with a DCMTK storescp
  as the PACS. Clock: storescu's last instance acknowledged -> `sent_at` of the last result object's export; the
  configured stable-series wait is subtracted; the model is loaded before the first study. The parts come from the
  job's timestamps (`created_at` is the scheduler tick's start, so "queued -> claimed" includes the series checks of
  that tick, and "detected" can be a few ms negative) and from the worker's stage clocks (`bench/pipeline.py`).
* **Without a trained model** (`models/vertebra_seg/models/model.pt` missing) the benchmark writes an untrained
  network of the same architecture (same compute) and, when it finds no vertebra, runs the later stages on the
  phantom's true vertebral bodies; loading those labels is timed apart and subtracted from the end-to-end time. The
  labelling/refinement stage then runs on an empty prediction and is faster than with a trained model.
* **Throughput**: K studies queued in a fresh PostgreSQL database (real server, fsync on), drained by N
  `bmd-node worker` processes; studies/hour = K / (first claim -> last finish).
* **Memory**: `python -m bench.run --only memory --merge` (this section alone, ~10 min on 2 cores once the phantoms
  exist). Each series (1 mm 300 and 600 slices, 0.5 mm 1500 slices, 512 x 512, rendered by service/offline/phantom
  into bench/work/data) runs in a fresh child that is a worker (bench/stages.py: model loaded, then read_series ->
  segmentation -> measurement -> SEG/SR/key image, as service/pipeline/screening.py); the peak is the child's
  ru_maxrss. A line peak = base + bytes x voxels is fitted over the series and set against the admission estimate of
  service/pipeline/memory.py (what the worker checks against `[worker] memory_limit_mb`, read as MiB).
* **GPU projection**: no GPU measurement unless one is present; the projection is the CPU end-to-end time without the
  network stage (a lower bound: the other stages run on the CPU either way).
"""


def render_markdown(document: Mapping[str, Any]) -> str:
    sections: Mapping[str, Mapping[str, Any]] = document["sections"]
    machine = document["machine"]
    versions = document["versions"]
    lines = ["# Performance", "",
             f"Generated by `make bench` (`python -m bench.run{' --quick' if document.get('quick') else ''}`) on "
             f"{document['date']}; the raw figures are in `bench/results.json`. Do not edit by hand: the next run "
             "rewrites this file.", ""]
    if document.get("quick"):
        lines += ["**Quick smoke run: tiny data, single repeats. These numbers say nothing about performance.**", ""]
    lines += ["## Machine", ""]
    gpu = machine.get("gpu", {})
    lines += _table(("", ""), [
        ("CPU", str(machine.get("cpu_model"))), ("cores", str(machine.get("cpu_cores"))),
        ("RAM", f"{machine.get('ram_gib')} GiB"), ("GPU", str(gpu.get("name")) if gpu.get("available") else "none"),
        ("platform", str(machine.get("platform"))),
        ("load average (1/5/15 min) at start", str(machine.get("load_average_1_5_15"))),
        ("load average at end", str(document.get("load_average_at_end"))),
        ("duration", f"{document.get('duration_s', 0):.0f} s"),
    ])
    lines += ["", "## Versions", ""]
    lines += _table(("component", "version"), [(k, str(v)) for k, v in versions.items()])
    lines += ["", "## Targets", ""]
    lines += _table(("target", "required", "measured (median, min-max over repeats)", "result", "note"),
                    [(t["name"], t["target"], t["measured"], _met(t["met"]), t.get("note", ""))
                     for t in document["targets"]])
    for name, section in sections.items():
        lines += ["", f"## {SECTION_TITLES.get(name, name)}", ""]
        if section.get("error"):
            lines += [f"**Not measured: {section['error']}**", ""]
        figures = [Figure.from_dict(f) for f in section.get("figures", [])]
        if figures:
            lines += _table(("figure", "unit", "min", "median", "max", "n", "note"),
                            [(f.label, f.unit, fmt(f.min), fmt(f.median), fmt(f.max), str(f.repeats), f.note)
                             for f in figures])
        if name == "ingest":
            lines += receive_breakdown_lines({f.key: f for f in figures})
        for note in section.get("notes", []):
            lines += ["", f"* {note}"]
    lines += ["", METHOD]
    notes = document.get("notes", [])
    if notes:
        lines += ["## Caveats of this run", ""] + [f"* {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_markdown(path: Path, document: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(document))
    return path
