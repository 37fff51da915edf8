"""Every coded concept bmd-node writes into DICOM, in one place.

Each constant names its coding scheme and where the code comes from (a DICOM Context Group (CID) of PS3.16,
or "private" for the project's own scheme). Standard codes are taken from pydicom's code dictionary where it
has them, so their meanings match what DICOM tools expect.

No standard code exists for a QCT volumetric bone mineral density, for the evaluability of a vertebral level for
BMD, or for the calibration details: those use the private coding scheme ``99BMDNODE`` which every object that
uses it declares in its Coding Scheme Identification Sequence (PS3.3 C.12.1.1.5).
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from service.domain.levels import VertebraLevel
from service.domain.results import CalibrationKind, Category, ExclusionReason, FractureStatus, RoiMethod

# --- private coding scheme -------------------------------------------------------------------------------------
PRIVATE_SCHEME = "99BMDNODE"
"""Private coding scheme designator ("99" prefix: PS3.3 8.2, private schemes start with 99)."""
PRIVATE_SCHEME_NAME = "bmd-node opportunistic QCT screening codes"
PRIVATE_SCHEME_RESPONSIBLE = "bmd-node project"


def _private(value: str, meaning: str) -> Code:
    # Code Value is SH (16 characters); longer values would need Long Code Value, which readers handle poorly.
    if len(value) > 16:
        raise ValueError(f"private code value {value!r} is longer than 16 characters")
    return Code(value, PRIVATE_SCHEME, meaning)


def coding_scheme_identification_item() -> Dataset:
    """One item of the Coding Scheme Identification Sequence (0008,0110) declaring ``99BMDNODE``."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_RESPONSIBLE
    return item


# --- IHE AIR / contributing equipment -------------------------------------------------------------------------
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")
"""Purpose of Reference of the Contributing Equipment Sequence (IHE AI Results profile, Rad TF-3 6.5.x)."""
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # (109103, DCM), CID 7005 (highdicom's accepted purpose)
ALGORITHM_FAMILY_AI = codes.DCM.ArtificialIntelligence  # (123110, DCM, "Artificial Intelligence"), CID 7162

# --- anatomy (SNOMED CT) -----------------------------------------------------------------------------------------
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # (91723000, SCT), CID 7150 Segmentation Property Categories
VERTEBRAL_BODY = Code("3572006", "SCT", "Vertebral body")  # SNOMED CT "Vertebral body structure", CID 7151 / 7304
TRABECULAR_ROI = _private("TRABECULAR-ROI", "Trabecular bone region of interest")
"""Segmented property type of a trabecular ROI (private: no SNOMED concept for an eroded measurement ROI)."""
SPINE = codes.SCT.BoneStructureOfSpine  # (51282000, SCT), CID 4 anatomic regions

_VERTEBRA_CODE_NAMES: dict[VertebraLevel, str] = {
    **{VertebraLevel(v): f"C{v}Vertebra" for v in range(1, 8)},
    **{VertebraLevel(7 + n): f"T{n}Vertebra" for n in range(1, 13)},
    **{VertebraLevel(19 + n): f"L{n}Vertebra" for n in range(1, 6)},
}


def vertebra_code(level: VertebraLevel) -> Code:
    """SNOMED CT code of a vertebra (CID 7304 / pydicom ``codes.SCT``), e.g. L1 -> (66794005, SCT, "L1 vertebra").

    S1 has no own concept in CID 7304: the sacrum (54735007) is used.
    """
    if level == VertebraLevel.S1:
        return Code("54735007", "SCT", "Sacrum")
    return getattr(codes.SCT, _VERTEBRA_CODE_NAMES[level])  # type: ignore[no-any-return]


# --- procedure reported (LOINC, CID 100 "Quantitative Diagnostic Imaging Procedures") -------------------------
CT_UNSPECIFIED_BODY_REGION = codes.LN.CTUnspecifiedBodyRegion  # (25045-6, LN)
CT_CHEST = Code("24627-2", "LN", "CT Chest")
CT_ABDOMEN = Code("41806-1", "LN", "CT Abdomen")


def procedure_code(body_part_examined: str) -> Code:
    """The imaging procedure (not the algorithm) for "Procedure reported".

    Always LN 25045-6 "CT unspecified body region": CID 100 (which TID 1500 uses for this row) holds no chest- or
    abdomen-specific CT code, and PixelMed's validator rejects LN 24627-2 / 41806-1 there as "not found in context
    group 100". The body part stays visible in the study and in the CT's Body Part Examined.
    """
    del body_part_examined
    return CT_UNSPECIFIED_BODY_REGION


