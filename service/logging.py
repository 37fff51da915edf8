"""Logging set-up and the filter that keeps patient identifiers out of every log line.

``PatientDataFilter`` (installed on the root handlers by ``setup_logging``) rewrites each record before it is
formatted:
- arguments that are pydicom Datasets, DataElements or PersonNames are replaced by a placeholder;
- ``PatientName=...``, ``PatientID: ...``, ``PatientBirthDate ...`` style fragments and pydicom element dumps of
  group 0010 (``(0010,0010) Patient's Name  PN: 'DOE^JOHN'``) keep their key and lose the value;
- DICOM person names (``FAMILY^GIVEN``) are replaced.
UIDs, AE titles, counts and file names are kept: they are needed to operate the node and identify no patient.

Python warnings (pydicom's "invalid value for VR ..." carries the value) go through logging
(``logging.captureWarnings``) and so through the same filter. Two more filters keep the log usable under a flood of
bad input (a fuzzing run wrote 27,513 lines, some of 409 kB): ``RepeatLimitFilter`` lets at most
``repeat_limit_per_minute`` lines of one kind through per minute (a kind = logger, level and the message with its
numbers and quoted values blanked) and says how many it held back; ``LineCapFilter`` cuts every line, traceback
included, to ``max_line_chars``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REDACTED = "<redacted>"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LoggingSettings:
    """The [logging] section."""

    level: str = "INFO"
    json: bool = False
    max_line_chars: int = 4000
    """Longer lines (message and traceback together) are cut, with the count of characters left out."""
    repeat_limit_per_minute: int = 30
    """Lines of one kind let through per minute; 0 = no limit."""

    def __post_init__(self) -> None:
        if self.level.upper() not in LOG_LEVELS:
            raise ValueError(f"logging.level: must be one of {LOG_LEVELS}, got {self.level!r}")
        if self.max_line_chars < 200:
            raise ValueError(f"logging.max_line_chars: must be >= 200, got {self.max_line_chars}")
        if self.repeat_limit_per_minute < 0:
            raise ValueError(f"logging.repeat_limit_per_minute: must be >= 0, got {self.repeat_limit_per_minute}")

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


_KIND_VALUES_RE = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


class RepeatLimitFilter(logging.Filter):
    """At most ``per_minute`` records of one kind per 60 s window; the first record let through after a window with
    held-back records says how many were held back.  Runs before ``PatientDataFilter`` (it reads the unformatted
    message)."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], list[float]] = {}  # kind -> [window start, count, held back]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.per_minute <= 0:
            return True
        kind = (record.name, record.levelno, _KIND_VALUES_RE.sub("#", str(record.msg))[:200])
        now = self.clock()
        with self._lock:
            if len(self._windows) > 10_000:  # many kinds (e.g. values the regex missed): start afresh
                self._windows.clear()
            window = self._windows.setdefault(kind, [now, 0, 0])
            if now - window[0] >= self.WINDOW_S:
                held = int(window[2])
                window[:] = [now, 0, 0]
                if held:
                    record.msg = f"[{held} similar lines held back in the last minute] {record.msg}"
            window[1] += 1
            if window[1] > self.per_minute:
                window[2] += 1
                return False
        return True


class LineCapFilter(logging.Filter):
    """Cuts the (already redacted and formatted) message and the traceback to ``max_chars`` together."""

    def __init__(self, max_chars: int) -> None:
        super().__init__()
        self.max_chars = max_chars

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg) if record.args is None else record.getMessage()
        if len(message) > self.max_chars:
            record.msg = f"{message[: self.max_chars]}... [{len(message) - self.max_chars} characters cut]"
            record.args = None
            message = record.msg
        room = max(200, self.max_chars - len(message))
        if record.exc_text and len(record.exc_text) > room:
            # keep the end of a traceback: the exception and the frames nearest to it
            record.exc_text = f"[{len(record.exc_text) - room} characters cut]...{record.exc_text[-room:]}"
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
    handler.addFilter(RepeatLimitFilter(settings.repeat_limit_per_minute))
    handler.addFilter(PatientDataFilter())
    handler.addFilter(LineCapFilter(settings.max_line_chars))
    if settings.json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"))
    root.addHandler(handler)
    logging.captureWarnings(True)  # warnings.warn(...) -> logger "py.warnings" -> this handler and its filters
    for noisy in ("pynetdicom", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
