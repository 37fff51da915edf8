"""What every result object shares: who made it (IHE AIR), patient and study attributes copied from the source."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from service.domain.identity import NODE_MANUFACTURER
from service.domain.volume import CTVolume
from service.results import codes
from service.series.multiframe import frame_number
from service.series.volume_loader import read_slice_headers

# Series numbers of the result series (one series per object type, same study as the CT).
SEG_SERIES_NUMBER = 9801
SR_SERIES_NUMBER = 9802
KEY_IMAGE_SERIES_NUMBER = 9803

_SAME_POSITION_MM = 0.01
"""Two frames of one instance whose ImagePositionPatient differ by less than this are at the same position."""

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


def read_source_headers(volume: CTVolume) -> list[Dataset]:
    """The source CT headers in slice order (pixel data not read), one per slice k of ``volume``.

    Each file is read once: ``volume.source_paths`` repeats a multi-frame instance's file for each of its frames, and
    the reader expands such an instance into one header per frame (``service.series.multiframe.FrameHeader``).
    Slice k's frame is the frame of instance ``volume.sop_instance_uids[k]`` whose ImagePositionPatient is slice k's
    position on the volume grid. The pipeline passes the loader's own headers (``LoadedSeries.headers``) instead.
    """
    paths = volume.source_paths
    if not paths:
        raise ValueError("source_paths is empty: result objects need the source CT files")
    # The loader's reader: it also takes SOP Class/Instance UIDs from the file meta when a de-identified file left
    # them empty in the dataset (e.g. ../shared/data/ts_abdomen_slab_j2k), as the volume did.
    unique = list(dict.fromkeys(Path(p) for p in paths))
    headers, header_paths = read_slice_headers(unique)
    by_path: dict[Path, list[Dataset]] = {}
    for header, path in zip(headers, header_paths, strict=True):
        by_path.setdefault(path, []).append(header)
    if all(len(found) == 1 and frame_number(found[0]) is None for found in by_path.values()):
        return [by_path[Path(p)][0] for p in paths]  # single-frame: one file per slice, as given
    positions = {path: np.array([h.ImagePositionPatient for h in found], dtype=float).reshape(-1, 3)
                 for path, found in by_path.items()}
    return [_frame_at_slice(volume, k, by_path[Path(p)], positions[Path(p)]) for k, p in enumerate(paths)]


def _frame_at_slice(volume: CTVolume, k: int, candidates: Sequence[Dataset],
                    positions_mm: np.ndarray) -> Dataset:
    """The header among one file's (``candidates``, at ``positions_mm``) whose position is slice k's; ValueError
    when none or two are."""
    if len(candidates) == 1 and frame_number(candidates[0]) is None:
        return candidates[0]
    distances = np.linalg.norm(positions_mm - volume.index_to_lps([0.0, 0.0, float(k)]), axis=1)
    order = np.argsort(distances, kind="stable")
    best = candidates[int(order[0])]
    if distances[order[0]] > 0.5 * volume.spacing_mm[2]:
        raise ValueError(f"slice {k}: no frame of instance {best.SOPInstanceUID} lies at its position "
                         f"(nearest {distances[order[0]]:.2f} mm away)")
    other = candidates[int(order[1])] if len(order) > 1 else None
    if other is not None and np.linalg.norm(positions_mm[order[1]] - positions_mm[order[0]]) < _SAME_POSITION_MM:
        raise ValueError(f"slice {k}: frames {frame_number(best)} and {frame_number(other)} of instance "
                         f"{best.SOPInstanceUID} are both at its position (two acquisitions in one instance); pass "
                         "the loader's headers (LoadedSeries.headers) as source_headers")
    if volume.sop_instance_uids and str(best.SOPInstanceUID) != volume.sop_instance_uids[k]:
        raise ValueError(f"slice {k}: its file holds instance {best.SOPInstanceUID}, the volume names "
                         f"{volume.sop_instance_uids[k]}")
    return best


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


def report_sr(content: hd.sr.MeasurementReport, *, evidence: Sequence[Dataset], source_header: Dataset,
              series_number: int, series_description: str, procedure: object, algorithm: AlgorithmInfo,
              when: dt.datetime) -> hd.sr.Comprehensive3DSR:
    """A node report as Comprehensive 3D SR in its own series of the source study: COMPLETE, PRELIMINARY,
    UNVERIFIED, the algorithm as contributing equipment, patient/study copied, the private scheme declared."""
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=content,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        performed_procedure_codes=[procedure],
        contributing_equipment=[contributing_equipment(algorithm, when)],
        series_description=series_description,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.software_versions,
        device_serial_number=algorithm.device_serial_number,
        content_date=when.date(),
        content_time=when.time().replace(microsecond=0),
    )
    copy_patient_study(sr, source_header)
    add_private_scheme(sr)
    return sr


def secondary_capture(pixels: np.ndarray, *, source_header: Dataset, series_number: int, series_description: str,
                      patient_orientation: tuple[str, str], algorithm: AlgorithmInfo,
                      when: dt.datetime) -> hd.sc.SCImage:
    """An RGB Secondary Capture in its own series of the source study, with the node as equipment; Patient
    Orientation emptied (type 2C: a composite or a page of text has no single orientation; highdicom needs one to
    build a PATIENT image), derived / secondary, no laterality, no burned-in patient data."""
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=patient_orientation,
        study_instance_uid=str(source_header.StudyInstanceUID),
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        series_description=series_description,
        contributing_equipment=[contributing_equipment(algorithm, when)],
        content_date=when.date(),
        content_time=when.time(),
    )
    sc.PatientOrientation = None
    copy_patient_study(sc, source_header)
    set_equipment(sc, algorithm)
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.Laterality = None  # type 2C in General Series; the spine is unpaired (empty value)
    sc.BurnedInAnnotation = "NO"
    sc.RecognizableVisualFeatures = "NO"
    return sc
