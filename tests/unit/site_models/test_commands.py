"""The CLI functions end to end on a small synthetic cohort: cohort -> train -> evaluate -> activate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from service.offline.cohort import commands
from service.offline.cohort.evaluate import METRIC_FIELDS
from service.site_models.registry import load_active_predictor


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bmd-node")
    sub = p.add_subparsers(dest="command", required=True)
    commands.register_cohort(sub.add_parser("cohort").add_subparsers(dest="sub", required=True))
    commands.register_train(sub.add_parser("train").add_subparsers(dest="sub", required=True))
    commands.register_evaluate(sub.add_parser("evaluate").add_subparsers(dest="sub", required=True))
    commands.register(sub)
    return p


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return int(args.func(args))


@pytest.mark.slow
def test_cohort_train_evaluate_activate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cohort_dir, registry, report = tmp_path / "cohort", tmp_path / "registry", tmp_path / "report"
    assert _run("cohort", "synthetic", "--out", str(cohort_dir), "--patients", "160", "--seed", "3") == 0
    csv_path = cohort_dir / "cohort.csv"
    assert csv_path.is_file()
    assert _run("train", "models", "--cohort", str(csv_path), "--out", str(registry), "--version", "v1") == 0
    manifest = json.loads((registry / "manifest.json").read_text())
    names = {m["name"] for m in manifest["models"]}
    assert len(names) == 27  # 3 regions x (3 three-class + 3 binary classifiers + 3 regressors)
    assert manifest["active"] == []
    assert _run("evaluate", "models", "--cohort", str(csv_path), "--models", str(registry), "--out", str(report),
                "--bootstrap", "50") == 0
    doc = json.loads((report / "metrics.json").read_text())
    assert doc["synthetic"] is True
    entries = doc["models"]
    assert len(entries) == 27 * 3
    for e in entries:
        assert set(METRIC_FIELDS) <= set(e)
        assert e["region"] in ("chest", "abdomen", "chest_calibrated")
        if e["task"] == "classification":
            assert e["auc"] is not None and e["mae"] is None and e["ba_bias"] is None
        else:
            assert e["task"] == "regression" and e["auc"] is None and e["mae"] is not None
            assert e["ba_loa_low"] < e["ba_bias"] < e["ba_loa_high"]
    html = (report / "index.html").read_text()
    assert "SYNTHETIC DATA" in html
    for png in ("roc_3class_test.png", "roc_binary_test.png", "scatter_test.png", "bland_altman_test.png"):
        assert (report / png).stat().st_size > 1000
        assert png in html
    assert any(c["criterion"] for c in doc["acceptance"]["checks"])
    capsys.readouterr()
    assert _run("models", "list", "--registry", str(registry)) == 0
    assert "abdomen-bmd-sgd" in capsys.readouterr().out
    assert _run("models", "activate", "--registry", str(registry), "abdomen-binary-bdt") == 2
    assert _run("models", "activate", "--registry", str(registry), "abdomen-bmd-sgd") == 0
    assert load_active_predictor(registry) is not None
    assert _run("models", "deactivate", "--registry", str(registry), "--all") == 0
    assert load_active_predictor(registry) is None
