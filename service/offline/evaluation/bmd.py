"""``bmd-node evaluate bmd DATASET --out REPORT``: the whole screening pipeline (trained segmenter, not truth labels)
over case folders, compared with each phantom's own truth.

A case folder holds ``dicom/`` (or DICOM files) and, for phantoms, ``truth.json`` (the generator's record: per-level
BMD, the fracture geometry, the patient's L1-L2 BMD). Real cases without truth are run too: their exclusions are
listed with the key image, which shows each one and its reason.

Per phantom case, every predicted vertebra is matched to the truth vertebra nearest its centroid (within
MATCH_DISTANCE_MM; the VerSe identification rule without the level name, so a misnamed level still counts for its
BMD). Figures (``metrics.json``):
  * per-level BMD error (evaluable predicted levels against their matched truth level), MAE and bias, per kVp;
  * patient summary: error against the truth L1-L2 BMD for the cases whose summary used L1 and L2, and for every
    numeric summary; category agreement (ACR: < 80, 80-120, > 120 mg/cm3 from the truth L1-L2 BMD; an
    "indeterminate" summary counts as a disagreement and is also counted apart);
  * the exclusion confusion table over complete truth levels: fractured (the phantom's geometry: Genant grade from
    its height loss) or not, against called fractured or not; sensitivity per grade; the share of unfractured
    levels excluded as fracture, and excluded for any reason.
The truth comes from the phantom generator; nothing here reads the pipeline's constants.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Config
from service.domain.guidelines import categorize
from service.measurement import fracture_check
from service.pipeline.types import JobInput, PipelineRejectedError, ScreeningPipeline
from service.series.volume_loader import dicom_files, read_headers

log = logging.getLogger(__name__)

MATCH_DISTANCE_MM = 20.0
"""VerSe identification distance: a predicted centroid within this of a truth centroid is that vertebra."""
GENANT_GRADE_LOSS = ((0.40, 3), (0.25, 2), (0.20, 1))
"""Genant 1993: height loss >= 40 % grade 3, 25-40 % grade 2, 20-25 % grade 1."""


@dataclass(frozen=True)
class LevelRow:
    case: str
    truth_level: str
    predicted_level: str
    name_right: bool
    level_uncertain: bool
    evaluable: bool
    exclusion_reason: str | None
    exclusion_detail: str | None
    bmd_predicted: float | None
    bmd_truth: float
    fracture_grade_truth: int
    called_fracture: bool
    kvp: int
    fracture_outcome: str = "not checked"
    """The fracture check's outcome: "fractured", "not fractured", "not measurable", or "not checked" (cut by the
    field of view, outside T1-L5, no body)."""


@dataclass(frozen=True)
class CaseRow:
    case: str
    kvp: int | None
    status: str
    """"ok", "rejected: ..." or "failed: ..."."""
    summary_bmd: float | None
    summary_levels: tuple[str, ...]
    summary_category: str | None
    truth_l1_l2_bmd: float | None
    truth_category: str | None
    seconds: float
    key_image: str | None
    exclusions: tuple[tuple[str, str, str], ...]
    """(level, reason, detail) of every excluded level."""


def genant_grade(height_loss: float | None) -> int:
    if height_loss is None:
        return 0
    return next((grade for limit, grade in GENANT_GRADE_LOSS if height_loss >= limit - 1e-9), 0)


def acr_category(bmd_mg_cm3: float) -> str:
    """The category of the truth's L1-L2 BMD under the node's default thresholds (ACR 2018 / ISCD: the thresholds
    are the clinical rule being applied, not a quantity under test)."""
    return categorize(bmd_mg_cm3).value


def case_folders(dataset: Path) -> list[Path]:
    """``dataset`` itself when it holds DICOM files directly or in dicom/, else its sub-folders that do."""
    def is_case(folder: Path) -> bool:
        return (folder / "dicom").is_dir() or any(p.suffix == ".dcm" for p in folder.iterdir() if p.is_file())

    if is_case(dataset):
        return [dataset]
    return sorted(p for p in dataset.iterdir() if p.is_dir() and is_case(p))


NOT_CHECKED_DETAILS = ("cut by the field of view", fracture_check.NOT_CHECKED_DETAIL, fracture_check.NOT_GRADED_DETAIL,
                       "no body voxels")


def fracture_outcome(status: str | None, detail: str | None) -> str:
    """"fractured", "not fractured", "not measurable", or "not checked" from a level's fracture status and detail."""
    if status is None or any(d in (detail or "") for d in NOT_CHECKED_DETAILS):
        return "not checked"
    return status.replace("_", " ")


def _called_fracture(vertebra: dict[str, Any]) -> bool:
    return vertebra.get("fracture_status") == "fractured" or vertebra.get("exclusion_reason") == "fracture"


