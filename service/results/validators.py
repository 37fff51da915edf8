"""Run the offline DICOM validators and return their error lines.

- ``dciodvfy -new`` (dicom3tools): IOD conformance of one object. Its exit status is unreliable: errors are the
  output lines starting with ``Error``.
- ``dcentvfy`` (dicom3tools): consistency of patient/study/series entities across a set of files.
- PixelMed ``DicomSRValidator``: SR content against the templates (TID 1500 ...). Errors are lines that start
  with ``Error`` (its summary lines of the form "Found N errors" are ignored unless N > 0).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
_JAVA_XML_LIMITS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
_TIMEOUT_S = 300


class ValidatorUnavailableError(RuntimeError):
    """The validator program is not installed (``make install`` installs dicom3tools and pixelmed-apps)."""


@dataclass(frozen=True)
class ValidationReport:
    tool: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output: str

    @property
    def ok(self) -> bool:
        return not self.errors


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ValidatorUnavailableError(f"{program} not found on PATH")
    return path


def _run(args: Sequence[str]) -> str:
    completed = subprocess.run(list(args), capture_output=True, text=True, errors="replace", timeout=_TIMEOUT_S,
                               check=False)
    return completed.stdout + completed.stderr


def _lines(output: str, prefix: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in output.splitlines() if line.strip().startswith(prefix))


def dciodvfy(path: Path) -> ValidationReport:
    """``dciodvfy -new file``: Error lines and Warning lines."""
    output = _run([_require("dciodvfy"), "-new", str(path)])
    return ValidationReport("dciodvfy", _lines(output, "Error"), _lines(output, "Warning"), output)


def dcentvfy(paths: Sequence[Path]) -> ValidationReport:
    """``dcentvfy files...``: entity consistency (same patient/study attributes across all objects)."""
    if not paths:
        raise ValueError("paths must not be empty")
    output = _run([_require("dcentvfy"), *[str(p) for p in paths]])
    return ValidationReport("dcentvfy", _lines(output, "Error"), _lines(output, "Warning"), output)


_FOUND_ERRORS = re.compile(r"^Found (\d+) errors?", re.IGNORECASE)


def pixelmed_sr(paths: Sequence[Path]) -> dict[Path, ValidationReport]:
    """PixelMed DicomSRValidator on each SR (one JVM per file: the tool validates the file named in its argument)."""
    java = _require("java")
    if not PIXELMED_JAR.exists():
        raise ValidatorUnavailableError(f"{PIXELMED_JAR} missing (Debian package pixelmed-apps)")
    reports: dict[Path, ValidationReport] = {}
    for path in paths:
        output = _run([java, *_JAVA_XML_LIMITS, "-cp", str(PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator",
                       str(path)])
        errors = [line for line in _lines(output, "Error") if not _FOUND_ERRORS.match(line)]
        errors += [line.strip() for line in output.splitlines() if "Exception" in line and "at " not in line[:4]]
        for line in output.splitlines():
            match = _FOUND_ERRORS.match(line.strip())
            if match and int(match.group(1)) > 0:
                errors.append(line.strip())
        reports[Path(path)] = ValidationReport("DicomSRValidator", tuple(errors), _lines(output, "Warning"), output)
    return reports
