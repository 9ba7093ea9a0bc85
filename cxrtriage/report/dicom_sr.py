"""Comprehensive SR (TID 1500 Measurement Report) with one image-level group per finding, via highdicom."""

from __future__ import annotations

from dataclasses import replace

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxrtriage.report import dicom_common as common
from cxrtriage.report.dicom_common import AlgorithmInfo
from cxrtriage.report.study import Finding

PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
UNIT_PROBABILITY = hd.sr.CodedConcept("{probability}", "UCUM", "probability")
LUNG = hd.sr.CodedConcept("39607008", "SCT", "Lung")


def _algorithm_id(algo: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    params = [f"{k}={v}" for k, v in sorted(algo.parameters.items())] or None
    return hd.sr.AlgorithmIdentification(name=algo.name[:64], version=algo.version[:64], parameters=params)


def build_sr(
    source: Dataset,
    findings: tuple[Finding, ...],
    algo: AlgorithmInfo,
    *,
    lung_area_mm2: float | None = None,
    segmenter: AlgorithmInfo | None = None,
    priority: str = "",
    priority_reason: str = "",
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """A TID 1500 report about one source image.

    Per scored finding: an image-level group (TID 1501) whose finding type is the finding, with the
    calibrated score as a Probability measurement and a qualitative evaluation present/absent at the
    threshold in force (thresholds are listed in the algorithm parameters); plus a lung-area group when the area is known.
    The source image is the evidence and each group's source image. The image's triage ``priority`` and the reason
    (the threshold that decided it) are algorithm parameters beside the thresholds.

    A finding that is reported only (`Finding.reported_only`: not validated for the patient's population, so it did
    not move the priority) gets its probability but no present/absent: a "Present" in a PACS would read as a
    validated claim. Its tracking identifier says why.
    """
    src_ref = [hd.sr.SourceImageForMeasurementGroup.from_source_image(source)]
    extra = {k: v for k, v in (("priority", priority), ("priority_reason", priority_reason)) if v}
    reported_only = sorted(f.label for f in findings if f.reported_only and f.score is not None)
    if reported_only:
        extra["reported_only"] = ", ".join(reported_only)
    if extra:
        algo = replace(algo, parameters={**algo.parameters, **extra})
    algorithm = _algorithm_id(algo)
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    for f in findings:
        if f.score is None:
            continue
        concept = common.finding_code(f.label, algo)
        measurements = [hd.sr.Measurement(name=PROBABILITY, value=round(float(f.score), 6), unit=UNIT_PROBABILITY,
                                          algorithm_id=algorithm)]
        qualitative = []
        if f.threshold is not None and not f.reported_only:  # the threshold is an algorithm parameter too
            value = codes.SCT.Present if f.positive else codes.SCT.Absent
            qualitative.append(hd.sr.QualitativeEvaluation(name=concept, value=value))
        identifier = (f"{f.label} (reported only: not validated for {f.population})" if f.reported_only
                      else f"{f.label} ({f.threshold_kind} threshold)")
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=common.stable_uid("tracking", str(source.SOPInstanceUID), f.label, algo.name, algo.version),
                identifier=identifier[:64],
            ),
            finding_type=concept,
            finding_category=codes.SCT.Finding,
            algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=qualitative or None,
            source_images=src_ref,
        ))
    if lung_area_mm2 is not None:
        seg_algo = segmenter or algo
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=common.stable_uid("tracking", str(source.SOPInstanceUID), "lung-area", seg_algo.name),
                identifier="Lung area (segmentation)",
            ),
            finding_type=LUNG,
            algorithm_id=_algorithm_id(seg_algo),
            measurements=[hd.sr.Measurement(
                name=codes.SCT.Area, value=round(float(lung_area_mm2), 2), unit=codes.UCUM.SquareMillimeter,
                finding_sites=[hd.sr.FindingSite(LUNG)], algorithm_id=_algorithm_id(seg_algo),
            )],
            source_images=src_ref,
        ))
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=common.stable_uid("device", algo.name, algo.version, algo.sha256),
            name=algo.name[:64],
            manufacturer_name=common.MANUFACTURER,
            model_name=f"{algo.name} {algo.version}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    series_uid, sop_uid = common.result_uids("sr", source, algo)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=series_uid,
        series_number=common.SERIES_NUMBERS["sr"],
        sop_instance_uid=sop_uid,
        instance_number=instance_number,  # the image's place in its study: one series holds them all
        manufacturer=common.MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=common.series_description("sr"),
        manufacturer_model_name=algo.name[:64],
        software_versions=algo.versions,
        coding_schemes=common.coding_schemes(),
    )
    # highdicom copied the patient and study modules and SpecificCharacterSet from the evidence (sr/sop.py:167-194, 278)
    common.set_contributing_equipment(sr, algo)
    return sr
