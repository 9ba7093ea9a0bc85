"""Secondary Capture (RGB) with the overlay and a legend burned in, for PACS that show nothing else."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit

from cxrtriage.report import dicom_common as common
from cxrtriage.report.dicom_common import AlgorithmInfo

_BIPED = frozenset(v.value for v in hd.PatientOrientationValuesBiped)
# highdicom 0.28 requires an orientation for PATIENT coordinates and takes one letter per value only
# (highdicom/sc/sop.py:247-283): a source orientation it cannot take is written after construction instead.
_PLACEHOLDER = ("L", "F")


def _source_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's PatientOrientation when it is a valid biped value (oblique ones such as "LP" too), else None."""
    values = tuple(str(v) for v in source.get("PatientOrientation") or ())
    if len(values) == 2 and all(v and set(v) <= _BIPED for v in values):
        return values[0], values[1]
    return None


def build_sc(source: Dataset, rgb: NDArray[np.uint8], algo: AlgorithmInfo, *, description: str = "",
             instance_number: int = 1) -> hd.sc.SCImage:
    """A colour Secondary Capture in the source study: ImageType DERIVED\\SECONDARY, BurnedInAnnotation YES.

    ``rgb`` is the finished picture (image, overlay, legend) as uint8 [rows, columns, 3]; its rows and columns
    run the way the source's do, so it carries the source's PatientOrientation (empty when that is unknown).

    The pixels are JPEG baseline compressed (highdicom encodes at quality 95, YBR_FULL_422): a 2048 px picture
    with its legend is ~0.5-1 MB instead of ~16 MB uncompressed. The picture is decision support, not for
    diagnosis, and says so; Lossy Image Compression (0028,2110) "01" with its ratio and method records it.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"secondary capture needs a uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    series_uid, sop_uid = common.result_uids("sc", source, algo)
    orientation = _source_orientation(source)
    single_letters = orientation is not None and all(len(v) == 1 for v in orientation)
    laterality = str(source.get("Laterality") or "")
    date, time = common.creation_stamp()
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="YBR_FULL_422",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=common.SERIES_NUMBERS["sc"],
        sop_instance_uid=sop_uid,
        instance_number=instance_number,  # the image's place in its study: one series holds them all
        manufacturer=common.MANUFACTURER,
        laterality=laterality if laterality in ("R", "L") else None,
        patient_orientation=orientation if single_letters else _PLACEHOLDER,
        transfer_syntax_uid=JPEGBaseline8Bit,
        series_description=common.series_description("sc"),
        manufacturer_model_name=algo.name[:64],
        software_versions=algo.versions,
        content_date=date,
        content_time=time,
        series_date=date,
        series_time=time,
    )
    # Written after construction: highdicom 0.28 has no parameter for any of these.
    if not single_letters:  # the placeholder never stays: the source's oblique value, or empty (Type 2: unknown)
        sc.PatientOrientation = list(orientation) if orientation else ""  # type: ignore[assignment]
    # from_ref_dataset copies only the ten Type 1/2 patient/study attributes it passes to the constructor
    # (sc/sop.py:567-591); highdicom's own copy adds the rest of the modules, as its SR and SEG do.
    sc.copy_patient_and_study_information(source)
    common.set_contributing_equipment(sc, algo)  # IHE AIR item: see dicom_common.contributing_equipment
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    elif "Laterality" not in sc:  # Type 2C: body part unknown, so whether it is paired is unknown too
        sc.Laterality = ""
    if source.get("ImageLaterality"):  # image level stays image level: a series Laterality is barred for CHEST
        sc.ImageLaterality = source.ImageLaterality
    sc.ImageType = ["DERIVED", "SECONDARY"]  # highdicom writes an optional third value OTHER; kept at the two documented
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = source.get("RecognizableVisualFeatures", "NO") or "NO"
    sc.DerivationDescription = (description or f"Model output of {algo.name} {algo.version} burned into a copy of "
                                "the source image; decision support, not for diagnosis")[:1024]
    sc.ImageComments = "NOT FOR DIAGNOSIS: AI decision-support overlay; review the original image."
    # PS3.3 C.7.6.1.1.5: once lossy compressed, always marked so (highdicom 0.28 leaves these out for an SC)
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionRatio = f"{rgb.nbytes / max(1, _encoded_bytes(sc)):.2f}"[:16]
    sc.LossyImageCompressionMethod = "ISO_10918_1"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def _encoded_bytes(sc: Dataset) -> int:
    """Bytes of the encapsulated pixel data (the JPEG stream)."""
    value = sc.get("PixelData")
    return len(value) if isinstance(value, bytes | bytearray) else 0
