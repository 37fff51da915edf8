"""``make bench``: measure ingest, pipeline stages, end-to-end latency, throughput and memory in one run, then write
bench/results.json and docs/PERFORMANCE.md.

    .venv/bin/python -m bench.run                       # the full run (~15 min on 2 cores once the data exists)
    .venv/bin/python -m bench.run --quick               # tiny smoke run (seconds of work; report in bench/work/quick)
    .venv/bin/python -m bench.run --only ingest,e2e     # some sections only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench import REPO_ROOT, data, machine, procs, receive, report
from bench import memory as bench_memory
from bench.e2e import STABLE_SECONDS, run_e2e
from bench.model import ModelChoice, choose_model
from bench.stages import run_stages
from bench.stats import Figure, ratio_values
from bench.throughput import run_workers

log = logging.getLogger("bench")

SECTIONS = ("ingest", "stages", "e2e", "throughput", "memory")
STAGE_LABELS = {
    "load_s": "load + decode + series checks",
    "resample_s": "resample to the 3 mm model grid",
    "network_s": "segmentation networks (coarse + fine U-Net, sliding window)",
    "labelling_s": "instances + labelling + refinement",
    "assess_s": "ROI + HU statistics + calibration + classification",
    "objects_s": "SEG / SR / key image built and encoded",
    "write_s": "result files written (fsync)",
    "export_s": "C-STORE of the results to a storescp",
    "detect_s": "stable series detected -> job queued (minus the stable wait)",
    "queue_s": "job queued -> claimed",
    "store_commit_s": "result files + success commit",
    "objects.read_source_headers_s": "  of which: source headers read again",
    "objects.seg_s": "  of which: SEG built",
    "objects.sr_s": "  of which: SR built",
    "objects.key_image_s": "  of which: key image built",
    "objects.encode_s": "  of which: Part 10 encoding",
}


@dataclass(frozen=True)
class Plan:
    quick: bool
    repeats: int
    stage_repeats: int
    ingest_slices: int
    ingest_size: int
    concurrent: int
    stage_studies: tuple[data.PhantomRecipe, ...]
    e2e_runs: tuple[tuple[data.PhantomRecipe, int], ...]
    throughput_recipe: data.PhantomRecipe
    throughput_studies: int
    workers: tuple[int, ...]
    memory_studies: tuple[data.PhantomRecipe, ...]
    """Growing series for the worker's peak memory and the admission estimate's fit (largest last)."""


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        q = data.QUICK_ABDOMEN
        return Plan(True, args.repeats or 1, 1, 16, 128, 2, (q,), ((q, 1),), q, args.throughput_studies or 2,
                    tuple(args.workers or (1,)), (q, data.QUICK_ABDOMEN_THIN))
    repeats = args.repeats or 3
    # the stages section runs each study once (worker memory, object-writer split); the repeated per-stage times
    # come from the end-to-end runs, which time the same stages inside the node's worker
    return Plan(False, repeats, 1, 300, 512, 4, (data.CHEST_300, data.ABDOMEN_5MM),
                ((data.CHEST_300, repeats), (data.ABDOMEN_5MM, repeats)), data.ABDOMEN_5MM,
                args.throughput_studies or 4, tuple(args.workers or (1, 2, 4)),
                (data.CHEST_300, data.CHEST_ABDOMEN_600, data.THIN_1500))


@dataclass
class Context:
    plan: Plan
    work: Path
    data_dir: Path
    truth_map: Path
    _model: ModelChoice | None = None

    @property
    def model(self) -> ModelChoice:
        if self._model is None:
            self._model = choose_model(self.work)
        return self._model

    def phantom(self, recipe: data.PhantomRecipe) -> data.SeriesSet:
        s = data.phantom_series(self.data_dir, recipe)
        data.write_truth_map(self.truth_map, [s])
        return s

    def clones(self, recipe: data.PhantomRecipe, n: int, purpose: str) -> list[data.SeriesSet]:
        source = self.phantom(recipe)
        out = [data.clone_series(source, self.data_dir / "clones" / f"{recipe.name}-{purpose}{i}", f"{purpose}{i}")
               for i in range(n)]
        data.write_truth_map(self.truth_map, out)
        return out


SPOOL_WRITE = {"direct": "temp file, fsync, rename, dir fsync", "pool": "one fdatasync into a pool file"}


def _figure(key: str, label: str, unit: str, values: Sequence[float], note: str = "") -> dict[str, Any]:
    return Figure(key, label, unit, tuple(values), note).to_dict()


# --- sections ------------------------------------------------------------------------------------------------


def section_ingest(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    studies = data.ingest_studies(ctx.data_dir, plan.concurrent, plan.ingest_slices, plan.ingest_size)
    receive.warm_page_cache(studies)
    work = ctx.work / "ingest"
    targets = {1: (*receive.TARGETS, receive.OTHER_SPOOL, receive.NO_FSYNC),
               plan.concurrent: (*receive.TARGETS, receive.OTHER_SPOOL)}
    rounds: dict[int, list[list[receive.ReceiveRun]]] = {1: [], plan.concurrent: []}
    for repeat in range(plan.repeats):
        for n in rounds:
            log.info("ingest repeat %d/%d, %d association(s)", repeat + 1, plan.repeats, n)
            rounds[n].append(receive.receive_round(studies[:n], work, targets[n]))
    figures: list[dict[str, Any]] = []
    size = f"{plan.ingest_slices} x {plan.ingest_size}x{plan.ingest_size}"
    for n, runs in rounds.items():
        tag = "single" if n == 1 else f"concurrent{n}"
        rates = {t: [next(r for r in rr if r.target == t).images_per_s for rr in runs] for t in targets[n]}
        for target in receive.TARGETS:
            figures.append(_figure(f"ingest.{tag}.{target}", f"{target}, {n} association(s) ({n} x {size})",
                                   "images/s", rates[target]))
        figures.append(_figure(f"ingest.{tag}.ratio_node_orthanc", f"bmd-node / Orthanc, {n} association(s)", "x",
                               ratio_values(rates["bmd-node"], rates["orthanc"]), "per repeat, same round"))
        figures.append(_figure(f"ingest.{tag}.ratio_node_storescp", f"bmd-node / storescp, {n} association(s)", "x",
                               ratio_values(rates["bmd-node"], rates["storescp"]), "per repeat, same round"))
        node_runs = [next(r for r in rr if r.target == "bmd-node") for rr in runs]
        if n == 1 and all(r.probe_ms_per_image for r in node_runs):
            probes = [r.probe_ms_per_image or {} for r in node_runs]
            wall = [1000 / r.images_per_s for r in node_runs]
            figures.append(_figure("ingest.single.node_ms_per_image", "bmd-node, per image: storescu wall time",
                                   "ms", wall))
            for part, label in (("handler", "C-STORE handler (after pynetdicom has the dataset)"),
                                ("spool_write", f"  of which: spool write ({SPOOL_WRITE[receive.DEFAULT_SPOOL_MODE]})"),
                                ("db_record", "  of which: SQLite bookkeeping (batched on the recorder thread, "
                                              "not in the handler)"),
                                ("parse_header", "  of which: header parse"),
                                ("part10", "  of which: Part 10 stream (file meta encoded, data set copied)"),
                                ("spool_settle", "pool mode: renames + directory fsyncs, batched on the recorder "
                                                 "thread (not in the handler)")):
                figures.append(_figure(f"ingest.single.node_ms.{part}", f"bmd-node, per image: {label}", "ms",
                                       [p.get(part, 0.0) for p in probes]))
            figures.append(_figure("ingest.single.node_ms.outside_handler", "bmd-node, per image: outside the "
                                   "handler (pynetdicom network, PDU/DIMSE, dataset assembly)", "ms",
                                   [w - p.get("handler", 0.0) for w, p in zip(wall, probes, strict=True)]))
        figures += _spool_ab_figures(tag, n, rates)
        if receive.NO_FSYNC in rates:
            figures.append(_figure(f"ingest.{tag}.{receive.NO_FSYNC}", f"diagnostic: bmd-node with fsync disabled, "
                                   f"{n} association(s)", "images/s", rates[receive.NO_FSYNC],
                                   "not a deployable setting: shows the cost of durability"))
        for target in receive.TARGETS:
            cpu = [next(r for r in rr if r.target == target).cpu_ms_per_image for rr in runs]
            if all(c is not None for c in cpu):
                figures.append(_figure(f"ingest.{tag}.cpu_ms_per_image.{target}", f"CPU per image of the {target} "
                                       f"receiver (user + system, all its processes), {n} association(s)", "ms",
                                       [float(c or 0.0) for c in cpu],
                                       f"{os.cpu_count()} cores: {n} association(s) can reach at most "
                                       f"~{os.cpu_count() or 1} x 1000 / this images/s, less the senders' share"))
        for target in receive.TARGETS:
            figures.append(_figure(f"memory.scp_peak.{tag}.{target}",
                                   f"peak RSS of the {target} receiver, {n} association(s)", "MiB",
                                   [next(r for r in rr if r.target == target).peak_rss_mib for rr in runs],
                                   "storescp: sum over its forked children" if target == "storescp" and n > 1
                                   else ""))
    many = data.ingest_studies(ctx.data_dir, 9, plan.ingest_slices, plan.ingest_size)
    receive.warm_page_cache(many)
    figures += receive.memory_figures([receive.scp_memory(many[8], many[:8], work) for _ in range(plan.repeats)],
                                      _figure)
    size_bytes = int(studies[0].size_mb * 1e6 / studies[0].slices)
    probe = [receive.durable_write_ms(work / "fsync-probe", size_bytes) for _ in range(plan.repeats)]
    figures.append(_figure("ingest.durable_write_ms", f"disk: one {size_bytes / 1e6:.2f} MB file written durably "
                           "(write, fsync, rename, dir fsync)", "ms", probe,
                           f"alone caps one association at ~{1000 / statistics.median(probe):.0f} images/s"))
    return {"figures": figures, "notes": [
        "bmd-node makes every instance durable before the C-STORE response (spool_mode \"direct\": file fsync, "
        "rename, directory fsync; \"pool\": one fdatasync into an already-durable empty file, the renames and "
        "directory fsyncs batched on the recorder thread before the rows' commit) and records its row in SQLite (WAL) "
        "in batches after it; the spool is reconciled with the database at start-up; storescp does neither; Orthanc "
        "1.10 writes the file and its SQLite index without fsync.",
        f"default spool_mode: \"{receive.DEFAULT_SPOOL_MODE}\"; {receive.OTHER_SPOOL} is the other mode, "
        "measured in the same rounds (A/B).",
        "the receive path (issue 18, service/receive/latency.py, scp.py): pynetdicom's two polling loops per "
        "association replaced by threads that block until woken (WakingDUL, QueueWaitAssociation); pynetdicom's "
        "\"standard\" event logging off (it copied every received dataset); the receiver processes share one "
        "listening socket and a busier process leaves a new connection to a less busy one (SO_REUSEPORT hashed "
        "4 associations onto 2 processes 3 + 1 or 4 + 0: 5 times in 8 with an even hash)."]}


def _spool_ab_figures(tag: str, n: int, rates: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The A/B of ``[node] spool_mode``: the mode that is not the default, measured in the same rounds."""
    default, other = receive.DEFAULT_SPOOL_MODE, receive.OTHER_SPOOL_MODE
    return [
        _figure(f"ingest.{tag}.{receive.OTHER_SPOOL}", f"A/B: bmd-node with spool_mode = \"{other}\" (not the "
                f"default), {n} association(s)", "images/s", rates[receive.OTHER_SPOOL],
                "same rounds, same files; durable too"),
        _figure(f"ingest.{tag}.ratio_node_orthanc_{other}", f"bmd-node spool_mode \"{other}\" / Orthanc, {n} "
                "association(s)", "x", ratio_values(rates[receive.OTHER_SPOOL], rates["orthanc"]),
                "per repeat, same round"),
        _figure(f"ingest.{tag}.ratio_spool_{default}_{other}", f"bmd-node spool_mode \"{default}\" / \"{other}\", "
                f"{n} association(s)", "x", ratio_values(rates["bmd-node"], rates[receive.OTHER_SPOOL]),
                "per repeat, same round"),
    ]