def match_levels(case: str, result: dict[str, Any], truth: dict[str, Any]) -> list[LevelRow]:
    """One row per complete truth vertebra that a predicted vertebra matches: one-to-one, nearest centroids first,
    within 20 mm; truth bodies cut by the field take part in the matching but give no row."""
    kvp = int(truth["acquisition"]["kvp"])
    every = list(truth["vertebrae"])
    predicted = list(result.get("vertebrae", []))
    if not every or not predicted:
        return []
    # nearest pairs first over every truth body, cut ones included: a body the field cuts (its centroid half a
    # body off) must not take a complete neighbour's place; rows only for complete truth bodies
    centres = np.array([t["centroid_lps_mm"] for t in every], dtype=float)
    found = np.array([v["centroid_lps_mm"] for v in predicted], dtype=float)
    d = np.linalg.norm(found[:, None, :] - centres[None, :, :], axis=-1)
    pairs: list[tuple[int, int]] = []
    taken_v: set[int] = set()
    taken_t: set[int] = set()
    for i, k in sorted(np.ndindex(*d.shape), key=lambda ik: d[ik]):
        if d[i, k] > MATCH_DISTANCE_MM:
            break
        if i not in taken_v and k not in taken_t:
            taken_v.add(i)
            taken_t.add(k)
            pairs.append((i, k))
    rows = []
    for i, k in sorted(pairs):
        v, t = predicted[i], every[k]
        if t.get("cut_by_fov"):
            continue
        fracture = t.get("fracture") or {}
        rows.append(LevelRow(
            case=case, truth_level=t["level"], predicted_level=v["level"], name_right=v["level"] == t["level"],
            level_uncertain=bool(v.get("level_uncertain")), evaluable=bool(v.get("evaluable")),
            exclusion_reason=v.get("exclusion_reason"), exclusion_detail=v.get("exclusion_detail"),
            bmd_predicted=v.get("bmd_mg_cm3"), bmd_truth=float(t["bmd_mg_cm3"]),
            fracture_grade_truth=genant_grade(fracture.get("height_loss")) if t.get("fractured") else 0,
            called_fracture=_called_fracture(v), kvp=kvp,
            fracture_outcome=fracture_outcome(v.get("fracture_status"), v.get("fracture_detail"))))
    return rows


def run_case(folder: Path, pipeline: ScreeningPipeline, out: Path) -> tuple[CaseRow, list[LevelRow]]:
    """The pipeline on one case; result.json and key_image.png under ``out``/cases/NAME."""
    name = folder.name
    truth_path = folder / "truth.json"
    truth = json.loads(truth_path.read_text()) if truth_path.is_file() else None
    dicom = folder / "dicom" if (folder / "dicom").is_dir() else folder
    paths = dicom_files(dicom)
    header = read_headers(paths[:1])[0]
    job = JobInput(job_id=0, study_instance_uid=str(header.StudyInstanceUID),
                   series_instance_uid=str(header.SeriesInstanceUID), paths=tuple(paths))
    case_out = out / "cases" / name
    case_out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result: dict[str, Any] | None = None
    key_image = None
    try:
        output = pipeline.run(job)
        result = output.result.to_json_dict()
        (case_out / "result.json").write_text(json.dumps(result, indent=1))
        key = next((o for o in output.objects if o.kind == "key_image"), None)
        if key is not None:
            key_image = _key_image_png(key.data, case_out / "key_image.png")
        status = "ok"
    except PipelineRejectedError as exc:
        status = f"rejected: {exc.reason}"
    except Exception as exc:  # an evaluation reports every case, failed ones included
        log.exception("case %s failed", name)
        status = f"failed: {type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    patient = (truth or {}).get("patient") or {}
    truth_bmd = patient.get("l1_l2_bmd_mg_cm3")
    summary = (result or {}).get("summary") or {}
    exclusions = tuple((v["level"], v.get("exclusion_reason") or "", v.get("exclusion_detail") or "")
                       for v in (result or {}).get("vertebrae", []) if not v.get("evaluable"))
    row = CaseRow(
        case=name, kvp=int(truth["acquisition"]["kvp"]) if truth else None, status=status,
        summary_bmd=summary.get("bmd_mg_cm3"), summary_levels=tuple(summary.get("levels_used") or ()),
        summary_category=summary.get("category"), truth_l1_l2_bmd=truth_bmd,
        truth_category=acr_category(float(truth_bmd)) if truth_bmd is not None else None,
        seconds=round(seconds, 1), key_image=str(key_image.relative_to(out)) if key_image else None,
        exclusions=exclusions)
    levels = match_levels(name, result, truth) if result is not None and truth is not None else []
    return row, levels


def _key_image_png(data: bytes, path: Path) -> Path:
    import io  # noqa: PLC0415 - only the evaluation writes PNGs

    import pydicom  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    ds = pydicom.dcmread(io.BytesIO(data))
    Image.fromarray(ds.pixel_array).save(path)
    return path


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 2) if values else None


