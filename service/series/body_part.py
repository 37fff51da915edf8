"""Which CT series the node screens at all: chest, abdomen, pelvis and the thoracolumbar spine, not the head or a limb.

The rule looks only at free-text headers, in two levels; the first level that names a body region decides:

1. the series: ``BodyPartExamined``, ``SeriesDescription``, ``ProtocolName``;
2. the study: ``StudyDescription`` (so that a head series of a whole-body trauma study is still left alone, and a
   series without any description in a "CT CHEST" study is screened).

Within a level a trunk keyword wins over a non-trunk one ("HEAD NECK CHEST" is screened: the chest holds the
thoracic vertebrae). Words are matched after upper-casing, removing accents and splitting on anything that is not a
letter or digit; DICOM's joined defined terms (``CHESTABDPELVIS``, ``HEADNECK``) are words of their own, and a few
long stems also match inside a word (``THORAX`` in ``THORAXABDOMEN``, ``SCHAEDEL`` in ``SCHAEDELBASIS``).

Screened (trunk): CHEST, THORAX, LUNG, HEART/CARDIAC (calcium-score scans show the thoracic spine), ABDOMEN,
PELVIS, KIDNEY, LIVER, AORTA, SPINE (and thoracic, lumbar, sacral spine), TRUNK, TORSO, WHOLEBODY, POLYTRAUMA,
CAP / TAP (chest-abdomen-pelvis, thorax-abdomen-pelvis), in English, German, French, Spanish, Italian and Dutch
where the word is cheap to list (THORAX, TORAX, TORACE, BORST, BAUCH, ADDOME, BECKEN, BASSIN, BEKKEN, WIRBELSAEULE,
LWS, BWS, RACHIS, COLUMNA ...).

Not screened: HEAD, BRAIN, SKULL, FACE, SINUS, ORBIT, EAR, JAW, TEETH, NECK (alone), cervical spine (CSPINE, HWS),
and the limbs: EXTREMITY, ARM, LEG, SHOULDER, ELBOW, WRIST, HAND, KNEE, ANKLE, FOOT ... (KOPF, SCHAEDEL, HALS,
KNIE, TETE, CRANE, COU, GENOU, CABEZA, CRANEO, CUELLO, RODILLA, TESTA, CRANIO, COLLO, GINOCCHIO, HOOFD ...).

Unknown (no keyword in either level, e.g. "Routine 5mm"): screened; the segmentation then finds vertebrae or not.
HIP is deliberately unknown (a hip CT may or may not reach L5).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

import pydicom

SERIES_FIELDS: tuple[str, ...] = ("BodyPartExamined", "SeriesDescription", "ProtocolName")
STUDY_FIELDS: tuple[str, ...] = ("StudyDescription",)

TRUNK_WORDS: frozenset[str] = frozenset({
    # DICOM BodyPartExamined defined terms (PS3.16 Annex L) and English
    "CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "PULMONARY", "HEART", "CARDIAC", "CORONARY", "CALCIUM", "CACS",
    "ABDOMEN", "ABDOMINAL", "ABD", "PELVIS", "PELVIC", "CHESTABDOMEN", "CHESTABDPELVIS", "ABDOMENPELVIS",
    "ABDPELVIS", "KIDNEY", "KIDNEYS", "RENAL", "LIVER", "PANCREAS", "COLON", "COLONOSCOPY", "COLONOGRAPHY",
    "UROGRAM", "AORTA", "AORTIC",
    "SPINE", "TSPINE", "LSPINE", "SSPINE", "LUMBAR", "SACRUM", "TRUNK", "TORSO", "WHOLEBODY", "WB", "POLYTRAUMA",
    "CAP", "TAP", "STAGING",
    # German
    "BRUSTKORB", "BAUCH", "BECKEN", "NIERE", "NIEREN", "LEBER", "WIRBELSAEULE", "WIRBELSAULE", "BWS", "LWS",
    "GANZKOERPER", "GANZKORPER", "HERZ", "LUNGE",
    # French
    "POUMON", "POUMONS", "BASSIN", "RACHIS", "COEUR", "REIN", "REINS", "FOIE",
    # Spanish / Italian / Dutch
    "TORAX", "PULMON", "COLUMNA", "CORAZON", "TORACE", "ADDOME", "BACINO", "POLMONE", "POLMONI", "CUORE",
    "BORST", "BORSTKAS", "BUIK", "BEKKEN", "LONGEN", "WERVELKOLOM", "HART",
})
"""Words that name the trunk: the series is screened."""

TRUNK_STEMS: tuple[str, ...] = ("THORA", "TORAC", "ABDOM", "ADDOM", "PELVI", "LUMBA", "WIRBEL", "THORAK")
"""Stems that also count inside a longer word (THORAXABDOMEN, ABDOMENBECKEN, THORACOABDOMINAL ...)."""

NOT_TRUNK_WORDS: frozenset[str] = frozenset({
    # DICOM defined terms and English
    "HEAD", "BRAIN", "SKULL", "CRANIAL", "CEREBRAL", "FACE", "FACIAL", "SINUS", "SINUSES", "ORBIT", "ORBITS", "EAR",
    "EARS", "IAC", "TEMPORAL", "PETROUS", "JAW", "MANDIBLE", "MAXILLA", "TMJ", "DENTAL", "TEETH", "NECK",
    "HEADNECK", "CSPINE", "CERVICAL", "LARYNX", "THYROID", "EXTREMITY", "EXTREMITIES", "ARM", "ARMS", "UPRARM",
    "LEG", "LEGS", "LOWRLEG", "SHOULDER", "ELBOW", "FOREARM", "WRIST", "HAND", "HANDS", "FINGER", "KNEE", "KNEES",
    "ANKLE", "FOOT", "FEET", "TOE", "HUMERUS", "FEMUR", "TIBIA", "FIBULA", "CALCANEUS",
    # German
    "KOPF", "SCHAEDEL", "SCHADEL", "CCT", "HALS", "HWS", "NNH", "FELSENBEIN", "KNIE", "SCHULTER", "ELLENBOGEN",
    "HANDGELENK", "SPRUNGGELENK", "FUSS", "UNTERSCHENKEL", "OBERSCHENKEL",
    # French
    "TETE", "CRANE", "CERVEAU", "ENCEPHALE", "COU", "GENOU", "EPAULE", "COUDE", "POIGNET",
    "CHEVILLE", "PIED",
    # Spanish / Italian / Dutch
    "CABEZA", "CRANEO", "CEREBRO", "CUELLO", "RODILLA", "HOMBRO", "CODO", "MUNECA", "MANO", "TOBILLO", "PIE",
    "TESTA", "CRANIO", "ENCEFALO", "COLLO", "GINOCCHIO", "SPALLA", "GOMITO", "POLSO", "CAVIGLIA", "PIEDE",
    "HOOFD", "HERSENEN", "SCHEDEL", "SCHOUDER", "ELLEBOOG", "POLS", "ENKEL", "VOET",
})
"""Words that name a region outside the trunk: the series is not screened unless a trunk word is present too."""

NOT_TRUNK_STEMS: tuple[str, ...] = ("SCHAEDEL", "CRANI", "CEREB", "ENCEPH", "EXTREMIT")

_SPLIT = re.compile(r"[^A-Z0-9]+")


@dataclass(frozen=True)
class BodyPartDecision:
    """Whether a series is screened, and the rule that decided (for the series' recorded reason)."""

    screened: bool
    body_part: str
    """The keyword that decided (upper case), or "" when no keyword was found (unknown: screened)."""
    rule: str
    """Which rule decided, naming the attribute (no free text beyond the keyword, so no patient data)."""

    def __post_init__(self) -> None:
        if not self.rule:
            raise ValueError("rule must not be empty")
        if not self.screened and not self.body_part:
            raise ValueError("a series that is not screened must name the body part that decided")

    @property
    def reason(self) -> str:
        """The recorded reason for a series that is not screened."""
        return f"body part {self.body_part} is not chest/abdomen/spine (rule: {self.rule})"


def words(text: str) -> list[str]:
    """Upper-case words of ``text`` without accents (``Schädel`` -> ``SCHADEL``, ``Thorax/Abdomen`` -> 2 words)."""
    folded = unicodedata.normalize("NFKD", text.replace("ß", "SS"))
    ascii_text = "".join(c for c in folded if not unicodedata.combining(c)).upper()
    return [w for w in _SPLIT.split(ascii_text) if w]


def _classify_word(word: str) -> bool | None:
    """True: trunk, False: not trunk, None: says nothing about the body part."""
    if word in TRUNK_WORDS:
        return True
    if word in NOT_TRUNK_WORDS:
        return False
    if len(word) > 5 and any(stem in word for stem in TRUNK_STEMS):
        return True
    if len(word) > 5 and any(stem in word for stem in NOT_TRUNK_STEMS):
        return False
    return None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return " ".join(str(v) for v in value)
    return str(value)


def _decide_level(values: Iterable[tuple[str, str]]) -> BodyPartDecision | None:
    """The decision of one level from (attribute, text) pairs, or None when no word names a body part."""
    outside: tuple[str, str] | None = None
    for attribute, text in values:
        found = words(text)
        for word in [a + b for a, b in pairwise(found)] + found:  # WHOLE BODY -> WHOLEBODY
            kind = _classify_word(word)
            if kind is True:
                return BodyPartDecision(True, word, f"{attribute} names {word}")
            if kind is False and outside is None:
                outside = (attribute, word)
    if outside is None:
        return None
    attribute, word = outside
    return BodyPartDecision(False, word, f"{attribute} names {word}, no chest/abdomen/spine word")


def body_part_decision(header: pydicom.Dataset) -> BodyPartDecision:
    """Is this CT series (one slice's header stands for the series) of the chest, abdomen or spine? See module doc."""
    for level, fields in (("series", SERIES_FIELDS), ("study", STUDY_FIELDS)):
        decision = _decide_level((f, _text(header.get(f, ""))) for f in fields)
        if decision is not None:
            if level == "study" and not decision.screened:
                return BodyPartDecision(False, decision.body_part, f"{decision.rule}; series says nothing")
            return decision
    return BodyPartDecision(True, "", "no body part named: unknown is screened")
