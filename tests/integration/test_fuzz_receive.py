"""Seeded fuzz of the C-STORE path (issue 19): 500 mutated CT files over 5 associations to the real SCP.

0 crashes (no association aborted, every C-STORE answered), every SOP Instance UID sent either stored (a file in
the spool) or recorded with a reason, the node still serving afterwards, and the known patient values of the files
in no log record of the node's code. Long runs: ``python -m bench.fuzz --files 10000``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bench.fuzz import KNOWN_PATIENT, MUTATIONS, run_fuzz

pytestmark = pytest.mark.integration


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the mutated values; the node logs its own reasons
def test_500_mutated_files_no_crash_every_file_accounted_for(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service")
    report = run_fuzz(tmp_path, files=500, associations=5, seed=19)
    assert report.crashes == 0
    assert report.unaccounted == 0
    assert report.serving_after
    assert sum(report.statuses.values()) == 500
    assert set(report.mutations) == set(MUTATIONS)  # every kind of mutation was exercised
    assert report.recorded.get("stored", 0) > 0 and report.recorded.get("rejected", 0) > 0
    assert report.quarantine_files == report.recorded["rejected"]
    node_text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("service"))
    for value in KNOWN_PATIENT.values():
        assert value not in node_text and value.split("^")[0] not in node_text