def section_stages(ctx: Context) -> dict[str, Any]:
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    loads: list[float] = []
    for recipe in ctx.plan.stage_studies:
        series = ctx.phantom(recipe)
        log.info("stages: %s (%d slices), %d repeat(s)", recipe.name, series.slices, ctx.plan.stage_repeats)
        result = run_stages(series, ctx.work / "stages" / recipe.name, bundle_dir=ctx.model.bundle_dir,
                            repeats=ctx.plan.stage_repeats, truth_map=ctx.truth_map, threads=None, pacs=True)
        records = result["records"]
        loads.append(result["startup"]["model_load_s"])
        label = f"{recipe.name} ({series.slices} slices)"
        keys = [k for k in STAGE_LABELS if k in records[0]["timings"]]
        for key in keys:
            figures.append(_figure(f"stages.{recipe.name}.{key}", f"{label}: {STAGE_LABELS[key]}", "s",
                                   [r["timings"][key] for r in records]))
            if key == "objects_s":
                for part in records[0].get("object_parts", {}):
                    figures.append(_figure(f"stages.{recipe.name}.{part}", f"{label}: {STAGE_LABELS.get(part, part)}",
                                           "s", [r["object_parts"].get(part, 0.0) for r in records]))
        steps_rss = records[0].get("max_rss_after_mib", {})
        if steps_rss:
            notes.append(f"{recipe.name}: worker peak RSS after each stage (first run): " + ", ".join(
                f"{k.removesuffix('_s')} {v:.0f} MiB" for k, v in steps_rss.items()))
        figures.append(_figure(f"stages.{recipe.name}.total", f"{label}: total (all stages)", "s",
                               [r["total_s"] for r in records]))
        figures.append(_figure(f"memory.worker_peak.{recipe.name}", f"worker peak RSS, {label}", "MiB",
                               [result["max_rss_mib"]], "one worker process: model + this study"))
        if any(r["truth_fallback"] for r in records):
            notes.append(f"{recipe.name}: the model found no vertebra; ROI/calibration/objects ran on the phantom's "
                         "true labels")
        missing = {r.get("objects_missing") for r in records} - {None}
        notes += sorted(str(m) for m in missing)
    figures.append(_figure("stages.model_load_s", "model load at worker start (once per process)", "s", loads))
    return {"figures": figures, "notes": notes}


