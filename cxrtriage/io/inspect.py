"""Everything cxrtriage reads from one file, and what it would do with it (backs `cxrtriage inspect`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.errors import InputError
from cxrtriage.io.discover import Probe, probe_with_header, study_key
from cxrtriage.io.selection import DEFAULT_RULES, SelectionRules, select
from cxrtriage.results import Status
from cxrtriage.types import Image2D, InputKind


@dataclass(frozen=True, slots=True)
class InspectReport:
    """Technical facts about one input (never patient names or IDs) and the selection decision."""

    path: str
    kind: str
    fmt: str
    status: str
    reason: str
    study_key: str
    size: str
    rows: int | None = None
    columns: int | None = None
    frames: int = 1
    samples_per_pixel: int = 1
    sop_class: str = ""
    modality: str = ""
    body_part: str = ""
    view: str = ""
    laterality: str = ""
    presentation_intent: str = ""
    photometric: str = ""
    bits_allocated: int | None = None
    bits_stored: int | None = None
    pixel_representation: int | None = None
    transfer_syntax: str = ""
    transfer_syntax_uid: str = ""
    transfer_syntax_assumed: bool = False
    decoder: str = ""
    modality_lut: str = ""
    monochrome1_inverted: bool = False
    voi: str = ""
    pixel_spacing_mm: tuple[float, float] | None = None
    spacing_source: str = ""
    value_range: tuple[float, float] | None = None
    pixel_min: float | None = None
    pixel_max: float | None = None
    read_error: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    reduced_decode: str = ""  # how predict decodes it for the model's needs (``max_scale``): reduced or full, and why
    quality: tuple[str, ...] = ()  # what ``image_checks`` (the caller's: predict's image quality checks) said

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_file(path: str | Path, rules: SelectionRules = DEFAULT_RULES, *,
                 max_scale: Callable[[tuple[int, int]], float] | None = None,
                 image_checks: Callable[[Image2D], Iterable[str]] | None = None) -> InspectReport:
    """Probe, select and (whatever the selection) try to read ``path``; never raises for a bad file.

    With ``max_scale`` (a model's needs, as `predict` asks them: `cxrtriage.preprocess.PixelNeeds`) the file is
    read a second time that way, and ``reduced_decode`` says which path was used: the resolution decoded and the
    decoder, or why the image was decoded in full. ``image_checks`` (one line per check; the command passes
    `cxrtriage.measure.quality`'s, which this layer may not import) fills ``quality``, on the image as `predict`
    reads it: the reduced read when there is one.
    """
    pr, header = probe_with_header(path)
    sel = select(pr, rules)
    base: dict[str, Any] = _probe_fields(pr)
    base.update(status=sel.status, reason=sel.reason)
    if sel.not_an_image:  # as in predict's results: a README or a DICOM SR is none of its study's images
        base["study_key"] = ""
    if pr.error or pr.kind is InputKind.UNKNOWN or pr.not_an_image:
        return InspectReport(**base, notes=pr.notes)
    try:
        if pr.kind is InputKind.DICOM:
            from cxrtriage.io.dicom import read_dicom_detailed

            image, facts = read_dicom_detailed(pr.path, header=header)
            base.update(bits_allocated=facts.bits_allocated, bits_stored=facts.bits_stored,
                        pixel_representation=facts.pixel_representation, transfer_syntax=facts.transfer_syntax_name,
                        transfer_syntax_uid=facts.transfer_syntax, decoder=facts.decoder,
                        modality_lut=facts.modality_lut, monochrome1_inverted=facts.inverted, voi=facts.voi,
                        spacing_source=facts.spacing_source)
        else:
            from cxrtriage.io.read import read_image

            image = read_image(pr.path)
            base.update(decoder="OpenCV" if pr.kind is InputKind.RASTER else "SimpleITK", modality_lut="n/a",
                        voi="none", spacing_source="image header" if image.pixel_spacing_mm else "")
    except InputError as exc:
        msg = str(exc)
        prefix = f"{pr.path}: "
        error = msg[len(prefix):] if msg.startswith(prefix) else msg
        if sel.status is Status.SCORED:  # predict reads it, fails, and says so: the decision is predict's
            base.update(status=Status.FAILED, reason=error)
        return InspectReport(**base, read_error=error, notes=pr.notes)
    checked: Image2D | None = image
    if max_scale is not None and sel.status is not Status.SCORED:  # predict never reads its pixels
        base["reduced_decode"] = f"not decoded: predict leaves this file out ({sel.status.value}, see decision)"
    elif max_scale is not None:
        base["reduced_decode"], checked = _reduced_path(pr, max_scale)
    if image_checks is not None and checked is not None:
        base["quality"] = tuple(image_checks(checked))
    return InspectReport(**base, **_image_fields(image))


def _reduced_path(pr: Probe, max_scale: Callable[[tuple[int, int]], float]) -> tuple[str, Image2D | None]:
    """How the file is decoded for consumers that accept ``max_scale`` ('1/8: 231x245 decoded of 1841x1955 by ...'),
    and the image so read (None when it cannot be read that way)."""
    try:
        if pr.kind is InputKind.DICOM:
            from cxrtriage.io.dicom import read_dicom_detailed

            image, facts = read_dicom_detailed(pr.path, max_scale=max_scale)
            return (f"{facts.reduction} by {facts.decoder}" if image.reduced else facts.reduction), image
        if pr.kind is InputKind.RASTER:
            from cxrtriage.io.raster import read_raster_detailed

            image, how = read_raster_detailed(pr.path, pr.fmt, max_scale=max_scale)
            return how, image
        from cxrtriage.io.read import read_image

        image = read_image(pr.path, max_scale=max_scale)
    except InputError as exc:
        return f"not readable that way ({exc})", None
    if image.reduced:
        from cxrtriage.io.reduced import averaged_text

        return averaged_text(image.scale, image.pixels.shape, image.shape, "by SimpleITK"), image
    return "none: the consumers need the full resolution", image


def _probe_fields(pr: Probe) -> dict[str, Any]:
    d = pr.dicom
    out: dict[str, Any] = {
        "path": str(pr.path), "kind": pr.kind.value, "fmt": pr.fmt, "study_key": study_key(pr), "size": pr.size_text,
        "rows": pr.rows, "columns": pr.columns, "frames": pr.frames, "samples_per_pixel": pr.samples_per_pixel,
        "presentation_intent": pr.presentation_intent, "transfer_syntax_assumed": pr.assumed_transfer_syntax is not None,
        "bits_allocated": pr.bits,
    }
    if d is not None:
        from pydicom.uid import UID

        out.update(sop_class=(UID(d.sop_class_uid).name if d.sop_class_uid else ""), modality=d.modality,
                   body_part=d.body_part_examined, view=d.view_position, laterality=d.image_laterality,
                   photometric=d.photometric_interpretation, bits_stored=d.bits_stored or None,
                   transfer_syntax_uid=d.transfer_syntax_uid or (pr.assumed_transfer_syntax or ""),
                   transfer_syntax=UID(d.transfer_syntax_uid or pr.assumed_transfer_syntax or "").name)
    elif pr.kind is InputKind.RASTER:
        out.update(photometric="grey" if pr.samples_per_pixel in (1, 2) else ("colour" if pr.colour else "grey-in-RGB"),
                   bits_stored=pr.bits, bits_allocated=None)
    return out


def _image_fields(image: Image2D) -> dict[str, Any]:
    px = image.pixels
    return {"pixel_spacing_mm": image.pixel_spacing_mm, "value_range": image.value_range,
                "pixel_min": float(np.min(px)), "pixel_max": float(np.max(px)), "notes": image.notes}
