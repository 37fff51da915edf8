"""Feature models as in Xiong 2025: sex, age and mean trabecular HU per vertebra -> QCT category / BMD.

Regions (Xiong 2025 "Methods: BMD measurement model construction / model calibration"):

* ``chest``: T5-T10 HU; ``abdomen``: T12-L2 HU;
* ``chest_calibrated``: T5-T10 through the thoracolumbar curve ``HU = k * n + intercept`` (n: T5 = 1 ... L2 = 10),
  giving lumbar-equivalent HU at T12, L1 and L2 as features (the abdominal model's levels).
  ``k`` is the "average change coefficient" of the paper: fitted once on the training cohort (pooled
  within-patient least squares over every training patient with at least ``MIN_CURVE_LEVELS`` of T5..L2, lumbar
  levels included) and stored with the model; each patient's intercept comes from that patient's own thoracic
  levels (mean of ``hu_n - k * n`` over the available T5..T10). Choice: a per-patient slope fitted on T5-T10
  alone and extrapolated to L1-L2 (``curve_mode="per_patient"``, available) multiplies the measurement noise by
  ~3.5 at n = 9.5 (extrapolation 6 levels beyond the fitted range), which makes the calibrated model worse, not
  better; Xiong's wording (an *average* coefficient k from T5-L2 applied to chest data) matches the site slope.

Every feature is z-scored (``StandardScaler``) inside the saved scikit-learn ``Pipeline``. Targets: ``3class``
(normal / osteopenia / osteoporosis), ``binary`` (osteoporosis vs not) and ``bmd`` (QCT mg/cm3). Algorithms:
classifiers bagging decision trees (``bdt``), logistic regression (``lr``), random forest (``rf``); regressors
stochastic gradient descent (``sgd``), ``bdt``, ``rf``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.domain.levels import VertebraLevel
from service.site_models.cohort import FEATURE_LEVELS, CohortRow, rows_hash
from service.site_models.estimators import ALGORITHM_NAMES, TARGET_LABELS, TARGETS, algorithms_for, build_pipeline

logger = logging.getLogger(__name__)

REGIONS: tuple[str, ...] = ("chest", "abdomen", "chest_calibrated")
REGION_LEVELS: dict[str, tuple[VertebraLevel, ...]] = {
    "chest": tuple(VertebraLevel(v) for v in range(int(VertebraLevel.T5), int(VertebraLevel.T10) + 1)),
    "abdomen": (VertebraLevel.T12, VertebraLevel.L1, VertebraLevel.L2),
    "chest_calibrated": tuple(VertebraLevel(v) for v in range(int(VertebraLevel.T5), int(VertebraLevel.T10) + 1)),
}
CALIBRATED_LEVELS: tuple[VertebraLevel, ...] = (VertebraLevel.L1, VertebraLevel.L2)
"""Levels of the QCT reference at which the calibrated chest model evaluates the patient's curve."""
MIN_CURVE_LEVELS = 3
"""Thoracic levels needed for a patient's curve intercept (and for a per-patient slope)."""
CURVE_MODES: tuple[str, ...] = ("site", "per_patient")

MODEL_FILE = "model.joblib"
META_FILE = "model.json"
SCHEMA_VERSION = 1


def xiong_index(level: VertebraLevel) -> int:
    index = level.xiong_index
    if index is None:
        raise ValueError(f"level {level.name} is outside T5..L2")
    return index


# ---------------------------------------------------------------- thoracolumbar curve


def fit_site_curve_k(rows: Sequence[CohortRow]) -> tuple[float, int]:
    """Pooled within-patient slope of HU on the level index over T5..L2 (training rows); returns (k, patients)."""
    num = den = 0.0
    used = 0
    for r in rows:
        pts = [(xiong_index(lv), hu) for lv, hu in r.hu_by_level.items() if lv in FEATURE_LEVELS]
        if len(pts) < MIN_CURVE_LEVELS:
            continue
        n = np.array([p[0] for p in pts], dtype=float)
        hu = np.array([p[1] for p in pts], dtype=float)
        if np.ptp(n) == 0:
            continue
        num += float(((n - n.mean()) * (hu - hu.mean())).sum())
        den += float(((n - n.mean()) ** 2).sum())
        used += 1
    if used == 0 or den == 0:
        raise ValueError(f"no training row has at least {MIN_CURVE_LEVELS} of T5..L2 to fit the curve slope")
    return num / den, used


