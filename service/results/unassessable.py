"""The "indeterminate" report: why bone density could not be assessed, as a TID 1500 SR and a key image.

Sent (``[results] report_unassessable``) when no series of a chest or abdomen CT study can be used, or when the
selected series' job finds no vertebra, so that the radiologist learns why in the viewer rather than seeing nothing.

SR: Comprehensive 3D SR, TID 1500 Measurement Report. Imaging Measurements holds one TID 1501 group "Bone mineral
density not assessed" whose Finding is Indeterminate (SCT 82334004, the category code the normal report's patient
group carries), finding site the spine, and no measurements. The words are in TID 1500's report-level Qualitative
Evaluations container (the place TID 1500 allows TEXT rows; inside the TID 1501 group PixelMed reports TEXT as "not in
template"): one TEXT row saying what could not be done, then one per series naming it (number and description) with
its reason. Characters the source's character set cannot hold ("…", "×") are written as ASCII. Evidence: one
instance of each series named (Pertinent Other Evidence). Flags as the normal report (complete, preliminary,
unverified); an earlier indeterminate report of the study can be named as predecessor. Own series numbers: 9804 (SR)
and 9805 (key image).

Key image: a Secondary Capture page in the style of the normal key image (banner "AI result, to be reviewed"),
"INDETERMINATE" and the reasons in large text. No patient identifiers are burned in.
"""

from __future__ import annotations

import datetime as dt
import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from service.domain.results import Category
from service.results import codes
from service.results.common import (
    AlgorithmInfo,
    report_sr,
    secondary_capture,
)
from service.results.keyimage import (
    BACKGROUND,
    BANNER_BG,
    BANNER_FG,
    BANNER_HEIGHT,
    CANVAS_HEIGHT,
    CANVAS_WIDTH,
    CATEGORY_COLORS,
    MARGIN,
    MUTED,
    TEXT,
    text_font,
)

__all__ = [
    "INDETERMINATE_KEY_IMAGE_SERIES_NUMBER",
    "INDETERMINATE_SR_SERIES_NUMBER",
    "UNUSABLE_SERIES",
    "IndeterminateObjects",
    "UnusableSeries",
    "build_indeterminate_objects",
    "render_indeterminate_image",
]

logger = logging.getLogger(__name__)

INDETERMINATE_SR_SERIES_NUMBER = 9804
INDETERMINATE_KEY_IMAGE_SERIES_NUMBER = 9805
UNUSABLE_SERIES = Code("UNUSABLE-SERIES", codes.PRIVATE_SCHEME, "Series not usable for bone mineral density")
"""Concept name of each TEXT row "series 3 (Thorax 5 mm): <reason>" (private: no standard concept exists)."""
NOT_ASSESSED = Code("NOT-ASSESSED", codes.PRIVATE_SCHEME, "Bone mineral density not assessed")
"""Concept name of the TEXT row saying what could not be done ("No series of this study could be used ...")."""
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
"""TID 1500's container of report-level qualitative evaluations (CODE or TEXT rows)."""
GROUP_NAME = "Bone mineral density not assessed"
_MAX_TEXT_LENGTH = 1024
_REASON_COLOR = (255, 190, 90)
_PLAIN = {"…": "...", "×": "x", "–": "-", "—": "-", "≥": ">=", "≤": "<=", "°": " deg", "³": "3", "²": "2",
          "µ": "u", "’": "'", "‘": "'", "“": '"', "”": '"'}


@dataclass(frozen=True)
class UnusableSeries:
    """One series the report names: what the radiologist sees it as, and why it was not used."""

    series_instance_uid: str
    series_number: str
    series_description: str
    reason: str

    def __post_init__(self) -> None:
        if not self.series_instance_uid or len(self.series_instance_uid) > 64:
            raise ValueError(f"series_instance_uid must be a UID of 1..64 characters, got {self.series_instance_uid!r}")
        if not self.reason.strip():
            raise ValueError("reason must not be empty")

    @property
    def label(self) -> str:
        """"series 3 (Thorax 5 mm)", "series 3", or the UID when the series has no number."""
        name = f"series {self.series_number}" if self.series_number else f"series {self.series_instance_uid}"
        return f"{name} ({self.series_description})" if self.series_description else name

    @property
    def line(self) -> str:
        return f"{self.label}: {self.reason}"


@dataclass(frozen=True, eq=False)
class IndeterminateObjects:
    sr: Dataset
    key_image: Dataset

    def datasets(self) -> list[Dataset]:
        """In sending order: SR, then key image."""
        return [self.sr, self.key_image]


def build_indeterminate_objects(source_headers: Sequence[Dataset], unusable: Sequence[UnusableSeries],
                                algorithm: AlgorithmInfo, *, summary: str, predecessor: Dataset | None = None,
                                when: dt.datetime | None = None) -> IndeterminateObjects:
    """SR and key image for one study. ``source_headers``: one CT header of each series named (the first gives the
    patient and study); ``summary``: one sentence saying what could not be done ("No series of this study could be
    used"); ``predecessor``: a Predecessor Documents Sequence item (an earlier indeterminate report it replaces)."""
    if not source_headers:
        raise ValueError("source_headers must hold at least one CT header of the study")
    if not unusable:
        raise ValueError("unusable must name at least one series")
    if not summary.strip():
        raise ValueError("summary must not be empty")
    study_uids = {str(h.get("StudyInstanceUID", "") or "") for h in source_headers}
    if len(study_uids) != 1 or "" in study_uids:
        raise ValueError(f"source_headers must belong to one study, got {sorted(study_uids)}")
    when = (when or dt.datetime.now()).replace(microsecond=0)
    sr = _build_sr(source_headers, unusable, algorithm, summary, predecessor, when)
    key_image = _build_key_image(source_headers[0], unusable, algorithm, summary, when)
    logger.info("indeterminate report built naming %d series", len(unusable))
    return IndeterminateObjects(sr=sr, key_image=key_image)


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid, name=algorithm.name, manufacturer_name=algorithm.manufacturer,
        model_name=f"{algorithm.name} {algorithm.version}")
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=pydicom_codes.DCM.Device, observer_identifying_attributes=device))


