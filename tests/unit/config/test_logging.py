"""The log filter keeps patient identifiers out of every line."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pydicom
import pytest
from pydicom.dataset import Dataset

from service.logging import (
    REDACTED,
    LineCapFilter,
    LoggingSettings,
    PatientDataFilter,
    RepeatLimitFilter,
    redact_text,
    setup_logging,
)


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PatientDataFilter())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.phi")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "DOE^JANE^Q"
    ds.PatientID = "MRN-0042"
    ds.PatientBirthDate = "19451231"
    ds.AccessionNumber = "ACC777"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    return ds


@pytest.mark.parametrize("message", [
    "PatientName=DOE^JANE PatientID=MRN-0042 birth: x",
    "received PatientID: 'MRN-0042', PatientBirthDate: 19451231 for series 1.2.3",
    "name DOE^JANE^Q in header",
    "patient_id=MRN-0042 accession_number=ACC777",
])
def test_redact_text(message: str) -> None:
    out = redact_text(message)
    for secret in ("DOE", "JANE", "MRN-0042", "19451231", "ACC777"):
        assert secret not in out, out
    assert REDACTED in out


def test_uids_and_ae_titles_survive() -> None:
    text = "series 1.2.826.0.1.3680043.8.498.1 from ORTHANC at 127.0.0.1: 300 instances"
    assert redact_text(text) == text


def test_dataset_argument_and_dump(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    ds = _dataset()
    logger.info("got %s", ds)
    logger.info("dump:\n" + str(ds))
    logger.warning("name %s id %s", ds.PatientName, "x")
    try:
        raise ValueError(f"bad header for {ds.PatientName} PatientID={ds.PatientID}")
    except ValueError:
        logger.exception("failed")
    out = stream.getvalue()
    for secret in ("DOE", "JANE", "MRN-0042", "19451231", "ACC777"):
        assert secret not in out, out
    assert "1.2.826.0.1.3680043.8.498.1" in out  # the UID is kept


def test_setup_logging_installs_filter_on_root(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LoggingSettings(level="INFO"))
    try:
        logging.getLogger("service.anything").warning("PatientName=%s", pydicom.valuerep.PersonName("DOE^JOHN"))
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_bmd_node", False):
                root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "DOE" not in err and REDACTED in err


def _handler_with_node_filters(settings: LoggingSettings, clock: list[float]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RepeatLimitFilter(settings.repeat_limit_per_minute, clock=lambda: clock[0]))
    handler.addFilter(PatientDataFilter())
    handler.addFilter(LineCapFilter(settings.max_line_chars))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.flood")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


def test_repeated_lines_are_held_back_and_counted() -> None:
    clock = [0.0]
    logger, stream = _handler_with_node_filters(LoggingSettings(repeat_limit_per_minute=5), clock)
    for i in range(100):  # one kind: only the number differs
        logger.warning("rejected instance %d: bad header", i)
    logger.warning("another kind of line")
    assert stream.getvalue().count("rejected instance") == 5
    assert "another kind of line" in stream.getvalue()
    clock[0] = 61.0
    logger.warning("rejected instance %d: bad header", 101)
    assert "[95 similar lines held back in the last minute] rejected instance 101" in stream.getvalue()


def test_long_lines_are_cut() -> None:
    logger, stream = _handler_with_node_filters(LoggingSettings(max_line_chars=300), [0.0])
    logger.warning("value %s", "x" * 10_000)
    try:
        raise ValueError("bad header") from KeyError("y" * 5000)  # a long chained traceback, a short last line
    except ValueError:
        logger.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines[0]) < 400 and "characters cut" in lines[0]
    assert len(stream.getvalue()) < 1500
    assert "ValueError: bad header" in stream.getvalue()  # the end of the traceback is kept


def test_python_warnings_go_through_the_redaction_filter() -> None:
    """In a fresh interpreter (pytest's own warning capture would take the warning first): a warning carrying a
    patient's name and ID reaches stderr through the node's handler, redacted."""
    code = ("import warnings; from service.logging import setup_logging; setup_logging(); "
            "warnings.warn(\"Invalid value for VR PN: 'DOE^JANE' in PatientID: MRN-0042\", UserWarning, stacklevel=1)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "UserWarning" in done.stderr and "py.warnings" in done.stderr
    assert "DOE" not in done.stderr and "MRN-0042" not in done.stderr