def patient_curve(
    hu_by_level: dict[VertebraLevel, float], *, mode: str, k_hu_per_level: float | None
) -> tuple[float, float] | None:
    """(k, intercept) of the patient's curve from T5..T10 (None with fewer than MIN_CURVE_LEVELS levels)."""
    pts = [(xiong_index(lv), hu_by_level[lv]) for lv in REGION_LEVELS["chest"] if lv in hu_by_level]
    if len(pts) < MIN_CURVE_LEVELS:
        return None
    n = np.array([p[0] for p in pts], dtype=float)
    hu = np.array([p[1] for p in pts], dtype=float)
    if mode == "site":
        if k_hu_per_level is None:
            raise ValueError("site curve mode needs k_hu_per_level")
        k = float(k_hu_per_level)
        return k, float((hu - k * n).mean())
    if mode == "per_patient":
        k, intercept = (float(v) for v in np.polyfit(n, hu, 1))
        return k, intercept
    raise ValueError(f"mode must be one of {CURVE_MODES}, got {mode!r}")


def calibrated_hu(
    hu_by_level: dict[VertebraLevel, float], *, mode: str, k_hu_per_level: float | None
) -> dict[str, float] | None:
    """Lumbar-equivalent HU from the patient's T5..T10 through the thoracolumbar curve.

    Keys: ``hu_cal_L1``, ``hu_cal_L2`` (the curve at L1 and L2: all thoracic levels pooled) and ``hu_eq_T5`` ...
    ``hu_eq_T10`` (each thoracic level moved along the curve slope to the L1-L2 midpoint, n = 9.5; a missing level
    takes the curve's value). None with fewer than MIN_CURVE_LEVELS thoracic levels.
    """
    curve = patient_curve(hu_by_level, mode=mode, k_hu_per_level=k_hu_per_level)
    if curve is None:
        return None
    k, intercept = curve
    target = 0.5 * (xiong_index(VertebraLevel.L1) + xiong_index(VertebraLevel.L2))
    out = {f"hu_cal_{lv.name}": k * xiong_index(lv) + intercept for lv in CALIBRATED_LEVELS}
    for lv in REGION_LEVELS["chest"]:
        n = xiong_index(lv)
        measured = hu_by_level.get(lv, k * n + intercept)
        out[f"hu_eq_{lv.name}"] = measured + k * (target - n)
    return out


