"""Decide, from a Probe and site-editable rules, whether a file is scored, excluded (with why) or failed."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from cxrtriage.errors import ConfigError
from cxrtriage.io.discover import Probe
from cxrtriage.io.limits import size_problem
from cxrtriage.results import Status
from cxrtriage.types import InputKind

LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LAT DECUBITUS", "LATERAL DECUBITUS"})

# Non-image SOP class families (PS3.4 B.5): (UID prefix, what it is).
_NON_IMAGE_SOP_PREFIXES = (
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.66", "segmentation, registration or raw data"),
    ("1.2.840.10008.5.1.4.1.1.481.", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document (PDF/CDA/STL)"),
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.9.", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.4.2", "MR spectroscopy"),
    ("1.2.840.10008.5.1.4.1.1.67", "real-world value mapping"),
    ("1.2.840.10008.5.1.4.1.1.68.", "surface / mesh"),
    ("1.2.840.10008.5.1.4.1.1.200.", "protocol / plan"),
    ("1.2.840.10008.5.1.4.1.1.90.", "content assessment"),
    ("1.2.840.10008.5.1.4.1.1.91.", "microscopy bulk annotations"),
    ("1.2.840.10008.5.1.4.38.", "hanging protocol"),
    ("1.2.840.10008.5.1.4.39.", "colour palette"),
    ("1.2.840.10008.5.1.4.43.", "generic implant template"),
    ("1.2.840.10008.5.1.4.1.1.78.", "ophthalmic measurement"),
    ("1.2.840.10008.1.3.10", "DICOMDIR (media directory)"),
)


@dataclass(frozen=True, slots=True)
class SelectionRules:
    """Which files are scored. Values are compared after `normalise` (upper case, separators → one space).

    An empty string in ``body_parts`` / ``views`` means "tag absent or empty is accepted". A ViewPosition is
    accepted when its normalised value, or its first word, is in ``views`` (so ``AP SUPINE``, ``AP_PORTABLE``,
    ``PA-ERECT`` count as AP / PA); a BodyPartExamined when its normalised value or any of its words is in
    ``body_parts`` (``PORT CHEST`` counts as CHEST). Laterals are named as such in the reason.
    """

    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST", "")
    views: tuple[str, ...] = ("PA", "AP", "")
    allow_for_processing: bool = False  # DX "FOR PROCESSING" images are raw detector data
    score_rasters: bool = True  # PNG/JPEG/TIFF/NIfTI... carry no tags to test: score when grey and 2-D

    def __post_init__(self) -> None:
        for name in ("modalities", "body_parts", "views"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"selection rule '{name}' must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(normalise(v) for v in value))
        if not self.modalities:
            raise ConfigError("selection rule 'modalities' is empty: nothing could ever be scored")


def normalise(value: str) -> str:
    """Upper case; underscores, hyphens, slashes and runs of spaces become one space; trimmed."""
    return re.sub(r"[\s_\-/]+", " ", value.upper()).strip()


def load_rules(path: str | Path) -> SelectionRules:
    """Read rules from a TOML file: keys of `SelectionRules`, at top level or under a ``[selection]`` table.

    Example::

        [selection]
        modalities = ["CR", "DX"]
        body_parts = ["CHEST", "THORAX", ""]   # "" accepts a missing BodyPartExamined
        views = ["PA", "AP", ""]

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown key or wrong type (the message names it).
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read selection rules ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML ({exc})") from exc
    table = data.get("selection", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{p}: [selection] must be a table")
    known = {f.name for f in fields(SelectionRules)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown selection key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    kwargs: dict[str, object] = {}
    for key, value in table.items():
        if key in ("allow_for_processing", "score_rasters"):
            if not isinstance(value, bool):
                raise ConfigError(f"{p}: '{key}' must be true or false, got {value!r}")
            kwargs[key] = value
        else:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{p}: '{key}' must be a list of strings, got {value!r}")
            kwargs[key] = tuple(value)
    try:
        return SelectionRules(**kwargs)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Selection:
    """The decision for one file: ``status`` and a human-readable ``reason`` (never empty).

    ``not_an_image``: the file was excluded because it is no image at all (a text file, a folder, a DICOM structured
    report or other non-image object), so it is none of its study's images (see ``ImageRecord.in_study``).
    """

    status: Status
    reason: str
    not_an_image: bool = False


DEFAULT_RULES = SelectionRules()


def select(probe: Probe, rules: SelectionRules = DEFAULT_RULES) -> Selection:
    """Scored, excluded (not a frontal chest radiograph by the rules) or failed (unusable file), with the reason.

    Integrity problems (truncated, unparseable, corrupt header) are ``failed`` even for files the rules
    would exclude, so that damaged transfers are noticed.
    """
    if probe.error:
        return Selection(Status.FAILED, probe.error)
    if probe.not_an_image:
        return Selection(Status.EXCLUDED, probe.not_an_image, not_an_image=True)
    if probe.kind is InputKind.DICOM:
        return _select_dicom(probe, rules)
    if probe.kind in (InputKind.RASTER, InputKind.SITK):
        return _select_other(probe, rules)
    return Selection(Status.FAILED, "not a recognised image file")


def _select_dicom(probe: Probe, rules: SelectionRules) -> Selection:
    info = probe.dicom
    assert info is not None
    sop = info.sop_class_uid
    for prefix, what in _NON_IMAGE_SOP_PREFIXES:
        if sop.startswith(prefix):
            return Selection(Status.EXCLUDED, f"non-image object: {_sop_name(sop, what)}", not_an_image=True)
    if not probe.has_pixel_data:
        return Selection(Status.EXCLUDED, f"no pixel data ({_sop_name(sop) if sop else 'no SOP Class UID'})")
    if not info.rows or not info.columns:
        return Selection(Status.FAILED, "pixel data present but Rows/Columns missing or zero: corrupt header")
    modality = normalise(info.modality)
    if modality not in rules.modalities:
        shown = f"Modality '{info.modality}'" if modality else "Modality missing"
        return Selection(Status.EXCLUDED, f"{shown} not accepted (accepted: {', '.join(rules.modalities)})")
    if probe.colour:
        return Selection(Status.EXCLUDED, f"colour image (PhotometricInterpretation '{info.photometric_interpretation}', "
                                     f"{info.samples_per_pixel} sample(s) per pixel); expected MONOCHROME1/2")
    if not info.photometric_interpretation:
        return Selection(Status.FAILED, "PhotometricInterpretation missing: pixels cannot be interpreted")
    if info.number_of_frames > 1:
        return Selection(Status.EXCLUDED, f"multi-frame object ({info.number_of_frames} frames), not a single radiograph")
    body = normalise(info.body_part_examined)
    if not _body_ok(body, rules):
        return Selection(Status.EXCLUDED, f"not a chest: BodyPartExamined '{info.body_part_examined}' "
                                     f"(accepted: {_accepted(rules.body_parts)})")
    view = normalise(info.view_position)
    if not _view_ok(view, rules):
        if view in LATERAL_VIEWS or view.split(" ")[0] in LATERAL_VIEWS:
            return Selection(Status.EXCLUDED, f"lateral view: ViewPosition '{info.view_position}' "
                                         f"(accepted: {_accepted(rules.views)})")
        return Selection(Status.EXCLUDED, f"ViewPosition '{info.view_position}' not accepted "
                                     f"(accepted: {_accepted(rules.views)})")
    if probe.presentation_intent == "FOR PROCESSING" and not rules.allow_for_processing:
        return Selection(Status.EXCLUDED, "PresentationIntentType FOR PROCESSING (raw detector data, not for display)")
    problem = size_problem(info.rows, info.columns, frames=info.number_of_frames,
                           samples=info.samples_per_pixel, bytes_per_sample=max(((probe.bits or 16) + 7) // 8, 1),
                           reader="dicom", encoded_bytes=probe.file_size)
    if problem:
        return Selection(Status.FAILED, problem)
    view_txt = info.view_position or "view absent"
    body_txt = info.body_part_examined or "body part absent"
    return Selection(Status.SCORED, f"{info.modality} {body_txt} {view_txt}")


def _select_other(probe: Probe, rules: SelectionRules) -> Selection:
    what = probe.fmt.upper() or probe.kind.value
    if not rules.score_rasters:
        return Selection(Status.EXCLUDED, f"{what} file: the site rules score DICOM only (score_rasters = false)")
    if probe.frames > 1:
        return Selection(Status.EXCLUDED, f"{what} volume ({probe.size_text}), not a 2-D radiograph")
    if probe.colour:
        return Selection(Status.EXCLUDED, f"{what} with colour content, not a greyscale radiograph")
    if probe.rows is None or probe.columns is None:
        return Selection(Status.FAILED, f"{what} size unknown")
    problem = size_problem(probe.rows, probe.columns, samples=probe.samples_per_pixel,
                           bytes_per_sample=max(((probe.bits or 8) + 7) // 8, 1),
                           reader="sitk" if probe.kind is InputKind.SITK else "raster", encoded_bytes=probe.file_size)
    if problem:
        return Selection(Status.FAILED, problem)
    return Selection(Status.SCORED, f"{what} image (no DICOM tags to check: assumed a frontal chest radiograph)")


def _body_ok(body: str, rules: SelectionRules) -> bool:
    if body in rules.body_parts:
        return True
    return bool(body) and any(word in rules.body_parts for word in body.split(" ") if word)


def _view_ok(view: str, rules: SelectionRules) -> bool:
    if view in rules.views:
        return True
    return bool(view) and view.split(" ")[0] in rules.views and view not in LATERAL_VIEWS


def _accepted(values: tuple[str, ...]) -> str:
    shown = [v for v in values if v]
    return ", ".join(shown) + (" or absent" if "" in values else "")


def _sop_name(sop: str, family: str = "") -> str:
    """'Basic Text SR Storage (1.2...)'; the family name when pydicom does not know the UID."""
    from pydicom.uid import UID

    name = UID(sop).name if sop else ""
    if name and name != sop:
        return f"{name} ({sop})"
    return f"{family} ({sop})" if family else (sop or "unknown SOP class")
