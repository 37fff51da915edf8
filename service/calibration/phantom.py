"""QCT calibration phantoms: definition files, rod finding in a CT volume, and the fitted HU -> BMD line.

Definition (models/calibration/*.json): ``name``, ``material`` ('k2hpo4' or 'hydroxyapatite'), ``rod_diameter_mm``
and ``rods`` (``density_mg_cm3`` each). Densities are on the BMD scale the result reports.

Rod finding (rods are cylinders parallel to the table, uniform along their length): ``phantom_rods.py``. In a
patient scan only the region posterior to the patient's vertebral bodies by ``SYNC_MIN_POSTERIOR_MM`` is searched
(the phantom lies under the patient).
Matching to the definition: rods and densities are both ordered; every monotone pairing of found rods with declared
densities (at least 3) is fitted; a pairing counts only when the rods lie in one row at least 1.3 diameters apart,
the slope is plausible (within ``PLAUSIBLE_SLOPE_RATIO`` of the reference line at the scan's kVp) and precise (each
rod's HU uncertainty from its spread along its length, ``MAX_SLOPE_RELATIVE_SE``), the line crosses
0 mg/cm3 within +-60 HU (water-equivalent base) and R2 >= ``MIN_R2``; the
largest such set, then the best R2, wins.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.calibration.linear import LineFit, fit_line, reference_line
from service.calibration.phantom_rods import FoundRod, rod_along, rod_hu_at
from service.calibration.phantom_rods import find_rods as find_rod_candidates
from service.calibration.store import scanner_label
from service.domain.results import CalibrationKind, LinearCalibration
from service.domain.segmentation import SpineSegmentation
from service.domain.volume import CTVolume

logger = logging.getLogger(__name__)

DEFINITIONS_DIR = Path(__file__).resolve().parents[2] / "models" / "calibration"
DEFAULT_DEFINITION = DEFINITIONS_DIR / "k2hpo4_0_50_100_200.json"
MATERIALS = ("k2hpo4", "hydroxyapatite")
MIN_R2 = 0.995
SLOPE_RANGE = (0.3, 2.5)
"""Plausible mg/cm3 per HU (0.75 at 120 kVp; lower kVp gives smaller slopes)."""
SYNC_MIN_POSTERIOR_MM = 60.0
PERSISTENCE_FRACTION = 0.6
MAX_CANDIDATES = 12
ZERO_DENSITY_HU_RANGE = (-60.0, 60.0)
"""A rod of 0 mg/cm3 is water-equivalent resin or solution: the fitted line must cross 0 mg/cm3 near 0 HU."""
COLLINEAR_TOLERANCE = 0.35
MIN_PITCH_RADII = 2.6
"""Rods of QCT phantoms are spaced well apart (centre distance > 1.3 diameters); a detection half-way between two
rods (block material whose ring touches both) is closer than that."""
"""RMS distance of the matched rod centres from their best straight line, as a fraction of the rod radius."""


@dataclass(frozen=True)
class PhantomDefinition:
    name: str
    material: str
    rod_diameter_mm: float
    densities_mg_cm3: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.material not in MATERIALS:
            raise ValueError(f"material must be one of {MATERIALS}, got {self.material!r}")
        if len(self.densities_mg_cm3) < 3:
            raise ValueError(f"a phantom needs at least 3 rods, got {len(self.densities_mg_cm3)}")
        if len(set(self.densities_mg_cm3)) != len(self.densities_mg_cm3):
            raise ValueError("rod densities must be distinct")
        if not self.rod_diameter_mm > 0:
            raise ValueError(f"rod_diameter_mm must be positive, got {self.rod_diameter_mm}")


def load_definition(path: Path | None = None) -> PhantomDefinition:
    p = Path(path) if path is not None else DEFAULT_DEFINITION
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return PhantomDefinition(
            name=str(data.get("name", p.stem)),
            material=str(data["material"]),
            rod_diameter_mm=float(data.get("rod_diameter_mm", 20.0)),
            densities_mg_cm3=tuple(float(r["density_mg_cm3"]) for r in data["rods"]),
        )
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"phantom definition {p}: {exc}") from exc


@dataclass(frozen=True)
class RodCalibration:
    definition: PhantomDefinition
    rods: tuple[tuple[float, float], ...]
    """(declared density, measured HU) per matched rod."""
    fit: LineFit
    evenly_spaced: bool = True
    """The matched rods sit at whole multiples of one pitch along their row (``_evenly_spaced``)."""

    def to_linear(self, kind: CalibrationKind, scanner: str = "", valid_until: str | None = None,
                  note: str = "") -> LinearCalibration:
        return LinearCalibration(
            kind=kind, slope=self.fit.slope, intercept=self.fit.intercept, scanner=scanner,
            source=(f"phantom {self.definition.name} ({self.definition.material}), {len(self.rods)} rods, "
                    f"R2 {self.fit.r2:.4f}{'; ' + note if note else ''}"),
            valid_until=valid_until,
        )


def find_rods(volume: CTVolume, definition: PhantomDefinition, min_posterior_of_lps_y: float | None = None
              ) -> list[FoundRod]:
    """Rods of this phantom's diameter seen on several slices (``phantom_rods``); ``min_posterior_of_lps_y``
    restricts the search to P >= that value."""
    return find_rod_candidates(volume, definition.rod_diameter_mm, min_posterior_of_lps_y)


def _collinear(rods: list[FoundRod], radius_mm: float) -> bool:
    """Rod centres on one straight row (QCT phantoms), at least MIN_PITCH_RADII radii apart."""
    pts = np.array([r.centre_lps_mm for r in rods])
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    if np.min(d + np.eye(len(pts)) * 1e9) < MIN_PITCH_RADII * radius_mm:
        return False
    centred = pts - pts.mean(axis=0)
    _, sv, _ = np.linalg.svd(centred, full_matrices=False)
    off_line = sv[-1] / np.sqrt(len(pts)) if len(sv) > 1 else 0.0
    return bool(off_line <= COLLINEAR_TOLERANCE * radius_mm)


AMBIGUOUS_SLOPE_RATIO = 1.25
"""Two pairings of the same rods whose slopes differ by more than this factor are different readings of the row."""
PLAUSIBLE_SLOPE_RATIO = 1.5
"""A pairing whose slope lies further than this factor from the reference line's at the scan's kVp is not a reading
of a K2HPO4 / hydroxyapatite row (scanners differ from the reference by tens of percent, not by a factor): BMD set
s11 case_27 (low dose, 2 mm) took four blobs of the patient's back in a row, slope 1.59 against 0.75, for the rods.
An ambiguous row is resolved to the pairing nearest the reference line, within this factor too."""


def match_rods(rods: list[FoundRod], definition: PhantomDefinition, require_all: bool = False,
               expected_slope: float | None = None) -> RodCalibration | None:
    """Best monotone pairing of found rods (by HU) with declared densities (see module doc).

    ``require_all``: at most one declared rod may be missing (synchronous search in a patient scan).
    ``expected_slope``: the reference line's slope at the scan's kVp (the calibration's own literature constants);
    a pairing further than ``PLAUSIBLE_SLOPE_RATIO`` from it does not count. With a rod missing, the row can fit
    two pairings equally well: 0/100/200 read as 0/50/100 (slope halved) and
    the reverse, since both sets are evenly spaced. An evenly spaced row is preferred to a larger uneven one: QCT
    phantoms space their rods evenly, and on a sharp low-dose scan a spot of block material near an unseen
    0 mg/cm3 rod fits the line within the noise (it reads the block, ~10 HU off the rod; the even row is completed
    at its pitch by ``calibrate_from_volume``). When the pairings that pass every check disagree on the slope
    by more than ``AMBIGUOUS_SLOPE_RATIO``, the one nearest ``expected_slope`` is taken when it lies within
    ``PLAUSIBLE_SLOPE_RATIO`` of it; otherwise (or without an expected slope) there is no calibration.
    """
    dens = sorted(definition.densities_mg_cm3)
    # no rod of the phantom reads below its 0 mg/cm3 rod: fat under the skin, as homogeneous as a rod once slices
    # are averaged and often seen on more slices than a phantom shorter than the scan (BMD set s13 case_15), is not
    # allowed to push the rods out of the persistent candidates
    rods = [r for r in rods if r.hu >= ZERO_DENSITY_HU_RANGE[0]]
    if rods:  # rods run the length of the phantom: keep the most persistent candidates
        most = max(r.n_slices for r in rods)
        rods = [r for r in rods if r.n_slices >= PERSISTENCE_FRACTION * most]
        rods = sorted(sorted(rods, key=lambda r: -r.n_slices)[:MAX_CANDIDATES], key=lambda r: r.hu)
    radius = definition.rod_diameter_mm / 2
    m = min(len(rods), len(dens))
    smallest = max(3, len(dens) - 1) if require_all else 3
    uneven: list[RodCalibration] = []
    for size in range(m, smallest - 1, -1):
        passing = [cal for rsub in itertools.combinations(range(len(rods)), size)
                   for dsub in itertools.combinations(range(len(dens)), size)
                   if (cal := _pairing([rods[i] for i in rsub], [dens[i] for i in dsub], definition, radius,
                                       expected_slope))]
        even = [c for c in passing if c.evenly_spaced]
        if even:  # the largest evenly spaced set of rods that fits
            return _resolve(even, expected_slope)
        uneven = uneven or passing
    # no evenly spaced set: the largest that fits (a rod's centre found off the pitch on a noisy scan)
    return _resolve(uneven, expected_slope) if uneven else None


def _pairing(rods: list[FoundRod], dd: list[float], definition: PhantomDefinition, radius: float,
             expected_slope: float | None = None) -> RodCalibration | None:
    hu = [r.hu for r in rods]
    try:
        fit = fit_line(hu, dd)
    except ValueError:
        return None
    if not (SLOPE_RANGE[0] <= fit.slope <= SLOPE_RANGE[1]) or fit.r2 < MIN_R2:
        return None
    if expected_slope is not None and abs(np.log(fit.slope / expected_slope)) > np.log(PLAUSIBLE_SLOPE_RATIO):
        return None  # a row of something else (fat and muscle of the back, read as rods): not this kVp's line
    if _slope_relative_se(rods, dd) > MAX_SLOPE_RELATIVE_SE:
        return None  # rods whose HU wanders along their length (tissue read as rods on single slices): no line
    zero_hu = -fit.intercept / fit.slope
    if not (ZERO_DENSITY_HU_RANGE[0] <= zero_hu <= ZERO_DENSITY_HU_RANGE[1]) or not _collinear(rods, radius):
        return None
    return RodCalibration(definition, tuple(zip(dd, hu, strict=True)), fit, _evenly_spaced(rods))


PITCH_TOLERANCE = 0.15
"""Rods count as evenly spaced when every gap along the row is a whole multiple of the smallest within this fraction
of it.  QCT phantoms space their rods evenly; a spot of block material between two rods (half a pitch from each)
passes the distance check of ``_collinear`` but not this one: the HA phantom of test_phantom_accuracy (seed 21) took
such a spot for its unseen 0 mg/cm3 rod, and the row completed at the wrong pitch read block material for it."""


def _evenly_spaced(rods: list[FoundRod]) -> bool:
    pts = np.array([r.centre_lps_mm for r in rods])
    centred = pts - pts.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    gaps = np.diff(np.sort(centred @ vt[0]))
    pitch = float(gaps.min())
    if pitch <= 0.0:
        return False
    ratios = gaps / pitch
    return bool(np.all(np.abs(ratios - np.round(ratios)) <= PITCH_TOLERANCE))


MAX_SLOPE_RELATIVE_SE = 0.1
"""A pairing counts only when its line is this precise: the standard error of the HU-per-mg/cm3 slope, from each
rod's HU uncertainty (``_rod_hu_se``), at most this fraction of the slope.  Real rods are seen on 3-9 of the sampled
slices with a spread of 1-27 HU even at low dose (BMD set s10, 30 cases, noise SD 10-221 HU); BMD set s11 case_27
(low dose, 2 mm) matched a row of back-muscle spots with spreads of 93, 14 and 67 HU (``python -m
service.offline.evaluation.phantom_lines SET --rods`` lists candidates with their spreads)."""
ROD_HU_SE_FLOOR = 1.0
"""HU: the least uncertainty of a rod's HU (a rod measured once, e.g. completed at the row's pitch)."""


def _rod_hu_se(rod: FoundRod) -> float:
    """Standard error of a rod's HU: the median of its slices' inner means (1.2533 x spread / sqrt(n))."""
    return max(1.2533 * rod.hu_spread / float(np.sqrt(max(rod.n_slices, 1))), ROD_HU_SE_FLOOR)


def _slope_relative_se(rods: list[FoundRod], dd: list[float]) -> float:
    """Relative standard error of the slope of HU on declared density (weighted by each rod's HU uncertainty;
    densities are exact)."""
    w = np.array([1.0 / _rod_hu_se(r) ** 2 for r in rods])
    d = np.asarray(dd, dtype=np.float64)
    h = np.array([r.hu for r in rods])
    d_mean, h_mean = float((w * d).sum() / w.sum()), float((w * h).sum() / w.sum())
    sxx = float((w * (d - d_mean) ** 2).sum())
    hu_per_mg = float((w * (d - d_mean) * (h - h_mean)).sum()) / sxx
    return float("inf") if hu_per_mg == 0.0 else float(np.sqrt(1.0 / sxx)) / abs(hu_per_mg)


def _resolve(passing: list[RodCalibration], expected_slope: float | None) -> RodCalibration | None:
    """The best-fitting pairing, unless the passing pairings read the row with different slopes (see match_rods)."""
    slopes = [c.fit.slope for c in passing]
    if max(slopes) / min(slopes) <= AMBIGUOUS_SLOPE_RATIO:
        return max(passing, key=lambda c: c.fit.r2)
    if expected_slope is None:
        logger.warning("phantom rows read with slopes %.3f..%.3f: ambiguous, not used", min(slopes), max(slopes))
        return None
    # every passing pairing already lies within PLAUSIBLE_SLOPE_RATIO of the reference (_pairing)
    nearest = min(passing, key=lambda c: (abs(np.log(c.fit.slope / expected_slope)), -c.fit.r2))
    logger.info("phantom row ambiguous (slopes %.3f..%.3f): the pairing nearest the reference slope %.3f taken",
                min(slopes), max(slopes), expected_slope)
    return nearest


def _complete_row(cal: RodCalibration, rods: list[FoundRod], volume: CTVolume) -> list[FoundRod]:
    """Rods of a matched row plus positions predicted at the row's pitch (a low-contrast rod, e.g. the 0 mg/cm3
    one in a water-equivalent block, may be missed by the filter), measured directly."""
    radius = cal.definition.rod_diameter_mm / 2
    by_hu = {round(h, 6): r for r in rods for _, h in cal.rods if abs(r.hu - h) < 1e-9}
    row = list(by_hu.values())
    pts = np.array([r.centre_lps_mm for r in row])
    centre = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - centre)
    direction = vt[0]
    t = np.sort((pts - centre) @ direction)
    pitch = float(np.min(np.diff(t)))
    if pitch < MIN_PITCH_RADII * radius:
        return row
    wanted = len(cal.definition.densities_mg_cm3) - len(row)
    positions = [t[0] - j * pitch for j in range(1, wanted + 1)] + [t[-1] + j * pitch for j in range(1, wanted + 1)]
    positions += [a + pitch for a, b in itertools.pairwise(t) if b - a > 1.5 * pitch]
    out = list(row)
    for pos in positions:
        lp = centre + pos * direction
        hu = rod_hu_at(volume, (float(lp[0]), float(lp[1])), radius)
        if hu is not None and hu > -300.0:
            out.append(FoundRod((float(lp[0]), float(lp[1])), hu, min(r.n_slices for r in row)))
    return out


def calibrate_from_volume(volume: CTVolume, definition: PhantomDefinition,
                          min_posterior_of_lps_y: float | None = None, require_all: bool = False
                          ) -> RodCalibration | None:
    """Find, match and fit; a partial row (>= 3 rods) is completed at its pitch and matched again."""
    radius = definition.rod_diameter_mm / 2
    rods = [_along_own_stretch(r, volume, radius) for r in find_rods(volume, definition, min_posterior_of_lps_y)]
    logger.info("phantom %s: %d rod candidates", definition.name, len(rods))
    if len(rods) < 3:
        return None
    expected = reference_line(volume.kvp)[0]
    cal = match_rods(rods, definition, expected_slope=expected)
    if cal is None:
        return None
    pool = rods
    if len(cal.rods) < len(definition.densities_mg_cm3):
        row = _complete_row(cal, rods, volume)
        completed = match_rods(row, definition, require_all, expected)
        if completed is not None and len(completed.rods) >= len(cal.rods):
            cal, pool = completed, row
    if require_all and len(cal.rods) < max(3, len(definition.densities_mg_cm3) - 1):
        return None
    return _measured_along(cal, pool, volume, expected)


def _along_own_stretch(rod: FoundRod, volume: CTVolume, radius_mm: float) -> FoundRod:
    """The candidate's HU read on every slice between the first and last sampled slice it was seen on (its spread
    and slice count, which the uniformity check reads, stay those of the sampled detections): the matched filter's
    few slices favour noise that raised the contrast, so the sampled median of a low-dose rod reads high and a row
    can fail to fit at all (BMD set s12 case_27, sharp kernel at low dose: 50 and 100 mg/cm3 rods sampled 20-25 HU
    high, the 200 rod right)."""
    if rod.slice_range is None or rod.slice_range[1] <= rod.slice_range[0]:
        return rod
    along = rod_along(volume, rod.centre_lps_mm, radius_mm, *rod.slice_range)
    return rod if along is None else dataclasses.replace(rod, hu=along[0])


def _measured_along(cal: RodCalibration, pool: list[FoundRod], volume: CTVolume, expected_slope: float
                    ) -> RodCalibration | None:
    """The matched rods measured on every slice of the row's stretch (``phantom_rods.rod_along``: from the median
    first to the median last slice they were seen on), then the same pairing fitted and checked again; None when
    the rods measured so no longer make a line that passes (``_pairing``)."""
    radius = cal.definition.rod_diameter_mm / 2
    matched = [next(r for r in pool if abs(r.hu - h) < 1e-9) for _, h in cal.rods]
    ranges = [r.slice_range for r in matched if r.slice_range is not None]
    if not ranges:
        return cal
    k0, k1 = int(np.median([a for a, _ in ranges])), int(np.median([b for _, b in ranges]))
    remeasured = []
    for r in matched:
        along = rod_along(volume, r.centre_lps_mm, radius, k0, max(k0, k1))
        if along is None:
            return cal
        remeasured.append(FoundRod(r.centre_lps_mm, along[0], along[2], along[1], (k0, k1)))
    refit = _pairing(remeasured, [d for d, _ in cal.rods], cal.definition, radius, expected_slope)
    if refit is None:
        logger.warning("phantom rods measured along their length no longer fit a line: not used")
    return refit


def synchronous_calibration(volume: CTVolume, segmentation: SpineSegmentation, definition_path: Path | None
                            ) -> LinearCalibration | None:
    """Calibration from rods under the patient in this scan, or None when no phantom is found."""
    if not segmentation.vertebrae:
        return None
    try:
        definition = load_definition(definition_path)
    except ValueError as exc:
        logger.warning("synchronous phantom search skipped: %s", exc)
        return None
    posterior = max(v.centroid_lps_mm[1] for v in segmentation.vertebrae) + SYNC_MIN_POSTERIOR_MM
    # all declared rods but at most one must be found: a patient scan without a phantom must never yield one
    cal = calibrate_from_volume(volume, definition, min_posterior_of_lps_y=posterior, require_all=True)
    if cal is None:
        return None
    return cal.to_linear(CalibrationKind.SYNCHRONOUS_PHANTOM, scanner=scanner_label(volume),
                         note="rods in the patient scan")