def bmd_errors(levels: list[LevelRow]) -> dict[str, Any]:
    scored = [lv for lv in levels if lv.evaluable and lv.bmd_predicted is not None]
    errors = [float(lv.bmd_predicted) - lv.bmd_truth for lv in scored]  # type: ignore[arg-type]
    by_kvp = {}
    for kvp in sorted({lv.kvp for lv in scored}):
        e = [float(lv.bmd_predicted) - lv.bmd_truth for lv in scored if lv.kvp == kvp]  # type: ignore[arg-type]
        by_kvp[str(kvp)] = {"levels": len(e), "mae": _mean([abs(x) for x in e]), "bias": _mean(e)}
    return {"levels": len(errors), "mae": _mean([abs(x) for x in errors]), "bias": _mean(errors),
            "p95_abs": round(float(np.percentile(np.abs(errors), 95)), 2) if errors else None, "by_kvp": by_kvp}


def same_levels_truth(case: CaseRow, levels: list[LevelRow]) -> float | None:
    """The truth's mean BMD over the vertebrae the node's summary used (matched by position, so a wrong name still
    points at the right truth row); None when the summary used no level or one has no truth row."""
    by_name = {lv.predicted_level: lv.bmd_truth for lv in levels if lv.case == case.case}
    used = [by_name.get(name) for name in case.summary_levels]
    if not used or any(b is None for b in used):
        return None
    return float(np.mean([b for b in used if b is not None]))


def same_levels_agreement(cases: list[CaseRow], levels: list[LevelRow]) -> dict[str, Any]:
    """A second reference beside the phantom's L1-L2 mean: the truth over the levels the summary used. When a level
    of L1-L2 is fractured (or excluded) the node summarises its neighbours, as ISCD asks, while the L1-L2 truth keeps
    the fractured level; this figure measures the summary's number on its own levels. Reported beside the L1-L2
    figures, never instead of them."""
    scored = [(c, t) for c in cases if c.status == "ok" and c.summary_bmd is not None
              and (t := same_levels_truth(c, levels)) is not None]
    return {
        "cases": len(scored),
        "mae": _mean([abs(c.summary_bmd - t) for c, t in scored]),  # type: ignore[operator]
        "category_agreement": round(sum(c.summary_category == acr_category(t) for c, t in scored) / len(scored), 4)
        if scored else None,
        "not_l1_l2": sum(set(c.summary_levels) != {"L1", "L2"} for c, _ in scored),
    }


def summary_errors(cases: list[CaseRow]) -> dict[str, Any]:
    truthful = [c for c in cases if c.truth_l1_l2_bmd is not None and c.status == "ok"]
    numeric = [c for c in truthful if c.summary_bmd is not None]
    l1l2 = [c for c in numeric if set(c.summary_levels) == {"L1", "L2"}]
    agree = [c for c in truthful if c.summary_category == c.truth_category]
    category_only = [c for c in truthful if c.summary_bmd is None and c.summary_category not in (None, "indeterminate")]
    return {
        "cases_with_truth": len(truthful),
        "l1_l2_cases": len(l1l2),
        "l1_l2_mae": _mean([abs(c.summary_bmd - c.truth_l1_l2_bmd) for c in l1l2]),  # type: ignore[operator]
        "numeric_summaries": len(numeric),
        "all_numeric_mae": _mean([abs(c.summary_bmd - c.truth_l1_l2_bmd) for c in numeric]),  # type: ignore[operator]
        "category_agreement": round(len(agree) / len(truthful), 4) if truthful else None,
        "indeterminate": sum(c.summary_category == "indeterminate" for c in truthful),
        "category_only": len(category_only),
        "category_only_agree": sum(c.summary_category == c.truth_category for c in category_only),
        "failed_or_rejected": sum(c.status != "ok" for c in cases),
    }


