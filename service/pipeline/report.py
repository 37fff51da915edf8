"""Plain-text rendering of a result.json document (CLI `analyze`, `jobs show`, the demo)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def vertebra_table(document: dict[str, Any]) -> str:
    rows = [("level", "HU mean", "BMD mg/cm3", "evaluable", "excluded because", "centroid LPS mm")]
    for v in document.get("vertebrae", []):
        centroid = ", ".join(f"{c:.0f}" for c in v.get("centroid_lps_mm", []))
        rows.append((v["level"], _fmt(v.get("trabecular_hu_mean")), _fmt(v.get("bmd_mg_cm3")),
                     "yes" if v.get("evaluable") else "no", v.get("exclusion_reason") or "", f"({centroid})"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    summary = document.get("summary", {})
    lines.append("")
    lines.append(f"summary: BMD {_fmt(summary.get('bmd_mg_cm3'))} mg/cm3 from "
                 f"{', '.join(summary.get('levels_used', [])) or '-'} -> {summary.get('category', '?')}")
    if summary.get("method"):
        lines.append(f"method: {summary['method']}")
    return "\n".join(lines)