# ---------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureSpec:
    """The feature schema of a model: how (hu_by_level, sex, age) becomes the model's input row."""

    region: str
    curve_mode: str | None = None
    curve_k_hu_per_level: float | None = None
    curve_fit_patients: int = 0

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {self.region!r}")
        if self.region == "chest_calibrated":
            if self.curve_mode not in CURVE_MODES:
                raise ValueError(f"curve_mode must be one of {CURVE_MODES} for chest_calibrated")
            if self.curve_mode == "site" and self.curve_k_hu_per_level is None:
                raise ValueError("curve_k_hu_per_level is required with curve_mode 'site'")

    @property
    def input_levels(self) -> tuple[VertebraLevel, ...]:
        return REGION_LEVELS[self.region]

    @property
    def names(self) -> tuple[str, ...]:
        if self.region == "chest_calibrated":
            hu = (*(f"hu_cal_{lv.name}" for lv in CALIBRATED_LEVELS),
                  *(f"hu_eq_{lv.name}" for lv in self.input_levels))
        else:
            hu = tuple(f"hu_{lv.name}" for lv in self.input_levels)
        return ("sex_female", "age_years", *hu)

    def vector(
        self, hu_by_level: dict[VertebraLevel, float], sex: str, age_years: float | None
    ) -> np.ndarray | None:
        """The feature row, or None when a needed input (level, sex, age) is missing."""
        if age_years is None or sex not in ("F", "M"):
            return None
        if self.region == "chest_calibrated":
            cal = calibrated_hu(hu_by_level, mode=str(self.curve_mode), k_hu_per_level=self.curve_k_hu_per_level)
            if cal is None:
                return None
            hu_values = [cal[name] for name in self.names[2:]]
        else:
            if any(lv not in hu_by_level for lv in self.input_levels):
                return None
            hu_values = [hu_by_level[lv] for lv in self.input_levels]
        row = np.array([1.0 if sex == "F" else 0.0, float(age_years), *hu_values], dtype=float)
        return row if np.all(np.isfinite(row)) else None

    def matrix(self, rows: Sequence[CohortRow]) -> tuple[np.ndarray, list[int]]:
        """Feature matrix of the rows that have every needed input, and their positions in ``rows``."""
        vectors, kept = [], []
        for i, r in enumerate(rows):
            v = self.vector(r.hu_by_level, r.sex, r.age_years)
            if v is not None:
                vectors.append(v)
                kept.append(i)
        width = len(self.names)
        return (np.vstack(vectors) if vectors else np.zeros((0, width))), kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "names": list(self.names),
            "input_levels": [lv.name for lv in self.input_levels],
            "sex_encoding": {"F": 1.0, "M": 0.0},
            "curve": None if self.region != "chest_calibrated" else {
                "mode": self.curve_mode,
                "k_hu_per_level": self.curve_k_hu_per_level,
                "fit_patients": self.curve_fit_patients,
                "level_index": "T5=1 ... L2=10",
                "min_levels": MIN_CURVE_LEVELS,
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        curve = d.get("curve") or {}
        spec = cls(
            region=str(d["region"]),
            curve_mode=curve.get("mode"),
            curve_k_hu_per_level=curve.get("k_hu_per_level"),
            curve_fit_patients=int(curve.get("fit_patients", 0)),
        )
        if list(spec.names) != list(d.get("names", spec.names)):
            raise ValueError(f"feature names in the schema {d.get('names')} do not match {list(spec.names)}")
        return spec


def fit_feature_spec(region: str, train_rows: Sequence[CohortRow], curve_mode: str = "site") -> FeatureSpec:
    if region != "chest_calibrated":
        return FeatureSpec(region)
    if curve_mode == "per_patient":
        return FeatureSpec(region, curve_mode="per_patient")
    k, used = fit_site_curve_k(train_rows)
    logger.info("thoracolumbar curve: k = %.3f HU per level from %d training patients", k, used)
    return FeatureSpec(region, curve_mode="site", curve_k_hu_per_level=k, curve_fit_patients=used)


def labels_for(target: str, rows: Sequence[CohortRow]) -> np.ndarray:
    if target == "3class":
        return np.array([r.category_index for r in rows], dtype=int)
    if target == "binary":
        return np.array([r.osteoporosis for r in rows], dtype=int)
    if target == "bmd":
        return np.array([r.qct_bmd_mg_cm3 for r in rows], dtype=float)
    raise ValueError(f"target must be one of {tuple(TARGETS)}, got {target!r}")


def model_name(region: str, target: str, algorithm: str) -> str:
    return f"{region}-{target}-{algorithm}"


# ---------------------------------------------------------------- trained model


@dataclass
class FeatureModel:
    """A trained pipeline with its schema; ``meta`` is what model.json holds."""

    name: str
    region: str
    target: str
    algorithm: str
    spec: FeatureSpec
    pipeline: Any
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return TARGETS[self.target]

    @property
    def labels(self) -> tuple[str, ...]:
        return TARGET_LABELS.get(self.target, ())

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes) for classifiers, BMD (n,) for regressors."""
        if X.shape[0] == 0:
            return np.zeros((0, len(self.labels))) if self.task == "classification" else np.zeros(0)
        if self.task == "classification":
            proba = self.pipeline.predict_proba(X)
            classes = list(self.pipeline.classes_)
            out = np.zeros((X.shape[0], len(self.labels)))
            for j, c in enumerate(classes):
                out[:, int(c)] = proba[:, j]
            return out
        return np.asarray(self.pipeline.predict(X), dtype=float)

    def predict_rows(self, rows: Sequence[CohortRow]) -> tuple[np.ndarray, list[int]]:
        X, kept = self.spec.matrix(rows)
        return self.predict_matrix(X), kept

    def save(self, folder: Path) -> Path:
        import joblib  # noqa: PLC0415  # with scikit-learn behind it: loaded only when a model is saved

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / MODEL_FILE
        joblib.dump(self.pipeline, model_path)
        self.meta["model_sha256"] = file_sha256(model_path)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True), encoding="utf-8")
        return folder


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def environment_versions() -> dict[str, str]:
    import sklearn  # noqa: PLC0415  # heavy: loaded only when a model is trained or loaded, not with the node

    return {"sklearn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version()}


def train_feature_model(
    region: str, target: str, algorithm: str, train_rows: Sequence[CohortRow], *, seed: int = 0,
    curve_mode: str = "site", spec: FeatureSpec | None = None, version: str = "", synthetic: bool = False,
) -> FeatureModel:
    """Fit one model on the training rows that have every needed feature."""
    spec = spec or fit_feature_spec(region, train_rows, curve_mode)
    X, kept = spec.matrix(train_rows)
    used_rows = [train_rows[i] for i in kept]
    if len(used_rows) < 10:
        raise ValueError(f"{model_name(region, target, algorithm)}: only {len(used_rows)} training rows with "
                         f"features {list(spec.names)} (need >= 10)")
    y = labels_for(target, used_rows)
    if TARGETS[target] == "classification" and len(np.unique(y)) < 2:
        raise ValueError(f"{model_name(region, target, algorithm)}: the training rows hold a single class")
    pipeline = build_pipeline(target, algorithm, seed)
    pipeline.fit(X, y)
    name = model_name(region, target, algorithm)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": "feature",
        "name": name,
        "version": version,
        "region": region,
        "task": TARGETS[target],
        "target": target,
        "labels": list(TARGET_LABELS.get(target, ())),
        "algorithm": algorithm,
        "algorithm_name": ALGORITHM_NAMES[algorithm],
        "feature_schema": spec.to_dict(),
        "versions": environment_versions(),
        "training_data_sha256": rows_hash(used_rows),
        "n_train": len(used_rows),
        "n_train_skipped_missing_features": len(train_rows) - len(used_rows),
        "seed": seed,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "synthetic": synthetic,
        "reference": "Xiong 2025 (chest T5-T10, abdomen T12-L2, calibrated chest via the thoracolumbar curve)",
    }
    logger.info("trained %s on %d rows (%d skipped: missing features)", name, len(used_rows),
                len(train_rows) - len(used_rows))
    return FeatureModel(name, region, target, algorithm, spec, pipeline, meta)


def load_feature_model(folder: Path, *, verify_hash: bool = True) -> FeatureModel:
    """Load a saved model; checks the artefact hash and warns when library versions differ."""
    import joblib  # noqa: PLC0415  # with scikit-learn behind it: loaded only when a site model is active

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if meta.get("kind") != "feature":
        raise ValueError(f"{folder}: not a feature model (kind={meta.get('kind')!r})")
    model_path = folder / MODEL_FILE
    if verify_hash:
        actual = file_sha256(model_path)
        if actual != meta.get("model_sha256"):
            raise ValueError(f"{model_path}: sha256 {actual} does not match model.json ({meta.get('model_sha256')})")
    current = environment_versions()
    saved = meta.get("versions", {})
    for lib in ("sklearn", "numpy"):
        if saved.get(lib) != current[lib]:
            logger.warning("%s was saved with %s %s, running %s", meta.get("name"), lib, saved.get(lib), current[lib])
    # the registry folder is the site's own, written by `bmd-node train models`; joblib unpickles it
    pipeline = joblib.load(model_path)
    spec = FeatureSpec.from_dict(meta["feature_schema"])
    return FeatureModel(meta["name"], meta["region"], meta["target"], meta["algorithm"], spec, pipeline, meta)


def train_all_feature_models(
    train_rows: Sequence[CohortRow], *, seed: int = 0, curve_mode: str = "site",
    regions: Sequence[str] = REGIONS, targets: Sequence[str] = tuple(TARGETS), version: str = "",
    synthetic: bool = False,
) -> list[FeatureModel]:
    models: list[FeatureModel] = []
    for region in regions:
        spec = fit_feature_spec(region, train_rows, curve_mode)
        for target in targets:
            for algorithm in algorithms_for(target):
                models.append(train_feature_model(region, target, algorithm, train_rows, seed=seed, spec=spec,
                                                  version=version, synthetic=synthetic))
    return models
