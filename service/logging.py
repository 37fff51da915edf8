"""Logging set-up and the filter that keeps patient identifiers out of every log line.

``PatientDataFilter`` (installed on the root handlers by ``setup_logging``) rewrites each record before it is
formatted:
- arguments that are pydicom Datasets, DataElements or PersonNames are replaced by a placeholder;
- ``PatientName=...``, ``PatientID: ...``, ``PatientBirthDate ...`` style fragments and pydicom element dumps of
  group 0010 (``(0010,0010) Patient's Name  PN: 'DOE^JOHN'``) keep their key and lose the value;
- DICOM person names (``FAMILY^GIVEN``) are replaced.
UIDs, AE titles, counts and file names are kept: they are needed to operate the node and identify no patient.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any

REDACTED = "<redacted>"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LoggingSettings:
    """The [logging] section."""

    level: str = "INFO"
    json: bool = False

    def __post_init__(self) -> None:
        if self.level.upper() not in LOG_LEVELS:
            raise ValueError(f"logging.level: must be one of {LOG_LEVELS}, got {self.level!r}")

# DICOM attribute keywords (and common spellings) whose values identify a patient.
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs", "OtherPatientNames",
    "OtherPatientIDsSequence", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "MedicalRecordLocator", "IssuerOfPatientID", "PatientBirthName", "AccessionNumber", "ReferringPhysicianName",
    "InstitutionAddress", "patient_name", "patient_id", "birth_date", "accession_number",
)
_KEYWORD_RE = re.compile(
    r"(?P<key>\b(?:" + "|".join(re.escape(k) for k in PATIENT_KEYWORDS) + r")\b\s*[=:]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;)\]}]+)",
    re.IGNORECASE,
)
# pydicom dataset dumps: "(0010,0010) Patient's Name   PN: 'DOE^JOHN'" and "(0008,0050) Accession Number SH: '1'"
_ELEMENT_DUMP_RE = re.compile(r"(?P<key>\((?:0010|0008),\s?(?:[0-9A-Fa-f]{4})\)[^:\n]*?\b[A-Z]{2}:\s*)"
                              r"(?P<value>[^\n]*)")
_PHI_DUMP_TAGS = re.compile(r"\((?:0010,\s?[0-9A-Fa-f]{4}|0008,\s?(?:0050|0090|0081|1048|1050|1060|1070))\)")
# A DICOM person name: components separated by '^' (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX).
_PERSON_NAME_RE = re.compile(r"\b[\w'.-]+(?:\^[\w'.-]*)+")


def redact_text(text: str) -> str:
    """Remove patient identifiers from a formatted message."""
    text = _KEYWORD_RE.sub(lambda m: m.group("key") + REDACTED, text)
    text = _ELEMENT_DUMP_RE.sub(
        lambda m: m.group("key") + REDACTED if _PHI_DUMP_TAGS.search(m.group("key")) else m.group(0), text)
    return _PERSON_NAME_RE.sub(REDACTED, text)


def _safe_arg(value: Any) -> Any:
    module = type(value).__module__
    if module.startswith("pydicom") or module.startswith("highdicom"):
        name = type(value).__name__
        if name in ("Dataset", "FileDataset", "DataElement", "PersonName", "RawDataElement", "Sequence") or \
                module.startswith("highdicom"):
            return f"<{name} redacted>"
    return value


class PatientDataFilter(logging.Filter):
    """Rewrites the record's message so that no patient identifier reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.args:
                args = record.args
                if isinstance(args, dict):
                    record.args = {k: _safe_arg(v) for k, v in args.items()}
                else:
                    record.args = tuple(_safe_arg(a) for a in args)
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the line
            message = str(record.msg)
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                    "process": record.process, "message": record.getMessage()}
        if record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document)


def setup_logging(settings: LoggingSettings | None = None) -> None:
    """One stderr handler on the root logger with the patient-data filter (idempotent)."""
    settings = settings or LoggingSettings()
    root = logging.getLogger()
    root.setLevel(settings.level.upper())
    for handler in list(root.handlers):
        if getattr(handler, "_bmd_node", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._bmd_node = True  # type: ignore[attr-defined]
    handler.addFilter(PatientDataFilter())
    if settings.json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"))
    root.addHandler(handler)
    for noisy in ("pynetdicom", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
