"""Which instances of a checked series form the one stack the node loads (issue 17: series geometry quirks).

``choose_stack`` sees the geometry of every instance (``Planes``) and returns the instances to load, ordered along
the slice normal, or the reasons there is no usable stack:

* re-sent copies (same position, identical pixel data, other SOP Instance UIDs) -> one instance per position kept;
* two acquisitions in one series (duplicate or overlapping positions) -> split by AcquisitionNumber, else by
  acquisition/content time clusters, else by repeated position; each group that forms a usable stack is a
  candidate and ``service.series.selection`` picks one;
* missing slices (a gap over 1.5x the median spacing) -> the longest contiguous part when it alone is usable;
* gantry tilt -> rejected (tilted series are not resampled).

Every decision that drops instances is a warning naming what was dropped; the checks look at headers (pixel data
only to compare instances at the same position, when the datasets carry it).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pydicom

from service.series.multiframe import frame_number
from service.series.selection import candidate_from_header, select_series

SPACING_TOLERANCE_MM = 0.05
SPACING_TOLERANCE_FRACTION = 0.05
"""Slice spacing is regular when every gap is within max(0.05 mm, 5 %) of the median gap."""
MISSING_SLICE_GAP_FACTOR = 1.5
"""A gap larger than this many median spacings is missing slices: the stack is split there."""
MAX_TILT_DEGREES = 0.5
"""Angle between the slice normal and the line through the slice positions above which the series is tilted."""
SAME_POSITION_MM = 1e-3
"""Slices closer than this along the normal are at the same position."""
ACQUISITION_TIME_GAP_S = 15.0
"""A pause longer than this between instance times separates two acquisitions (a helical run is seconds long; the
portal-venous phase follows the arterial one by ~30-40 s)."""
_TIME_KEYWORDS = ("AcquisitionTime", "ContentTime")


@dataclass(frozen=True)
class StackLimits:
    min_slices: int
    max_slice_thickness_mm: float

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {self.min_slices}")
        if self.max_slice_thickness_mm <= 0:
            raise ValueError(f"max_slice_thickness_mm must be > 0, got {self.max_slice_thickness_mm}")


@dataclass(frozen=True, eq=False)
class Planes:
    normal: npt.NDArray[np.float64]
    """Unit slice normal of the (first) orientation."""
    positions: npt.NDArray[np.float64]
    """(n, 3) ImagePositionPatient of each header, in the order given."""

    def __post_init__(self) -> None:
        if self.normal.shape != (3,) or self.positions.ndim != 2 or self.positions.shape[1] != 3:
            raise ValueError(f"normal must be (3,) and positions (n, 3), got {self.normal.shape} and "
                             f"{self.positions.shape}")

    @property
    def along_normal_mm(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.positions @ self.normal, dtype=np.float64)


@dataclass(frozen=True)
class Stack:
    indices: tuple[int, ...]
    """Indices into the headers, sorted along the slice normal: the slices to load (all considered when rejected)."""
    spacing_mm: float | None = None
    thickness_mm: float | None = None
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.indices)) != len(self.indices):
            raise ValueError("stack indices must be unique")
        if self.spacing_mm is not None and self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")

    @property
    def ok(self) -> bool:
        return not self.reasons and bool(self.indices)


def choose_stack(headers: Sequence[pydicom.Dataset], planes: Planes, limits: StackLimits) -> Stack:
    """The stack to load: re-sent copies dropped, one acquisition chosen, the longest contiguous part."""
    along = planes.along_normal_mm
    kept, copy_warnings = drop_resent_copies(headers, instance_order(headers), along)
    failures: list[str] = []
    for how, groups in acquisition_groupings(headers, kept, along):
        stacks = [evaluate_stack(headers, group, planes, limits) for group in groups]
        usable = [(k, s) for k, s in enumerate(stacks) if s.ok]
        if usable:
            chosen, warning = _choose_acquisition(headers, how, groups, usable)
            return replace(chosen, warnings=(*copy_warnings, warning, *chosen.warnings))
        largest = max(stacks, key=lambda s: len(s.indices))
        failures.append(f"split by {how} into {len(groups)} groups ({', '.join(str(len(g)) for g in groups)} "
                        f"instances), none usable (largest: {(*largest.reasons, 'no slices')[0]})")
    distinct = len(_clusters(np.sort(along[list(kept)]), SAME_POSITION_MM))
    if failures and distinct < len(kept):
        return Stack(indices=tuple(sorted(kept, key=lambda i: along[i])),
                     reasons=(f"duplicate slice positions ({len(kept)} instances at {distinct} positions): "
                              + "; ".join(failures),))
    stack = evaluate_stack(headers, kept, planes, limits)  # overlapping groups that fail alone: as one stack
    return replace(stack, warnings=(*copy_warnings, *stack.warnings))


def instance_order(headers: Sequence[pydicom.Dataset]) -> list[int]:
    """Indices by InstanceNumber (the order the scanner made them), then as given."""
    def key(i: int) -> tuple[int, int]:
        try:
            return int(headers[i].get("InstanceNumber", None)), i
        except (TypeError, ValueError):
            return 2**31, i
    return sorted(range(len(headers)), key=key)


def _clusters(sorted_values: npt.NDArray[np.float64], gap: float) -> list[tuple[int, int]]:
    """(start, stop) of the runs of sorted values whose neighbours are at most ``gap`` apart."""
    if len(sorted_values) == 0:
        return []
    cuts = [k + 1 for k, d in enumerate(np.diff(sorted_values)) if d > gap]
    bounds = [0, *cuts, len(sorted_values)]
    return list(itertools.pairwise(bounds))


def _same_instance(a: pydicom.Dataset, b: pydicom.Dataset) -> tuple[bool, bool]:
    """(a is a copy of b, pixel data compared). Pixel data decides when both datasets carry it; headers only
    (InstanceNumber, AcquisitionNumber, times) otherwise: the loader checks again with the pixel data. Two frames
    of one multi-frame instance are never copies; frames of two instances are compared by header (and frame
    number)."""
    if frame_number(a) is not None and frame_number(b) is not None \
            and str(a.get("SOPInstanceUID", "")) == str(b.get("SOPInstanceUID", "")):
        return False, False
    keys = ("RescaleSlope", "RescaleIntercept", "Rows", "Columns")
    if any(str(a.get(k, "")) != str(b.get(k, "")) for k in keys):
        return False, False
    if "PixelData" in a and "PixelData" in b:
        return bytes(a.PixelData) == bytes(b.PixelData), True
    keys = ("InstanceNumber", "AcquisitionNumber", *_TIME_KEYWORDS)
    same = all(str(a.get(k, "")) == str(b.get(k, "")) for k in keys) and frame_number(a) == frame_number(b)
    return same, False


def drop_resent_copies(headers: Sequence[pydicom.Dataset], indices: Sequence[int],
                       along: npt.NDArray[np.float64]) -> tuple[list[int], tuple[str, ...]]:
    """One instance per position where the others are copies of it (other SOP Instance UIDs); with a warning."""
    rank = {i: k for k, i in enumerate(indices)}
    by_position = sorted(indices, key=lambda i: along[i])
    dropped: set[int] = set()
    compared_pixels = False
    for start, stop in _clusters(along[by_position], SAME_POSITION_MM):
        members = sorted(by_position[start:stop], key=rank.__getitem__)
        for k, i in enumerate(members):
            for j in members[:k]:
                if j in dropped:
                    continue
                same, pixels = _same_instance(headers[i], headers[j])
                compared_pixels |= pixels
                if same:
                    dropped.add(i)
                    break
    if not dropped:
        return list(indices), ()
    basis = "identical pixel data" if compared_pixels else "identical headers; pixel data not read"
    warning = (f"{len(dropped)} re-sent copies dropped (same position, {basis}, other SOP Instance UIDs): "
               f"one instance kept per position")
    return [i for i in indices if i not in dropped], (warning,)


def _time_seconds(value: object) -> float | None:
    text = str(value or "").replace(":", "").strip()
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours, minutes = int(text[:2]), int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def _by_acquisition_number(headers: Sequence[pydicom.Dataset], indices: Sequence[int]) -> list[list[int]]:
    values = [str(headers[i].get("AcquisitionNumber", "") or "").strip() for i in indices]
    if "" in values or len(set(values)) < 2:
        return []
    order = list(dict.fromkeys(values))
    return [[i for i, v in zip(indices, values, strict=True) if v == value] for value in order]


def _by_time(headers: Sequence[pydicom.Dataset], indices: Sequence[int]) -> tuple[str, list[list[int]]]:
    for keyword in _TIME_KEYWORDS:
        times = [_time_seconds(headers[i].get(keyword, None)) for i in indices]
        if any(t is None for t in times):
            continue
        seconds = np.asarray(times, dtype=np.float64)
        by_time = np.argsort(seconds, kind="stable")
        groups = [[indices[int(k)] for k in by_time[start:stop]]
                  for start, stop in _clusters(seconds[by_time], ACQUISITION_TIME_GAP_S)]
        return keyword, groups
    return "", []


def _by_repeated_position(indices: Sequence[int], along: npt.NDArray[np.float64]) -> list[list[int]]:
    """In instance order, each instance joins the first group without a slice at its position."""
    groups: list[list[int]] = []
    for i in indices:
        for group in groups:
            if np.all(np.abs(along[group] - along[i]) > SAME_POSITION_MM):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _overlap(groups: Sequence[Sequence[int]], along: npt.NDArray[np.float64]) -> bool:
    """Do two groups of several instances cover a common range along the normal?"""
    extents = sorted((float(along[g].min()), float(along[g].max())) for g in groups if len(g) > 1)
    return any(later[0] < earlier[1] - SAME_POSITION_MM for earlier, later in itertools.pairwise(extents))


def acquisition_groupings(headers: Sequence[pydicom.Dataset], indices: Sequence[int],
                          along: npt.NDArray[np.float64]) -> Iterator[tuple[str, list[list[int]]]]:
    """The ways to split a series holding more than one acquisition, most trusted first; nothing when the
    positions neither repeat nor overlap (one acquisition, or several after one another along the body)."""
    duplicates = bool(np.any(np.diff(np.sort(along[list(indices)])) <= SAME_POSITION_MM))
    by_number = _by_acquisition_number(headers, indices)
    if len(by_number) > 1 and (duplicates or _overlap(by_number, along)):
        yield "AcquisitionNumber", by_number
    keyword, by_time = _by_time(headers, indices)
    if len(by_time) > 1 and (duplicates or _overlap(by_time, along)):
        yield keyword, by_time
    if duplicates:
        yield "repeated position", _by_repeated_position(indices, along)


def _choose_acquisition(headers: Sequence[pydicom.Dataset], how: str, groups: Sequence[Sequence[int]],
                        usable: Sequence[tuple[int, Stack]]) -> tuple[Stack, str]:
    """The usable group the selection rules prefer (ties: the earlier group), with the warning naming the split."""
    candidates = [candidate_from_header(headers[s.indices[0]], len(s.indices), s.thickness_mm) for _, s in usable]
    selection = select_series(candidates)
    chosen = next(k for k, c in enumerate(candidates) if c is selection.selected)
    group_number, stack = usable[chosen]
    label = (f"{how} {headers[groups[group_number][0]].get(how, '')}".strip()
             if how != "repeated position" else f"group {group_number + 1} (instance order)")
    sizes = ", ".join(str(len(g)) for g in groups)
    return stack, (f"{len(groups)} acquisitions in one series, split by {how} ({sizes} instances; "
                   f"{len(usable)} usable); used {label}: {candidates[chosen].describe()}")


def evaluate_stack(headers: Sequence[pydicom.Dataset], indices: Sequence[int], planes: Planes,
                   limits: StackLimits) -> Stack:
    """One stack: no duplicate positions, the longest contiguous part, regular spacing, enough slices, no tilt,
    thin enough."""
    along = planes.along_normal_mm
    ordered = sorted(indices, key=lambda i: (along[i], i))
    gaps = np.diff(along[ordered])
    if np.any(gaps <= SAME_POSITION_MM):
        return Stack(indices=tuple(ordered), reasons=("duplicate slice positions",))
    reasons: list[str] = []
    warnings: list[str] = []
    spacing: float | None = None
    if len(ordered) >= 2:
        ordered, run_reasons, warnings = _longest_run(ordered, along, float(np.median(gaps)), limits.min_slices)
        reasons += run_reasons  # names the slice count itself
        if not run_reasons:
            spacing, regular_reasons = _regular_spacing(np.diff(along[ordered]))
            reasons += regular_reasons + _min_slices_reasons(len(ordered), limits.min_slices)
        reasons += _tilt_reasons(planes.positions[ordered], planes.normal)
    else:
        reasons += _min_slices_reasons(len(ordered), limits.min_slices)
    thickness, thickness_reasons, thickness_warnings = slice_thickness(
        [headers[i] for i in ordered], spacing, limits.max_slice_thickness_mm)
    return Stack(indices=tuple(ordered), spacing_mm=spacing, thickness_mm=thickness,
                 reasons=(*reasons, *thickness_reasons), warnings=(*warnings, *thickness_warnings))


def _longest_run(ordered: list[int], along: npt.NDArray[np.float64], spacing: float,
                 min_slices: int) -> tuple[list[int], list[str], list[str]]:
    """Split at gaps over MISSING_SLICE_GAP_FACTOR median spacings; the longest part if it alone is long enough."""
    positions = along[ordered]
    gaps = np.diff(positions)
    cut_after = [k for k, gap in enumerate(gaps) if gap > MISSING_SLICE_GAP_FACTOR * spacing]
    if not cut_after:
        return ordered, [], []
    described = ", ".join(f"gap of {gaps[k]:.2f} mm at {positions[k]:.1f} to {positions[k + 1]:.1f} mm"
                          for k in cut_after)
    bounds = [0, *(k + 1 for k in cut_after), len(ordered)]
    runs = [ordered[a:b] for a, b in itertools.pairwise(bounds)]
    longest = max(runs, key=len)  # ties: the first along the normal
    if len(longest) < min_slices:
        return ordered, [f"irregular slice spacing (missing slices): {described} along the slice normal; the longest "
                         f"contiguous part has {len(longest)} slices (at least {min_slices} needed)"], []
    return longest, [], [f"{described} along the slice normal (missing slices); used the longest contiguous part "
                         f"({len(longest)} of {len(ordered)} slices)"]


def _min_slices_reasons(count: int, min_slices: int) -> list[str]:
    return [f"only {count} slices (at least {min_slices} needed)"] if count < min_slices else []


def _regular_spacing(gaps: npt.NDArray[np.float64]) -> tuple[float | None, list[str]]:
    """The median spacing of the part kept, and the reason when the gaps differ beyond tolerance."""
    if len(gaps) == 0:
        return None, []
    median = float(np.median(gaps))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * median)
    if np.max(np.abs(gaps - median)) > tolerance:
        return median, [f"irregular slice spacing: gaps from {gaps.min():.2f} to {gaps.max():.2f} mm "
                        f"(missing slices?)"]
    return median, []


def _tilt_reasons(positions: npt.NDArray[np.float64], normal: npt.NDArray[np.float64]) -> list[str]:
    line = positions[-1] - positions[0]
    length = float(np.linalg.norm(line))
    if length <= 0:
        return []
    cos_angle = abs(float(line @ normal)) / length
    tilt_deg = float(np.degrees(np.arccos(min(1.0, cos_angle))))
    if tilt_deg > MAX_TILT_DEGREES:
        return [f"gantry tilt of {tilt_deg:.1f} degrees (more than {MAX_TILT_DEGREES} degrees): tilted series are "
                f"not resampled"]
    return []


def slice_thickness(headers: Sequence[pydicom.Dataset], spacing: float | None,
                    max_slice_thickness_mm: float) -> tuple[float | None, list[str], list[str]]:
    """Slice thickness (median SliceThickness, else the spacing) with its reasons and warnings."""
    reasons: list[str] = []
    warnings: list[str] = []
    thickness_values = [float(getattr(h, "SliceThickness", 0) or 0) for h in headers]
    thickness = float(np.median(thickness_values)) if any(thickness_values) else None
    if thickness is None:
        thickness = spacing
        if thickness is not None:
            warnings.append("SliceThickness missing; using slice spacing")
    if thickness is not None and thickness > max_slice_thickness_mm + 1e-6:
        reasons.append(f"slice thickness {thickness:.1f} mm exceeds {max_slice_thickness_mm:.1f} mm")
    if spacing is not None and thickness is not None and spacing > thickness * 2.0 + 0.01:
        warnings.append(f"slice spacing {spacing:.2f} mm is more than twice the thickness (gaps between slices)")
    return thickness, reasons, warnings
