"""DICOM Segmentation (BINARY) of the lung label map, referencing the source image, via highdicom."""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxrtriage.report import dicom_common as common
from cxrtriage.report.dicom_common import AlgorithmInfo

# CID 7150 "Segmentation Property Categories": Anatomical Structure.
CATEGORY = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
DISPLAY_COLOURS = ((255, 200, 0), (0, 200, 255), (120, 255, 120), (255, 120, 255))


def build_seg(
    source: Dataset, labels: NDArray[np.uint8], label_names: tuple[str, ...], algo: AlgorithmInfo, *,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """A BINARY SEG with one segment per non-zero label present in ``labels`` (the source image's grid).

    ``label_names[k]`` names label value ``k`` (``label_names[0]`` is the background); a value without a
    name becomes "lung region k".
    """
    rows, cols = int(source.Rows), int(source.Columns)
    if labels.shape != (rows, cols):
        raise ValueError(f"lung mask is {labels.shape}, the source image is {(rows, cols)}: they must match")
    values = [int(v) for v in np.unique(labels) if v != 0]
    if not values:
        raise ValueError("lung mask is empty: no segment to store")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algo.name[:64], family=codes.cid7162.ArtificialIntelligence, version=algo.version[:64],
        source=common.MANUFACTURER, parameters=dict(algo.parameters) or None,
    )
    descriptions: list[hd.seg.SegmentDescription] = []
    segmap = np.zeros((1, rows, cols), dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        name = label_names[value] if value < len(label_names) else f"lung region {value}"
        segmap[0][labels == value] = number
        r, g, b = DISPLAY_COLOURS[(number - 1) % len(DISPLAY_COLOURS)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=CATEGORY,
            segmented_property_type=common.anatomy_code(name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=common.stable_uid("segment", str(source.SOPInstanceUID), name, algo.name, algo.version),
            tracking_id=f"{name} (AI segmentation)"[:64],
            display_color=hd.color.CIELabColor.from_rgb(r, g, b),
        ))
    series_uid, sop_uid = common.result_uids("seg", source, algo)
    geometry_source = source
    spacing = source.get("PixelSpacing")
    if spacing is not None and (len(spacing) != 2 or any(float(v) <= 0 for v in spacing)):
        # e.g. 0\0 meaning "unknown": do not copy an invalid spacing into the SEG's Pixel Measures
        geometry_source = copy.deepcopy(source)
        del geometry_source.PixelSpacing
    seg = hd.seg.Segmentation(
        source_images=[geometry_source],
        pixel_array=segmap,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=common.SERIES_NUMBERS["seg"],
        sop_instance_uid=sop_uid,
        instance_number=instance_number,  # the image's place in its study: one series holds them all
        manufacturer=common.MANUFACTURER,
        manufacturer_model_name=algo.name[:64],
        software_versions=algo.versions,  # type: ignore[arg-type]  # LO, multi-valued
        device_serial_number=algo.sha256[:16] or "unknown",
        content_description="AI lung segmentation - not for diagnosis"[:64],
        content_label="LUNGS",
        series_description=common.series_description("seg"),
        omit_empty_frames=True,
    )
    # highdicom copied the patient and study modules and SpecificCharacterSet from the source (seg/sop.py:507-541).
    # General Image PatientOrientation (Type 2C): highdicom's SEG does not write it; the source's, empty when unknown.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    common.set_contributing_equipment(seg, algo)
    return seg
