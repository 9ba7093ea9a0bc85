"""Secondary Capture (RGB) with the overlay and a legend burned in, for PACS that show nothing else."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from cxrtriage.report import dicom_common as common
from cxrtriage.report.dicom_common import AlgorithmInfo


def build_sc(source: Dataset, rgb: NDArray[np.uint8], algo: AlgorithmInfo, *, description: str = "") -> hd.sc.SCImage:
    """An RGB Secondary Capture in the source study: ImageType DERIVED\\SECONDARY, BurnedInAnnotation YES.

    ``rgb`` is the finished picture (image, overlay, legend) as uint8 [rows, columns, 3].
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"secondary capture needs a uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    series_uid, sop_uid = common.result_uids("sc", source, algo)
    orientation = source.get("PatientOrientation")
    known = orientation is not None and len(orientation) == 2 and all(str(v) for v in orientation)
    # highdicom insists on an orientation for PATIENT coordinates; when the source has none we must not
    # invent one: a placeholder is replaced below by an empty value (Type 2: known to be unknown).
    patient_orientation = tuple(str(v) for v in orientation) if known else ("L", "F")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=common.SERIES_NUMBERS["sc"],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=common.MANUFACTURER,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description=common.series_description("sc"),
        manufacturer_model_name=algo.name[:64],
        software_versions=algo.versions,
        patient_orientation=patient_orientation,  # type: ignore[arg-type]
    )
    if not known:
        setattr(sc, "PatientOrientation", "")  # noqa: B010  (Type 2: empty = unknown)
    common.copy_patient_study(source, sc)
    common.set_contributing_equipment(sc, algo)
    lat = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "")
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    if lat in ("R", "L"):
        sc.Laterality = lat
    elif not source.get("BodyPartExamined"):
        sc.Laterality = ""  # Type 2C: body part unknown, so whether it is paired is unknown too
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = source.get("RecognizableVisualFeatures", "NO") or "NO"
    sc.DerivationDescription = (description or f"Model output of {algo.name} {algo.version} burned into a copy of "
                                "the source image; decision support, not for diagnosis")[:1024]
    sc.ImageComments = "NOT FOR DIAGNOSIS: AI decision-support overlay; review the original image."
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    common.content_date_time(sc)
    return sc
