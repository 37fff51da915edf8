"""The memory section's arithmetic: the line fit, its figures and notes, the issue-17 targets, and --merge."""

from __future__ import annotations

from typing import Any

import pytest

from bench import memory as bench_memory
from bench import report
from bench.run import merge_sections
from bench.stats import Figure

MIB = 1024 * 1024


def _figure(key: str, label: str, unit: str, values: list[float], note: str = "") -> dict[str, Any]:
    return Figure(key, label, unit, tuple(values), note).to_dict()


def test_fit_recovers_a_known_line() -> None:
    voxels = [512 * 512 * n for n in (300, 600, 1500)]
    peaks = [500.0 + 8.0 * v / MIB for v in voxels]  # 500 MiB + 8 B per voxel
    fit = bench_memory.fit_line(voxels, peaks)
    assert fit.base_mib == pytest.approx(500.0)
    assert fit.bytes_per_voxel == pytest.approx(8.0)
    assert fit.peak_mib(512 * 512 * 1000) == pytest.approx(500.0 + 8000.0 * 512 * 512 / MIB)


def test_fit_needs_two_sizes() -> None:
    with pytest.raises(ValueError, match="voxels must hold at least two distinct sizes"):
        bench_memory.fit_line([10, 10], [1.0, 2.0])
    with pytest.raises(ValueError, match="pair up"):
        bench_memory.fit_line([10, 20], [1.0])


def _run(name: str, slices: int, peak: float, estimate: float) -> bench_memory.MemoryRun:
    return bench_memory.MemoryRun(name, 512, 512, slices, peak, estimate, 10.0, 11.0, {"load_s": 900.0})


def test_figures_flag_an_estimate_below_the_measured_peak() -> None:
    runs = [_run("small", 300, 1200.0, 1300.0), _run("thin1500", 1500, 4100.0, 3850.0)]
    figures, notes = bench_memory.memory_figures(runs, _figure)
    keys = {f["key"] for f in figures}
    assert {"memory.worker_peak.thin1500", "memory.estimate.thin1500", "memory.fit.base_mib",
            "memory.fit.bytes_per_voxel", "stages.thin1500.pipeline"} <= keys
    assert any("thin1500: the admission estimate (3850 MiB) is below the measured peak (4100 MiB)" in n
               for n in notes)
    assert not any(n.startswith("small: the admission estimate") for n in notes)


def test_issue17_targets() -> None:
    def figs(peak: float, estimate: float) -> dict[str, Figure]:
        return {"memory.worker_peak.thin1500": Figure("memory.worker_peak.thin1500", "p", "MiB", (peak,)),
                "memory.estimate.thin1500": Figure("memory.estimate.thin1500", "e", "MiB", (estimate,))}

    met = {c.name: c for c in report.memory_targets(figs(3484.0, 3850.0))}
    assert met["Worker peak memory, 0.5 mm 1500 x 512 x 512 series"].met is True
    assert met["Admission estimate >= measured worker peak"].met is True
    over = {c.name: c for c in report.memory_targets(figs(4100.0, 3850.0))}
    assert over["Worker peak memory, 0.5 mm 1500 x 512 x 512 series"].met is False  # 4100 MiB > 4096 MiB
    assert over["Admission estimate >= measured worker peak"].met is False
    unmeasured = report.memory_targets({})
    assert [c.met for c in unmeasured] == [None]


def test_merge_keeps_unmeasured_sections_and_rechecks_targets() -> None:
    old_e2e = {"figures": [_figure("e2e.chest300.latency", "l", "s", [20.0, 21.0, 22.0])], "notes": []}
    earlier = {"date": "2026-01-01T00:00:00Z", "versions": {"git_commit": "abc"},
               "sections": {"e2e": old_e2e, "memory": {"figures": [], "notes": ["old"]}}}
    document: dict[str, Any] = {
        "machine": {"gpu": {"available": False}}, "notes": [],
        "sections": {"memory": {"figures": [_figure("memory.worker_peak.thin1500", "p", "MiB", [3000.0])]}},
    }
    merge_sections(document, earlier)
    assert list(document["sections"]) == ["e2e", "memory"]  # SECTIONS order
    assert document["sections"]["memory"]["figures"][0]["key"] == "memory.worker_peak.thin1500"  # new wins
    assert "kept by --merge" in document["sections"]["e2e"]["notes"][-1]
    targets = {t["name"]: t for t in document["targets"]}
    assert targets["CPU end-to-end, 300-slice chest"]["met"] is True  # from the kept e2e figures
    assert targets["Worker peak memory, 0.5 mm 1500 x 512 x 512 series"]["met"] is True