def section_e2e(ctx: Context) -> dict[str, Any]:
    figures: list[dict[str, Any]] = []
    notes: list[str] = [f"stable-series wait {STABLE_SECONDS} s subtracted; scheduler/worker/exporter polls 0.2 s"]
    studies = []
    for recipe, n in ctx.plan.e2e_runs:
        studies += [(recipe, s) for s in ctx.clones(recipe, n, "e2e")]
    runs = run_e2e([s for _, s in studies], ctx.work / "e2e", bundle_dir=ctx.model.bundle_dir,
                   truth_map=ctx.truth_map)
    for recipe, _ in ctx.plan.e2e_runs:
        mine = [run for (r, _), run in zip(studies, runs, strict=True) if r.name == recipe.name]
        label = f"{recipe.name} ({mine[0].slices} slices)"
        figures.append(_figure(f"e2e.{recipe.name}.latency", f"{label}: last image acked -> last result acked",
                               "s", [r.latency_s for r in mine]))
        for part in mine[0].parts:
            figures.append(_figure(f"e2e.{recipe.name}.{part}", f"{label}: {STAGE_LABELS.get(part, part)}", "s",
                                   [r.parts[part] for r in mine]))
        figures.append(_figure(f"projection.gpu_e2e_{recipe.name}_lower_bound",
                               f"{label}: GPU projection, lower bound (CPU e2e minus the network stage)", "s",
                               [r.latency_s - r.parts.get("network_s", 0.0) for r in mine], "projection, not measured"))
        if any(r.truth_fallback for r in mine):
            notes.append(f"{recipe.name}: later stages on the phantom's true labels (no trained model)")
        for run in mine:
            notes += [f"{recipe.name}: {n}" for n in run.notes]
    return {"figures": figures, "notes": sorted(set(notes), key=notes.index)}


