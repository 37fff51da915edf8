"""What every result object shares: who made it (IHE AIR), patient and study attributes copied from the source."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from service.domain.identity import NODE_MANUFACTURER
from service.results import codes
from service.series.volume_loader import read_headers

# Series numbers of the result series (one series per object type, same study as the CT).
SEG_SERIES_NUMBER = 9801
SR_SERIES_NUMBER = 9802
KEY_IMAGE_SERIES_NUMBER = 9803

# Patient and study attributes that must be identical in every object of the study (dcentvfy checks them).
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialSiteID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


@dataclass(frozen=True, kw_only=True)
class AlgorithmInfo:
    """Who made the result objects: the node software and the segmentation model it ran (keyword arguments)."""

    name: str = "bmd-node"
    version: str
    model_name: str
    model_version: str
    manufacturer: str = NODE_MANUFACTURER
    device_serial_number: str = "0"
    """Required by the SEG Enhanced General Equipment module; the installation's identifier where known."""
    institution_name: str = ""

    def __post_init__(self) -> None:
        for field_name in ("version", "model_name", "model_version", "name", "manufacturer"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{field_name} must be a non-empty string, got {value!r}")

    @property
    def software_versions(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def device_uid(self) -> str:
        """A UID for the algorithm as SR observer device, stable for one name and version."""
        return str(generate_uid(entropy_srcs=["bmd-node device", self.name, self.version]))


def read_source_headers(paths: Sequence[Path]) -> list[Dataset]:
    """The source CT headers in slice order (pixel data not read)."""
    if not paths:
        raise ValueError("source_paths is empty: result objects need the source CT files")
    # The loader's reader: it also takes SOP Class/Instance UIDs from the file meta when a de-identified file left
    # them empty in the dataset (e.g. ../shared/data/ts_abdomen_slab_j2k), as the volume did.
    return read_headers(paths)


def contributing_equipment(algorithm: AlgorithmInfo, when: dt.datetime) -> hd.ContributingEquipment:
    """IHE AIR: the Contributing Equipment Sequence item naming the processing algorithm."""
    # highdicom only accepts the DCM purposes of CID 7005; build with one, then put the IHE AIR code in its place.
    equipment = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=hd.sr.CodedConcept.from_code(codes.PROCESSING_EQUIPMENT),
        manufacturer_model_name=algorithm.name,
        software_versions=[algorithm.software_versions, f"{algorithm.model_name} {algorithm.model_version}"],
        device_serial_number=algorithm.device_serial_number,
        institution_name=algorithm.institution_name or None,
        contribution_datetime=when,
        contribution_description="Automated vertebral trabecular bone mineral density screening",
    )
    equipment.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.PROCESSING_ALGORITHM)]
    return equipment


def copy_patient_study(target: Dataset, source: Dataset) -> None:
    """Copy the patient and study attributes (and character set) from a source image onto a result object."""
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            target[keyword] = source[keyword]
        elif keyword in target and keyword not in ("StudyInstanceUID",):
            # Leave type 2 attributes highdicom wrote as empty; drop optional ones the source lacks.
            if keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                           "StudyID", "AccessionNumber", "ReferringPhysicianName"):
                target[keyword].value = None
            else:
                del target[keyword]


def add_private_scheme(ds: Dataset) -> None:
    """Declare the private coding scheme in the Coding Scheme Identification Sequence (SOP Common module)."""
    items = list(ds.get("CodingSchemeIdentificationSequence", []))
    if not any(item.get("CodingSchemeDesignator") == codes.PRIVATE_SCHEME for item in items):
        items.append(codes.coding_scheme_identification_item())
    ds.CodingSchemeIdentificationSequence = items


def set_equipment(ds: Dataset, algorithm: AlgorithmInfo) -> None:
    ds.Manufacturer = algorithm.manufacturer
    ds.ManufacturerModelName = algorithm.name
    ds.SoftwareVersions = [algorithm.software_versions, f"{algorithm.model_name} {algorithm.model_version}"]
    ds.DeviceSerialNumber = algorithm.device_serial_number
