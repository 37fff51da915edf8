"""The cohort manifest: a CSV with one row per patient, parsed and validated.

Columns (header names are case-sensitive; unknown columns are kept but ignored):

=================  ========  ===========================================================================
column             required  meaning
=================  ========  ===========================================================================
patient_ref        no        pseudonymous row reference (never a name or a patient ID); default: row number
sex                yes       F / M (also female / male, f / m)
age                yes       years (18..110)
qct_bmd_mg_cm3     yes       QCT trabecular BMD of L1-L2 (or the QCT report's levels), mg/cm3
qct_category       no        normal / osteopenia / osteoporosis; default: from ``qct_bmd_mg_cm3`` and the
                             ACR 2018 / Chinese 2018 QCT thresholds (service.domain.guidelines)
split              no        train / validation / test; all empty -> assigned (Xiong 2025 proportions)
hu_T5 ... hu_L2    no        mean trabecular HU per level extracted earlier (empty = level not evaluable)
result_json        no        the node's stored result.json for the series
ct_series_dir      no        folder with the CT series (DICOM files), run through the node's pipeline
source             no        provenance; ``synthetic`` marks a synthetic row (reports carry a banner)
scanner            no        free text (manufacturer / model / kVp), reported per split
=================  ========  ===========================================================================

Each row needs at least one feature source: HU columns, ``result_json`` or ``ct_series_dir``. Relative paths are
resolved against the CSV's folder. Validation collects every problem and raises one ``CohortError`` whose lines
each name the row (1-based data row, i.e. CSV line - 1) and the column.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from service.domain.guidelines import categorize
from service.domain.levels import VertebraLevel
from service.domain.results import Category

logger = logging.getLogger(__name__)

FEATURE_LEVELS: tuple[VertebraLevel, ...] = tuple(
    VertebraLevel(v) for v in range(int(VertebraLevel.T5), int(VertebraLevel.L2) + 1)
)
"""T5..L2: the levels of the Xiong 2025 thoracolumbar curve (indices 1..10)."""
HU_COLUMNS: dict[VertebraLevel, str] = {lv: f"hu_{lv.name}" for lv in FEATURE_LEVELS}
SPLITS: tuple[str, ...] = ("train", "validation", "test")
CATEGORY_LABELS: tuple[str, ...] = ("normal", "osteopenia", "osteoporosis")
REQUIRED_COLUMNS: tuple[str, ...] = ("sex", "age", "qct_bmd_mg_cm3")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "patient_ref", "qct_category", "split", "result_json", "ct_series_dir", "source", "scanner",
)
CSV_COLUMNS: tuple[str, ...] = (
    "patient_ref", "sex", "age", "qct_bmd_mg_cm3", "qct_category", "split",
    *HU_COLUMNS.values(), "result_json", "ct_series_dir", "source", "scanner",
)
"""Column order the project writes."""

# Xiong 2025: 532 patients randomly split 426 / 106 (80 / 20 %) + 170 later patients as internal test set.
XIONG_TEST_FRACTION = 170.0 / 702.0
XIONG_VALIDATION_FRACTION_OF_DEVELOPMENT = 106.0 / 532.0
AGE_RANGE_YEARS = (18.0, 110.0)
QCT_BMD_RANGE_MG_CM3 = (0.0, 400.0)
HU_RANGE = (-300.0, 1200.0)
"""Plausible trabecular mean HU (outside: a unit or column error)."""
MAX_ERRORS_SHOWN = 30


class CohortError(ValueError):
    """The manifest is invalid; ``problems`` lists 'row N, column C: reason' lines."""

    def __init__(self, path: Path | str, problems: Sequence[str]) -> None:
        self.path = str(path)
        self.problems = tuple(problems)
        shown = "\n  ".join(self.problems[:MAX_ERRORS_SHOWN])
        hidden = len(self.problems) - MAX_ERRORS_SHOWN
        more = "" if hidden <= 0 else f"\n  ... and {hidden} more"
        super().__init__(f"invalid cohort manifest {self.path}:\n  {shown}{more}")


@dataclass(frozen=True)
class CohortRow:
    row: int
    """1-based data row number in the CSV (header excluded)."""
    patient_ref: str
    sex: str
    """'F' or 'M'."""
    age_years: float
    qct_bmd_mg_cm3: float
    qct_category: str
    split: str
    hu_by_level: dict[VertebraLevel, float] = field(default_factory=dict)
    result_json: Path | None = None
    ct_series_dir: Path | None = None
    source: str = ""
    scanner: str = ""

    def __post_init__(self) -> None:
        if self.sex not in ("F", "M"):
            raise ValueError(f"sex must be 'F' or 'M', got {self.sex!r}")
        if self.qct_category not in CATEGORY_LABELS:
            raise ValueError(f"qct_category must be one of {CATEGORY_LABELS}, got {self.qct_category!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")

    @property
    def synthetic(self) -> bool:
        return self.source.lower().startswith("synthetic")

    @property
    def category_index(self) -> int:
        return CATEGORY_LABELS.index(self.qct_category)

    @property
    def osteoporosis(self) -> int:
        return int(self.qct_category == "osteoporosis")

    def with_hu(self, hu_by_level: dict[VertebraLevel, float]) -> CohortRow:
        return replace(self, hu_by_level=dict(hu_by_level))


@dataclass(frozen=True)
class Cohort:
    path: Path | None
    rows: tuple[CohortRow, ...]

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("a cohort needs at least one row")

    @property
    def synthetic(self) -> bool:
        """True when any row is synthetic (reports then carry the SYNTHETIC DATA banner)."""
        return any(r.synthetic for r in self.rows)

    def split(self, name: str) -> tuple[CohortRow, ...]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return tuple(r for r in self.rows if r.split == name)

    def feature_hash(self) -> str:
        """SHA-256 of the training-relevant content (features and labels, all rows in order)."""
        return rows_hash(self.rows)


def rows_hash(rows: Iterable[CohortRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        hu = ",".join("" if lv not in r.hu_by_level else f"{r.hu_by_level[lv]:.4f}" for lv in FEATURE_LEVELS)
        h.update(
            f"{r.patient_ref}|{r.sex}|{r.age_years:.3f}|{r.qct_bmd_mg_cm3:.4f}|{r.qct_category}|{r.split}|{hu}\n".encode()
        )
    return h.hexdigest()


def normalise_sex(value: str) -> str | None:
    v = value.strip().lower()
    if v in ("f", "female", "w", "woman"):
        return "F"
    if v in ("m", "male", "man"):
        return "M"
    return None


def category_from_bmd(bmd_mg_cm3: float) -> str:
    cat = categorize(bmd_mg_cm3)
    if cat is Category.INDETERMINATE:
        raise ValueError(f"no category for BMD {bmd_mg_cm3!r}")
    return cat.value


def _parse_float(text: str) -> float | None:
    t = text.strip()
    if t == "" or t.lower() in ("na", "nan", "none", "null"):
        return None
    value = float(t)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def assign_splits(n: int, seed: int, categories: Sequence[str] | None = None) -> list[str]:
    """Xiong 2025 proportions (426 / 106 / 170 of 702): ~24 % test, the rest 80 / 20 % train / validation.

    Stratified by ``categories`` when given: every stratum is shuffled, then all rows are ordered by their
    fractional position inside their stratum, so any prefix of that order has the cohort's category mix; the
    first rows go to test, the next to validation, the rest to train.
    """
    rng = np.random.default_rng(seed)
    keys = list(categories) if categories is not None else [""] * n
    if len(keys) != n:
        raise ValueError(f"categories must have {n} entries, got {len(keys)}")
    position = np.zeros(n)
    for key in sorted(set(keys)):
        members = np.flatnonzero(np.array(keys, dtype=object) == key)
        rng.shuffle(members)
        position[members] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.lexsort((rng.random(n), position))
    n_test = round(n * XIONG_TEST_FRACTION)
    n_val = round((n - n_test) * XIONG_VALIDATION_FRACTION_OF_DEVELOPMENT)
    out = ["train"] * n
    for j, i in enumerate(order):
        if j < n_test:
            out[i] = "test"
        elif j < n_test + n_val:
            out[i] = "validation"
    return out


@dataclass(frozen=True)
class _ParsedRow:
    """One data row as read, before its category and split are settled (None: the cell was invalid)."""

    row: int
    patient_ref: str
    sex: str | None
    age_years: float | None
    qct_bmd_mg_cm3: float | None
    qct_category: str  # as given (lower case); empty: from qct_bmd_mg_cm3
    split: str
    hu_by_level: dict[VertebraLevel, float]
    result_json: Path | None
    ct_series_dir: Path | None
    source: str
    scanner: str

    def to_row(self, qct_category: str, split: str) -> CohortRow:
        if self.sex is None or self.age_years is None or self.qct_bmd_mg_cm3 is None:
            raise ValueError(f"row {self.row} has invalid cells and cannot become a CohortRow")
        return CohortRow(row=self.row, patient_ref=self.patient_ref, sex=self.sex, age_years=self.age_years,
                         qct_bmd_mg_cm3=self.qct_bmd_mg_cm3, qct_category=qct_category, split=split,
                         hu_by_level=self.hu_by_level, result_json=self.result_json,
                         ct_series_dir=self.ct_series_dir, source=self.source, scanner=self.scanner)


_Bad = Callable[[str, str], None]  # bad(column, reason): records a problem of the current row


def _read_manifest(csv_path: Path) -> list[dict[str, str]]:
    """The data rows (keys stripped) after the file-level checks: file, required columns, rows, a feature source."""
    if not csv_path.is_file():
        raise CohortError(csv_path, [f"file not found: {csv_path}"])
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        raw_rows = [{(k or "").strip(): (v or "") for k, v in r.items()} for r in reader]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CohortError(csv_path, [f"header: required column(s) missing: {', '.join(missing)}"])
    if not raw_rows:
        raise CohortError(csv_path, ["no data rows"])
    if not any(c in header for c in (*HU_COLUMNS.values(), "result_json", "ct_series_dir")):
        raise CohortError(csv_path, ["header: no feature source column (hu_T5..hu_L2, result_json or ct_series_dir)"])
    return raw_rows


def _parse_required(raw: dict[str, str], column: str, bad: _Bad, inside: Callable[[float], bool],
                    range_text: str) -> float | None:
    """A required number of ``column``; problems: empty, not a number, outside ``range_text``."""
    value: float | None = None
    try:
        value = _parse_float(raw.get(column, ""))
        if value is None:
            bad(column, "empty")
        elif not inside(value):
            bad(column, f"must be within {range_text}, got {value:g}")
    except ValueError:
        bad(column, f"not a number: {raw.get(column, '')!r}")
    return value


def _parse_hu(raw: dict[str, str], bad: _Bad) -> dict[VertebraLevel, float]:
    hu: dict[VertebraLevel, float] = {}
    for level, column in HU_COLUMNS.items():
        text = raw.get(column, "")
        try:
            value = _parse_float(text)
        except ValueError:
            bad(column, f"not a number: {text!r}")
            continue
        if value is not None and not (HU_RANGE[0] <= value <= HU_RANGE[1]):
            bad(column, f"must be within {HU_RANGE[0]:g}..{HU_RANGE[1]:g} HU, got {value:g}")
        elif value is not None:
            hu[level] = value
    return hu


def _parse_paths(raw: dict[str, str], base: Path, bad: _Bad) -> dict[str, Path | None]:
    """``result_json`` and ``ct_series_dir``, resolved against the CSV's folder (None: empty)."""
    paths: dict[str, Path | None] = {}
    for column, exists, kind in (("result_json", Path.is_file, "file"), ("ct_series_dir", Path.is_dir, "folder")):
        text = raw.get(column, "").strip()
        p = (Path(text) if Path(text).is_absolute() else base / text) if text else None
        if p is not None and not exists(p):
            bad(column, f"{kind} not found: {p}")
        paths[column] = p
    return paths