def exclusion_table(levels: list[LevelRow]) -> dict[str, Any]:
    fractured = [lv for lv in levels if lv.fracture_grade_truth > 0]
    intact = [lv for lv in levels if lv.fracture_grade_truth == 0]
    by_grade = {}
    for grade in (1, 2, 3):
        g = [lv for lv in fractured if lv.fracture_grade_truth == grade]
        by_grade[str(grade)] = {"levels": len(g), "called": sum(lv.called_fracture for lv in g),
                                "sensitivity": round(sum(lv.called_fracture for lv in g) / len(g), 4) if g else None}
    intact_outcomes = _outcomes(intact)
    checked = sum(n for outcome, n in intact_outcomes.items() if outcome != "not checked")
    reasons: dict[str, int] = {}
    for lv in intact:
        if lv.exclusion_reason:
            reasons[lv.exclusion_reason] = reasons.get(lv.exclusion_reason, 0) + 1
    return {
        "confusion": {"fractured_called": sum(lv.called_fracture for lv in fractured),
                      "fractured_missed": sum(not lv.called_fracture for lv in fractured),
                      "intact_called": sum(lv.called_fracture for lv in intact),
                      "intact_not_called": sum(not lv.called_fracture for lv in intact)},
        "sensitivity_by_grade": by_grade,
        "intact_levels": len(intact),
        "false_fracture_share": round(sum(lv.called_fracture for lv in intact) / len(intact), 4) if intact else None,
        "intact_excluded_share": round(sum(lv.exclusion_reason is not None for lv in intact) / len(intact), 4)
        if intact else None,
        "intact_exclusion_reasons": reasons,
        "outcomes": {"fractured": _outcomes(fractured), "intact": intact_outcomes},
        "intact_not_measurable_share": round(intact_outcomes.get("not measurable", 0) / checked, 4) if checked
        else None,
    }


def _outcomes(levels: list[LevelRow]) -> dict[str, int]:
    """How many levels the fracture check called fractured, not fractured, not measurable, or did not check."""
    out: dict[str, int] = {}
    for lv in levels:
        out[lv.fracture_outcome] = out.get(lv.fracture_outcome, 0) + 1
    return out


def naming(levels: list[LevelRow]) -> dict[str, Any]:
    return {"matched_levels": len(levels), "named_right": sum(lv.name_right for lv in levels),
            "confident_wrong": sum(not lv.name_right and not lv.level_uncertain for lv in levels)}


def evaluate(dataset: Path, out: Path, config: Config, pipeline: ScreeningPipeline) -> dict[str, Any]:
    """Run every case, write ``metrics.json`` and ``index.html`` (bmd_report) under ``out``; return the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    cases: list[CaseRow] = []
    levels: list[LevelRow] = []
    for folder in _progress(case_folders(dataset)):
        row, rows = run_case(folder, pipeline, out)
        cases.append(row)
        levels.extend(rows)
    return _write_metrics(dataset, out, cases, levels, config.bmd.__class__.__name__)


def _case_rows(per_case: list[dict[str, Any]]) -> list[CaseRow]:
    """The per-case rows of a saved metrics.json (JSON lists back to the rows' tuples)."""
    return [CaseRow(**{**c, "summary_levels": tuple(c["summary_levels"]),
                       "exclusions": tuple(tuple(e) for e in c["exclusions"])}) for c in per_case]


def rescore(dataset: Path, out: Path) -> dict[str, Any]:
    """The figures of an earlier run again from its saved result.json files (no pipeline run), with this module's
    matching and scoring: ``python -m service.offline.evaluation.bmd DATASET REPORT``."""
    old = json.loads((out / "metrics.json").read_text())
    cases = _case_rows(old["per_case"])
    levels: list[LevelRow] = []
    for c in cases:
        result_path, truth_path = out / "cases" / c.case / "result.json", dataset / c.case / "truth.json"
        if result_path.is_file() and truth_path.is_file():
            levels += match_levels(c.case, json.loads(result_path.read_text()), json.loads(truth_path.read_text()))
    return _write_metrics(dataset, out, cases, levels, old.get("calibration_config", ""))


def _write_metrics(dataset: Path, out: Path, cases: list[CaseRow], levels: list[LevelRow],
                   calibration_config: str) -> dict[str, Any]:
    from service.offline.evaluation.bmd_report import write_report  # noqa: PLC0415 - matplotlib only here

    metrics = {"dataset": str(dataset), "cases": len(cases), "level_bmd": bmd_errors(levels),
               "summary": summary_errors(cases), "summary_same_levels": same_levels_agreement(cases, levels),
               "fracture": exclusion_table(levels), "naming": naming(levels),
               "calibration_config": calibration_config,
               "per_case": [asdict(c) for c in cases], "per_level": [asdict(lv) for lv in levels]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    write_report(out, metrics)
    return metrics


def _progress(folders: list[Path]) -> Iterator[Path]:
    from tqdm import tqdm  # noqa: PLC0415 - a progress bar on the command line only

    yield from tqdm(folders, desc="evaluate bmd", unit="case")


def same_levels_from_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``same_levels_agreement`` from a committed metrics.json (its per-case and per-level rows)."""
    return same_levels_agreement(_case_rows(metrics["per_case"]), [LevelRow(**lv) for lv in metrics["per_level"]])


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "--same-levels":  # python -m service.offline.evaluation.bmd --same-levels METRICS.json ...
        for path in sys.argv[2:]:
            print(path, json.dumps(same_levels_from_metrics(json.loads(Path(path).read_text()))))
        raise SystemExit(0)
    figures = rescore(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps({k: v for k, v in figures.items() if k not in ("per_case", "per_level")}, indent=1))
