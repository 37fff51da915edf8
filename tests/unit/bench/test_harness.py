"""The benchmark harness: figure statistics, target checks, the report writers, the node config writer, and one
tiny real run of the ingest section (no timed assertions: only that the figures and files are consistent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.procs import write_toml
from bench.run import main, parse_args
from bench.stats import Figure, fmt, ratio_values
from service.config import load_config


def test_figure_statistics_over_repeats() -> None:
    f = Figure("x.y", "label", "s", (3.0, 1.0, 2.0, 10.0))
    assert (f.min, f.median, f.max, f.repeats) == (1.0, 2.5, 10.0, 4)
    again = Figure.from_dict(json.loads(json.dumps(f.to_dict())))
    assert again == f


def test_figure_needs_values_and_key() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Figure("k", "l", "s", ())
    with pytest.raises(ValueError, match="key"):
        Figure("", "l", "s", (1.0,))


def test_ratios_are_pairwise_per_repeat() -> None:
    assert ratio_values([2.0, 9.0], [1.0, 3.0]) == (2.0, 3.0)
    with pytest.raises(ValueError, match="as many"):
        ratio_values([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="> 0"):
        ratio_values([1.0], [0.0])


def test_fmt_keeps_three_significant_figures() -> None:
    assert [fmt(v) for v in (1234.5, 45.67, 3.14159, 0.01234, 0)] == ["1234", "45.7", "3.14", "0.012", "0"]


def _fig(key: str, values: tuple[float, ...], unit: str = "x") -> Figure:
    return Figure(key, key, unit, values)


def test_targets_met_not_met_and_unmeasured() -> None:
    figures = {
        "ingest.single.ratio_node_orthanc": _fig("ingest.single.ratio_node_orthanc", (1.2, 1.1, 1.3)),
        "ingest.concurrent4.ratio_node_orthanc": _fig("ingest.concurrent4.ratio_node_orthanc", (0.8, 0.9, 0.7)),
        "e2e.chest300.latency": _fig("e2e.chest300.latency", (50.0, 55.0, 61.0), "s"),
        "memory.worker_peak.chestabd600": _fig("memory.worker_peak.chestabd600", (3000.0,), "MiB"),
    }
    checks = {c.name: c for c in report.check_targets(figures, gpu_available=False)}
    assert checks["Ingest vs Orthanc 1.10, 1 association"].met is True
    assert "aim 1.5x not reached" in checks["Ingest vs Orthanc 1.10, 1 association"].note
    assert checks["Ingest vs Orthanc 1.10, 4 associations"].met is False
    assert checks["CPU end-to-end, 300-slice chest"].met is False  # one repeat over 60 s
    assert checks["GPU end-to-end, 300-slice chest"].met is None
    assert checks["GPU end-to-end, 300-slice chest"].note == "no GPU on this machine"
    assert checks["Worker peak memory, 600-slice study"].met is True  # 3000 MiB = 3.15 GB


def test_markdown_lists_every_figure_target_and_failed_section(tmp_path: Path) -> None:
    figure = Figure("stages.a.load_s", "a: load", "s", (1.0, 2.0, 4.0))
    document = {
        "date": "2026-01-01T00:00:00Z", "quick": False,
        "machine": {"cpu_model": "Test CPU", "cpu_cores": 2, "ram_gib": 8.0, "gpu": {"available": False}},
        "versions": {"python": "3.11", "orthanc": "1.10.1"},
        "targets": [t.to_dict() for t in report.check_targets({}, gpu_available=False)],
        "sections": {"stages": {"figures": [figure.to_dict()]}, "e2e": {"figures": [], "error": "boom"}},
        "notes": ["a caveat"],
    }
    text = report.write_markdown(tmp_path / "PERF.md", document).read_text()
    assert "| a: load | s | 1.00 | 2.00 | 4.00 | 3 |  |" in text
    assert "Test CPU" in text and "1.10.1" in text
    assert "**Not measured: boom**" in text
    assert "* a caveat" in text
    assert text.count("n/a") >= len(document["targets"])
    saved = json.loads(report.write_results(tmp_path / "r.json", document).read_text())
    assert saved["sections"]["stages"]["figures"][0]["median"] == 2.0


def test_written_node_config_is_read_back_by_the_node(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "n.toml", {"node": {"port": 0, "storage_dir": str(tmp_path / 'st'),
                                                      "series_stable_seconds": 1.5},
                                             "worker": {"processes": 2}},
                      [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                        "send_results": False}])
    config = load_config(path, env={})
    assert config.node.series_stable_seconds == 1.5 and config.worker.processes == 2
    assert config.node.storage_dir == tmp_path / "st"
    assert [p.name for p in config.peers] == ["pacs"] and not config.result_destinations


def test_unknown_section_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--only", "ingest,warp"])
    assert parse_args(["--only", "e2e, ingest"]).sections == ["ingest", "e2e"]


@pytest.mark.slow
def test_quick_ingest_run_writes_consistent_figures(tmp_path: Path) -> None:
    results, doc = tmp_path / "results.json", tmp_path / "PERFORMANCE.md"
    code = main(["--quick", "--only", "ingest", "--work-dir", str(tmp_path / "work"), "--results", str(results),
                 "--doc", str(doc)])
    document = json.loads(results.read_text())
    assert code == 0, document["sections"]["ingest"].get("error")
    figures = {f["key"]: f for f in document["sections"]["ingest"]["figures"]}
    for target in ("bmd-node", "storescp", "orthanc"):
        for tag in ("single", "concurrent2"):
            f = figures[f"ingest.{tag}.{target}"]
            assert f["repeats"] == 1 and f["min"] <= f["median"] <= f["max"] and f["median"] > 0
            assert figures[f"memory.scp_peak.{tag}.{target}"]["median"] > 0
    ratio = figures["ingest.single.ratio_node_orthanc"]["median"]
    expected = figures["ingest.single.bmd-node"]["median"] / figures["ingest.single.orthanc"]["median"]
    assert ratio == pytest.approx(expected)
    assert document["versions"]["python"] and document["machine"]["cpu_cores"]
    assert document["targets"][0]["name"] == "Ingest vs Orthanc 1.10, 1 association"
    text = doc.read_text()
    assert "Quick smoke run" in text and "bmd-node / Orthanc, 1 association(s)" in text


def test_render_rewrites_the_markdown_from_results(tmp_path: Path) -> None:
    figure = Figure("ingest.single.bmd-node", "bmd-node, 1 association(s)", "images/s", (80.0, 90.0))
    document = {"date": "2026-01-01T00:00:00Z", "quick": False, "machine": {"gpu": {"available": False}},
                "versions": {}, "targets": [], "sections": {"ingest": {"figures": [figure.to_dict()]}}}
    results = report.write_results(tmp_path / "results.json", document)
    assert main(["--render", str(results), "--doc", str(tmp_path / "P.md")]) == 0
    assert "| bmd-node, 1 association(s) | images/s | 80.0 | 85.0 | 90.0 | 2 |  |" in (tmp_path / "P.md").read_text()