def _parse_row(n: int, raw: dict[str, str], split: str, any_split: bool, base: Path,
               refs_seen: dict[str, int]) -> tuple[_ParsedRow, list[str]]:
    """Row ``n`` (1-based) and its problems, in column order; records its patient_ref in ``refs_seen``."""
    lines: list[str] = []

    def bad(column: str, reason: str) -> None:
        lines.append(f"row {n}, column {column!r}: {reason}")

    ref = raw.get("patient_ref", "").strip() or f"row{n}"
    if ref in refs_seen:
        bad("patient_ref", f"duplicate of row {refs_seen[ref]}")
    refs_seen.setdefault(ref, n)
    sex = normalise_sex(raw.get("sex", ""))
    if sex is None:
        bad("sex", f"must be F or M (female/male), got {raw.get('sex', '')!r}")
    age = _parse_required(raw, "age", bad, lambda v: AGE_RANGE_YEARS[0] <= v <= AGE_RANGE_YEARS[1],
                          f"{AGE_RANGE_YEARS[0]:g}..{AGE_RANGE_YEARS[1]:g} years")
    bmd = _parse_required(raw, "qct_bmd_mg_cm3", bad, lambda v: QCT_BMD_RANGE_MG_CM3[0] < v < QCT_BMD_RANGE_MG_CM3[1],
                          f"{QCT_BMD_RANGE_MG_CM3} mg/cm3")
    category = raw.get("qct_category", "").strip().lower()
    if category and category not in CATEGORY_LABELS:
        bad("qct_category", f"must be one of {', '.join(CATEGORY_LABELS)}, got {category!r}")
    if any_split and split not in SPLITS:
        bad("split", f"must be one of {', '.join(SPLITS)} (or empty in every row), got {split!r}")
    hu = _parse_hu(raw, bad)
    paths = _parse_paths(raw, base, bad)
    if not hu and paths["result_json"] is None and paths["ct_series_dir"] is None:
        bad("hu_T5..hu_L2/result_json/ct_series_dir", "no feature source in this row")
    parsed = _ParsedRow(row=n, patient_ref=ref, sex=sex, age_years=age, qct_bmd_mg_cm3=bmd, qct_category=category,
                        split=split, hu_by_level=hu, result_json=paths["result_json"],
                        ct_series_dir=paths["ct_series_dir"], source=raw.get("source", "").strip(),
                        scanner=raw.get("scanner", "").strip())
    return parsed, lines