# --- TID 1500 containers ----------------------------------------------------------------------------------------
IMAGING_MEASUREMENTS: Code = codes.DCM.ImagingMeasurements  # (126010, DCM): the per-level groups
DERIVED_IMAGING_MEASUREMENTS: Code = codes.DCM.DerivedImagingMeasurements  # (126011, DCM): the patient summary

# --- measurements --------------------------------------------------------------------------------------------
ATTENUATION_COEFFICIENT = codes.DCM.AttenuationCoefficient  # (112031, DCM), CID 7180 / TID 1419
MEAN = codes.SCT.Mean  # (373098007, SCT) derivation, CID 7464 "General Region of Interest Measurement Modifiers"
MEDIAN = codes.SCT.Median  # (373099004, SCT), CID 7464
STANDARD_DEVIATION = codes.SCT.StandardDeviation  # (386136009, SCT), CID 7464
VOLUME = codes.SCT.Volume  # (118565006, SCT), CID 7182
VOXEL_COUNT = _private("VOXEL-COUNT", "Number of voxels in region of interest")
QCT_VOLUMETRIC_BMD = _private("QCT-VBMD", "QCT volumetric bone mineral density")
CALIBRATION_SLOPE = _private("CAL-SLOPE", "HU to BMD calibration slope")
CALIBRATION_INTERCEPT = _private("CAL-INTERCEPT", "HU to BMD calibration intercept")
CURVE_SLOPE = _private("CURVE-K", "Thoracolumbar HU curve slope per level")
CURVE_INTERCEPT = _private("CURVE-INTERCEPT", "Thoracolumbar HU curve intercept")
CURVE_R2 = _private("CURVE-R2", "Thoracolumbar HU curve coefficient of determination")

# units (UCUM)
UNIT_HU = codes.UCUM.HounsfieldUnit  # ([hnsf'U], UCUM)
UNIT_MG_CM3 = Code("mg/cm3", "UCUM", "milligram per cubic centimeter")
UNIT_MM3 = Code("mm3", "UCUM", "cubic millimeter")
UNIT_MG_CM3_PER_HU = Code("mg/cm3/[hnsf'U]", "UCUM", "milligram per cubic centimeter per Hounsfield unit")
UNIT_VOXELS = Code("{voxels}", "UCUM", "voxels")
UNIT_ONE = Code("1", "UCUM", "no units")

# --- qualitative evaluations -----------------------------------------------------------------------------------
EVALUABLE_FOR_BMD = _private("EVALUABLE", "Level evaluable for bone mineral density")
YES = codes.SCT.Yes  # (373066001, SCT), CID 230 Yes-No
NO = codes.SCT.No  # (373067005, SCT), CID 230 Yes-No
EXCLUSION_REASON = _private("EXCLUSION-REASON", "Reason level excluded from BMD")
LEVEL_UNCERTAIN = _private("LEVEL-UNCERTAIN", "Vertebral level label uncertain")
LEVEL_USED = _private("LEVEL-USED", "Level used for patient BMD")
LUMBAR_EQUIVALENT = _private("LUMBAR-EQUIV", "Value is lumbar equivalent from thoracolumbar curve")
CALIBRATION_KIND = codes.DCM.CalibrationMethod  # (122422, DCM, "Calibration Method")
VERTEBRA_FINDING = _private("VERTEBRA-BMD", "Vertebral trabecular bone mineral density")

EXCLUSION_REASON_CODES: dict[ExclusionReason, Code] = {
    ExclusionReason.FRACTURE: _private("EXCL-FRACTURE", "Vertebral fracture"),
    ExclusionReason.SCLEROSIS: _private("EXCL-SCLEROSIS", "Sclerotic lesion or dense bone island"),
    ExclusionReason.METAL: _private("EXCL-METAL", "Metal or implant in region of interest"),
    ExclusionReason.ROI_TOO_SMALL: _private("EXCL-ROI-SMALL", "Trabecular region of interest too small"),
    ExclusionReason.LEVEL_UNCERTAIN: _private("EXCL-LEVEL", "Vertebral level uncertain"),
    ExclusionReason.CUT_BY_FOV: _private("EXCL-CUT-BY-FOV", "Vertebra not fully in field of view"),
}

