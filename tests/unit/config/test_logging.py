"""The log filter keeps patient identifiers out of every line."""

from __future__ import annotations

import io
import logging

import pydicom
import pytest
from pydicom.dataset import Dataset

from service.logging import REDACTED, LoggingSettings, PatientDataFilter, redact_text, setup_logging


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