def section_throughput(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    studies = ctx.clones(plan.throughput_recipe, plan.throughput_studies, "tp")
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    per_study_cpu: list[float] = []
    with procs.postgres_server() as pg:
        for n in plan.workers:
            log.info("throughput: %d worker(s), %d studies", n, len(studies))
            run = run_workers(pg, studies, ctx.work / "throughput" / f"workers{n}", workers=n,
                              bundle_dir=ctx.model.bundle_dir, truth_map=ctx.truth_map)
            label = f"{n} worker(s) x {run.threads_per_worker} thread(s), {run.studies} x {plan.throughput_recipe.name}"
            figures.append(_figure(f"throughput.workers{n}", label, "studies/h", [run.studies_per_hour],
                                   f"span {run.span_s:.0f} s; wall with start-up {run.wall_s:.0f} s"))
            figures.append(_figure(f"throughput.workers{n}.job_s", f"{label}: time per job", "s", run.job_s))
            if n == 1:
                per_study_cpu = [sum(v for k, v in run.stage_s.items() if k != "network_s")]
            if run.truth_fallback:
                notes.append(f"{n} worker(s): later stages on the phantom's true labels (no trained model); loading "
                             f"them took {run.truth_fallback_s:.1f} s in all, inside the span (not subtracted)")
    if per_study_cpu:
        cores = os.cpu_count() or 1
        figures.append(_figure("projection.gpu_studies_per_hour", f"GPU projection: {cores} CPU workers, network "
                               "stage on the GPU taken as free", "studies/h",
                               [cores * 3600.0 / max(per_study_cpu[0], 1e-6)], "projection, not measured"))
    return {"figures": figures, "notes": sorted(set(notes))}


def section_memory(ctx: Context) -> dict[str, Any]:
    runs = []
    for recipe in ctx.plan.memory_studies:
        series = ctx.phantom(recipe)
        log.info("memory: worker on %s (%d slices)", recipe.name, series.slices)
        runs.append(bench_memory.measure(series, recipe, ctx.work / "memory", bundle_dir=ctx.model.bundle_dir,
                                         truth_map=ctx.truth_map))
    figures, notes = bench_memory.memory_figures(runs, _figure)
    return {"figures": figures, "notes": notes}


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "ingest": section_ingest, "stages": section_stages, "e2e": section_e2e, "throughput": section_throughput,
    "memory": section_memory,
}


