"""Where a job's step durations travel: the screening recipe writes them into its result document, /metrics reads
them back (bmd_node_stage_duration_seconds{stage=...}). A module of its own so that the web process reads the names
without importing the recipe (scipy, highdicom, the calibration stack).

    result.json / jobs.result_json:  {..., "extra": {"timings_s": {"load": 1.2, "segment": 41.0, ...}}}
"""

from __future__ import annotations

EXTRA_KEY = "extra"
"""ScreeningResult.extra, written by ScreeningResult.to_json_dict under this key."""
TIMINGS_KEY = "timings_s"
"""Key, in the document's "extra", of the seconds each step of the screening recipe took."""
SCREENING_STEPS = ("load", "segment", "assess", "objects")
"""load: read + decode the series; segment: segmentation and labelling; assess: measurement, calibration,
classification; objects: SEG, SR and key image built and encoded."""
