"""Write a phantom as a CT Image Storage series (uncompressed or JPEG 2000 lossless) and its NIfTI label map."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless

if TYPE_CHECKING:
    from service.domain.volume import CTVolume
    from service.offline.phantom.api import Phantom

logger = logging.getLogger(__name__)

RESCALE_INTERCEPT = -1024.0
STUDY_DATE = dt.date(2026, 1, 15)
"""Fixed study date: the series must be byte-identical for a seed."""


def _age_string(age_years: float) -> str:
    return f"{int(age_years):03d}Y"


def write_series(phantom: Phantom, out_dir: Path, *, jpeg2000: bool = False) -> list[Path]:
    """One CT Image Storage file per slice, named by InstanceNumber (``0001.dcm``...); returns the paths."""
    vol = phantom.volume
    out_dir.mkdir(parents=True, exist_ok=True)
    nz = vol.shape[2]
    stored = np.clip(np.rint(vol.hu - RESCALE_INTERCEPT), 0, 4095).astype(np.uint16)
    paths = []
    for k in range(nz):
        instance = phantom.instance_numbers[k] if phantom.instance_numbers else k + 1
        ds = Dataset()
        ds.file_meta = _file_meta(vol.sop_instance_uids[k])
        _set_study_and_patient(ds, phantom, k)
        _set_acquisition(ds, phantom)
        _set_geometry(ds, phantom, k, instance)
        _set_pixel_description(ds, vol)
        # pixel data: rows x columns, i.e. the transpose of hu[:, :, k]
        frame = np.ascontiguousarray(stored[:, :, k].T)
        if jpeg2000:
            # keep the SOP Instance UID of the truth (pydicom would make a new one by default)
            ds.compress(JPEG2000Lossless, frame, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        else:
            ds.PixelData = frame.tobytes()
            ds["PixelData"].VR = "OW"
        path = out_dir / f"{int(instance):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "BMDNODE_PHANTOM"
    return meta


def _set_study_and_patient(ds: Dataset, phantom: Phantom, k: int) -> None:
    """SOP, study, series, equipment and patient attributes of slice ``k`` (fixed dates: byte-identical series)."""
    vol = phantom.volume
    truth = phantom.truth
    acq = truth["acquisition"]
    patient = truth["patient"]
    nz = vol.shape[2]
    seed = int(truth["seed"])
    birth = STUDY_DATE.replace(year=STUDY_DATE.year - int(patient["age_years"]) - 1)
    description = {"chest": "Chest", "abdomen": "Abdomen", "chest-abdomen": "Chest-Abdomen"}[acq["region"]]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = vol.sop_instance_uids[k]
    ds.StudyDate = STUDY_DATE.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.AcquisitionDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = "093000"
    ds.SeriesTime = "093100"
    ds.AcquisitionTime = f"0931{(k * 60 // max(nz, 1)):02d}"
    ds.ContentTime = ds.AcquisitionTime
    ds.AccessionNumber = f"PH{seed % 10**10:010d}"
    ds.Modality = "CT"
    ds.Manufacturer = vol.manufacturer
    ds.InstitutionName = "bmd-node synthetic"
    ds.ReferringPhysicianName = ""
    ds.StationName = vol.station_name
    ds.StudyDescription = f"CT {description} (synthetic phantom)"
    ds.SeriesDescription = f"{description} {acq['slice_thickness_mm']:g}mm {acq['convolution_kernel']}"
    ds.ManufacturerModelName = vol.manufacturer_model_name
    ds.PatientName = f"PHANTOM^{seed}"
    ds.PatientID = f"PHANTOM-{seed}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = patient["sex"]
    ds.PatientAge = _age_string(patient["age_years"])


def _set_acquisition(ds: Dataset, phantom: Phantom) -> None:
    """CT acquisition and reconstruction attributes, contrast."""
    vol = phantom.volume
    truth = phantom.truth
    acq = truth["acquisition"]
    sx = vol.spacing_mm[0]
    nx = vol.shape[0]
    ds.BodyPartExamined = {"chest": "CHEST", "abdomen": "ABDOMEN", "chest-abdomen": "CHEST"}[acq["region"]]
    ds.SliceThickness = f"{acq['slice_thickness_mm']:g}"
    ds.KVP = str(acq["kvp"])
    ds.DataCollectionDiameter = f"{500.0:g}"
    ds.SoftwareVersions = f"bmd-node phantom {truth['generator']['version']}"
    ds.ReconstructionDiameter = f"{nx * sx:.3f}"
    ds.DistanceSourceToDetector = "1040"
    ds.DistanceSourceToPatient = "570"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = str(60 if acq["low_dose"] else 200)
    ds.Exposure = str(30 if acq["low_dose"] else 100)
    ds.ConvolutionKernel = vol.convolution_kernel
    ds.PatientPosition = acq["patient_position"]
    if bool(acq["contrast"]):
        ds.ContrastBolusAgent = "IODINE"
        ds.ContrastBolusRoute = "IV"


def _set_geometry(ds: Dataset, phantom: Phantom, k: int, instance: int) -> None:
    """Study/series identity, InstanceNumber and the plane of slice ``k``."""
    vol = phantom.volume
    seed = int(phantom.truth["seed"])
    aff = vol.affine_lps
    sx, sy, _sz = vol.spacing_mm
    row_dir = aff[:3, 0] / sx
    col_dir = aff[:3, 1] / sy
    ds.StudyInstanceUID = vol.study_instance_uid
    ds.SeriesInstanceUID = vol.series_instance_uid
    ds.StudyID = f"{seed % 10**6}"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = int(instance)
    position = aff[:3, 3] + aff[:3, 2] * k
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
    ds.FrameOfReferenceUID = vol.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{position[2]:.4f}"


def _set_pixel_description(ds: Dataset, vol: CTVolume) -> None:
    """Image pixel module (12 bits stored, rescaled to HU) and a soft-tissue window."""
    sx, sy, _sz = vol.spacing_mm
    nx, ny, _nz = vol.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"


def write_labels_nifti(phantom: Phantom, path: Path) -> Path:
    """labels.nii.gz on the volume grid: array (i, j, k) as in CTVolume, affine converted LPS -> RAS."""
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ phantom.volume.affine_lps
    img = nib.Nifti1Image(phantom.labels.astype(np.int16), ras)
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path