# --- main --------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (checks the harness, not the speed)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 3, quick 1)")
    parser.add_argument("--throughput-studies", type=int, default=None, help="studies per throughput run (4)")
    parser.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="worker counts for the throughput runs (default 1,2,4)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sections of the existing results file that this run does not measure")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                        help="measure nothing: rewrite the markdown (--doc) from an existing results.json")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench" / "work")
    parser.add_argument("--results", type=Path, default=None,
                        help="default bench/results.json (quick: WORK/quick/results.json)")
    parser.add_argument("--doc", type=Path, default=None,
                        help="default docs/PERFORMANCE.md (quick: WORK/quick/PERFORMANCE.md)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in only]
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = make_plan(args)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(plan, work, work / "data", work / "truth_map.json")
    started = time.monotonic()
    document: dict[str, Any] = {
        "date": machine.utc_now_iso(), "quick": plan.quick, "machine": machine.describe_machine(),
        "versions": machine.describe_versions(), "options": {"sections": args.sections, "repeats": plan.repeats,
                                                             "stage_repeats": plan.stage_repeats,
                                                             "workers": list(plan.workers),
                                                             "throughput_studies": plan.throughput_studies},
        "sections": {}, "notes": [],
    }
    for name in tqdm(args.sections, desc="bench", unit="section", disable=None):  # no bar when not a terminal
        t = time.monotonic()
        log.info("== %s", name)
        try:
            section = RUNNERS[name](ctx)
        except Exception as exc:  # one broken section must not lose the others' figures
            log.error("section %s failed: %s\n%s", name, exc, traceback.format_exc())
            section = {"figures": [], "error": f"{type(exc).__name__}: {exc}"[:2000]}
        section["seconds"] = round(time.monotonic() - t, 1)
        document["sections"][name] = section
        log.info("== %s done in %.0f s", name, section["seconds"])
    document["duration_s"] = round(time.monotonic() - started, 1)
    document["load_average_at_end"] = machine.load_average()
    if ctx._model is not None:
        document["model"] = {"bundle_dir": str(ctx._model.bundle_dir), "trained": ctx._model.trained}
        document["notes"].append(f"segmentation model: {ctx._model.description}")
    if not document["machine"]["gpu"]["available"]:
        document["notes"].append("no GPU on this machine: GPU figures are projections from the CPU stage times")
    load = document["machine"].get("load_average_1_5_15")
    cores = document["machine"].get("cpu_cores") or 1
    if load and load[0] > 0.5 * cores:
        document["notes"].append(f"the machine was busy at the start (load {load[0]} on {cores} cores): figures "
                                 "are pessimistic")
    figures = report.all_figures(document["sections"])
    document["targets"] = [t.to_dict() for t in report.check_targets(figures, document["machine"]["gpu"]["available"])]
    return document


def merge_sections(document: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Sections of an earlier results file that ``document`` did not measure, each marked with its run's date, go
    into ``document`` (in SECTIONS order); the targets are checked again over all figures."""
    measured = dict(document["sections"])
    merged: dict[str, Any] = {}
    for name in SECTIONS:
        if name in measured:
            merged[name] = measured[name]
        elif name in earlier.get("sections", {}):
            section = dict(earlier["sections"][name])
            section["notes"] = [*section.get("notes", []), f"figures of the run of {earlier.get('date', '?')} "
                                f"(git {earlier.get('versions', {}).get('git_commit', '?')}), kept by --merge"]
            merged[name] = section
    document["sections"] = merged
    document["notes"].append(f"sections {', '.join(n for n in merged if n not in measured) or 'none'} kept from the "
                             f"run of {earlier.get('date', '?')}; measured now: {', '.join(measured)}")
    figures = report.all_figures(merged)
    document["targets"] = [t.to_dict() for t in report.check_targets(figures, document["machine"]["gpu"]["available"])]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quick_dir = args.work_dir.resolve() / "quick"
    results = args.results or (quick_dir / "results.json" if args.quick else REPO_ROOT / "bench" / "results.json")
    doc = args.doc or (quick_dir / "PERFORMANCE.md" if args.quick else REPO_ROOT / "docs" / "PERFORMANCE.md")
    if args.render is not None:
        document = json.loads(args.render.read_text())
        report.write_markdown(doc, document)
        print(f"wrote {doc} from {args.render}")
        return 0
    document = run(args)
    if args.merge and results.is_file():
        merge_sections(document, json.loads(results.read_text()))
    report.write_results(results, document)
    report.write_markdown(doc, document)
    print(f"wrote {results} and {doc} in {document['duration_s']:.0f} s")
    for target in document["targets"]:
        state = {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
        print(f"  {target['name']}: {target['measured']} -> {state}")
    failed = [name for name, s in document["sections"].items() if s.get("error")]
    if failed:
        print(f"sections that failed: {', '.join(failed)} (see {results})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