# --- vertebral fracture finding (issue 15) ----------------------------------------------------------------------
VERTEBRAL_FRACTURE = Code("125605004", "SCT", "Fracture of bone")
"""SNOMED CT 125605004 |Fracture of bone (disorder)| (International Edition; the top concept of the fracture
sub-hierarchy, e.g. in SNOMED's ECL examples ``<< 125605004``). Written as the concept name of a qualitative
evaluation in the level's group, whose finding site is the vertebra (SCT, CID 7304): "fracture of bone" at "L1
vertebra" = a vertebral body fracture. Value: Yes / No / Indeterminate (height not measurable)."""
FRACTURE_STATUS_CODES: dict[FractureStatus, Code] = {
    FractureStatus.FRACTURED: YES,
    FractureStatus.NOT_FRACTURED: NO,
    FractureStatus.NOT_MEASURABLE: codes.SCT.Indeterminate,  # (82334004, SCT): height not measurable
}
GENANT_GRADE = _private("GENANT-GRADE", "Genant semiquantitative vertebral fracture grade")
"""Genant HK et al., J Bone Miner Res 1993;8:1137-48. No SNOMED CT or DICOM code exists for the grade: private."""
GENANT_GRADE_CODES: dict[int, Code] = {
    0: _private("GENANT-0", "Genant grade 0, normal (height loss under 20 %)"),
    1: _private("GENANT-1", "Genant grade 1, mild (20-25 % height loss)"),
    2: _private("GENANT-2", "Genant grade 2, moderate (25-40 % height loss)"),
    3: _private("GENANT-3", "Genant grade 3, severe (over 40 % height loss)"),
}

# --- BMD trend since the prior study (issue 20) -----------------------------------------------------------------
BMD_CHANGE = _private("BMD-CHANGE", "Change in QCT BMD since prior study")
"""Current minus prior value (mg/cm3) of the levels compared (the summary levels, or the levels measured in both)."""
BMD_CHANGE_PERCENT_PER_YEAR = _private("BMD-CHANGE-RATE", "Annualized percent change in QCT BMD since prior study")
BEYOND_LSC = _private("BEYOND-LSC", "Change beyond least significant change")
"""Yes / No, or Indeterminate when the studies are not comparable (no level measured in both)."""
BEYOND_LSC_CODES: dict[bool | None, Code] = {True: YES, False: NO, None: codes.SCT.Indeterminate}
PRIOR_STUDY_DATE = codes.DCM.StudyDate  # (111060, DCM, "Study Date"): of the prior study, on the change NUM
UNIT_PERCENT_PER_YEAR = Code("%/a", "UCUM", "percent per year")  # UCUM "a" = Julian year

CATEGORY_CODES: dict[Category, Code] = {
    Category.NORMAL: codes.SCT.Normal,  # (17621005, SCT)
    Category.OSTEOPENIA: Code("312894000", "SCT", "Osteopenia"),
    Category.OSTEOPOROSIS: Code("64859006", "SCT", "Osteoporosis"),
    Category.INDETERMINATE: codes.SCT.Indeterminate,  # (82334004, SCT, "Indeterminate"), CID 6335-like usage
}

ROI_METHOD_CODES: dict[RoiMethod, Code] = {
    RoiMethod.EROSION_3MM: _private("ROI-EROSION-3MM", "Vertebral body eroded by 3 mm"),
    RoiMethod.ELLIPTICAL_CYLINDER: _private("ROI-ELL-CYLINDER", "Elliptical cylinder in mid vertebral body"),
}

CALIBRATION_KIND_CODES: dict[CalibrationKind, Code] = {
    CalibrationKind.PHANTOM: _private("CAL-PHANTOM", "Asynchronous phantom calibration"),
    CalibrationKind.SYNCHRONOUS_PHANTOM: _private("CAL-SYNC-PHANTOM", "Synchronous phantom calibration"),
    CalibrationKind.INTERNAL: _private("CAL-INTERNAL", "Phantomless internal calibration"),
    CalibrationKind.DEFAULT: _private("CAL-DEFAULT", "Default calibration, uncalibrated"),
    CalibrationKind.SITE_MODEL: _private("CAL-SITE-MODEL", "Site-trained model"),
}


def level_from_code(code_value: str, scheme: str) -> VertebraLevel | None:
    """Inverse of :func:`vertebra_code` (for reading objects back)."""
    for level in VertebraLevel:
        code = vertebra_code(level)
        if code.value == code_value and code.scheme_designator == scheme:
            return level
    return None