def _settle_categories(parsed: Sequence[_ParsedRow]) -> list[str]:
    """The classification label of every row: the given qct_category, else the one of its BMD (guidelines)."""
    categories: list[str] = []
    mismatched = 0
    for entry in parsed:
        from_bmd = category_from_bmd(float(entry.qct_bmd_mg_cm3))  # type: ignore[arg-type]
        given = entry.qct_category
        if given and given != from_bmd:
            mismatched += 1
        categories.append(given or from_bmd)
    if mismatched:
        logger.warning("%d rows carry a qct_category that differs from the category of qct_bmd_mg_cm3; "
                       "the given category is used as the classification label", mismatched)
    return categories


def load_cohort(path: Path | str, *, split_seed: int = 0) -> Cohort:
    """Parse and validate a cohort CSV. Raises ``CohortError`` naming every bad row and column."""
    csv_path = Path(path)
    raw_rows = _read_manifest(csv_path)
    split_values = [r.get("split", "").strip().lower() for r in raw_rows]
    any_split = any(split_values)
    problems: list[str] = []
    parsed: list[_ParsedRow] = []
    refs_seen: dict[str, int] = {}
    for n, raw in enumerate(raw_rows, start=1):
        row, row_problems = _parse_row(n, raw, split_values[n - 1], any_split, csv_path.parent, refs_seen)
        problems.extend(row_problems)
        parsed.append(row)
    if problems:
        raise CohortError(csv_path, problems)
    categories = _settle_categories(parsed)
    splits = [p.split for p in parsed] if any_split else assign_splits(len(parsed), split_seed, categories)
    if not any_split:
        logger.info("no split column: assigned train/validation/test with seed %d (Xiong 2025 proportions)",
                    split_seed)
    rows = tuple(p.to_row(cat, split) for p, cat, split in zip(parsed, categories, splits, strict=True))
    return Cohort(csv_path, rows)


def write_cohort(path: Path | str, rows: Sequence[CohortRow], *, relative_to: Path | None = None) -> Path:
    """Write rows in the project's column order (HU with 2 decimals; missing levels empty)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = relative_to if relative_to is not None else out.parent

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        try:
            return str(p.relative_to(base))
        except ValueError:
            return str(p)

    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            hu = [("" if lv not in r.hu_by_level else f"{r.hu_by_level[lv]:.2f}") for lv in FEATURE_LEVELS]
            writer.writerow([r.patient_ref, r.sex, f"{r.age_years:.1f}", f"{r.qct_bmd_mg_cm3:.2f}", r.qct_category,
                             r.split, *hu, rel(r.result_json), rel(r.ct_series_dir), r.source, r.scanner])
    return out