def _in_character_set(text: str, specific_character_set: object) -> str:
    """``text`` as the SR's character set (copied from the source) can hold it: typographic characters the node's
    reasons use ("…", "×", "–") become ASCII, anything else left over becomes "?" (never an encoding error)."""
    terms = specific_character_set if isinstance(specific_character_set, (list, tuple, MultiValue)) \
        else [specific_character_set or "ISO_IR 6"]
    encodings = convert_encodings([str(t) for t in terms] or ["ISO_IR 6"])
    try:
        text.encode(encodings[0])
        return text
    except (UnicodeEncodeError, LookupError):
        pass
    for typographic, plain in _PLAIN.items():
        text = text.replace(typographic, plain)
    try:
        return text.encode(encodings[0], errors="replace").decode(encodings[0])
    except LookupError:
        return text.encode("ascii", errors="replace").decode("ascii")


def _text_item(name: Code, text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=text[:_MAX_TEXT_LENGTH],
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _build_sr(source_headers: Sequence[Dataset], unusable: Sequence[UnusableSeries], algorithm: AlgorithmInfo,
              summary: str, predecessor: Dataset | None, when: dt.datetime) -> hd.sr.Comprehensive3DSR:
    first = source_headers[0]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=GROUP_NAME),
        finding_type=codes.CATEGORY_CODES[Category.INDETERMINATE],
        algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SPINE)],
    )
    procedure = codes.procedure_code(str(first.get("BodyPartExamined", "")))
    report = hd.sr.MeasurementReport(observation_context=_observation_context(algorithm),
                                     procedure_reported=procedure, imaging_measurements=[group])
    evaluations = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                             relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    charset = first.get("SpecificCharacterSet")
    evaluations.ContentSequence = hd.sr.ContentSequence(
        [_text_item(NOT_ASSESSED, _in_character_set(summary, charset)),
         *(_text_item(UNUSABLE_SERIES, _in_character_set(u.line, charset)) for u in unusable)])
    report[0].ContentSequence.append(evaluations)
    sr = report_sr(report, evidence=source_headers, source_header=first,
                   series_number=INDETERMINATE_SR_SERIES_NUMBER,
                   series_description="AI bone density: indeterminate (to be reviewed)", procedure=procedure,
                   algorithm=algorithm, when=when)
    if predecessor is not None:
        sr.PredecessorDocumentsSequence = [predecessor]
    return sr


def render_indeterminate_image(unusable: Sequence[UnusableSeries], summary: str,
                               algorithm: AlgorithmInfo) -> npt.NDArray[np.uint8]:
    """The key image page as an RGB array (rows, columns, 3): banner, INDETERMINATE, the summary and one block per
    series (its name, then its reason) in large text."""
    canvas = Image.new("RGB", (CANVAS_WIDTH, CANVAS_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, CANVAS_WIDTH, BANNER_HEIGHT), fill=BANNER_BG)
    draw.text((MARGIN + 4, BANNER_HEIGHT // 2), "AI result, to be reviewed", font=text_font(50, bold=True),
              fill=BANNER_FG, anchor="lm")
    draw.text((CANVAS_WIDTH - MARGIN - 4, BANNER_HEIGHT // 2), "Vertebral trabecular bone density (QCT)",
              font=text_font(34, bold=True), fill=(255, 255, 255), anchor="rm")
    x, y = MARGIN + 24, BANNER_HEIGHT + 40
    draw.text((x, y), "INDETERMINATE", font=text_font(72, bold=True), fill=CATEGORY_COLORS[Category.INDETERMINATE])
    y += 100
    for wrapped in textwrap.wrap(summary, width=62):
        draw.text((x, y), wrapped, font=text_font(44, bold=True), fill=TEXT)
        y += 56
    y += 24
    footer_y = CANVAS_HEIGHT - 48
    for index, item in enumerate(unusable):
        block = [(item.label, text_font(40, bold=True), TEXT, 52)]
        block += [(line, text_font(38), _REASON_COLOR, 48) for line in textwrap.wrap(item.reason, width=70)]
        needed = sum(step for *_, step in block) + 20
        if y + needed > footer_y - 50:
            draw.text((x, y), f"… and {len(unusable) - index} more series (all named in the SR)",
                      font=text_font(36, bold=True), fill=MUTED)
            break
        for line, font, color, step in block:
            draw.text((x + (0 if color == TEXT else 40), y), line, font=font, fill=color)
            y += step
        y += 20
    draw.text((x, footer_y), f"{algorithm.name} {algorithm.version} · no bone density measured",
              font=text_font(26), fill=MUTED)
    return np.asarray(canvas, dtype=np.uint8)


def _build_key_image(source_header: Dataset, unusable: Sequence[UnusableSeries], algorithm: AlgorithmInfo,
                     summary: str, when: dt.datetime) -> hd.sc.SCImage:
    sc = secondary_capture(render_indeterminate_image(unusable, summary, algorithm), source_header=source_header,
                           series_number=INDETERMINATE_KEY_IMAGE_SERIES_NUMBER,
                           series_description="AI bone density: indeterminate, reasons (to be reviewed)",
                           patient_orientation=("L", "F"), algorithm=algorithm, when=when)
    sc.DerivationDescription = "Reasons why bone mineral density could not be assessed"
    sc.ImageComments = "AI result, to be reviewed: indeterminate"
    return sc
