"""The model manifest: every fact about a model lives here, beside its ONNX file, never in code.

A manifest is ``manifest.json`` in a model folder (``models/<name>/``) or ``<file>.json`` beside
a loose ONNX file; the folder holding it is the *model folder*, and every file it names must lie inside it.

Loading (``load_manifest``) refuses a manifest that was edited after it was sealed (its ``integrity``,
see ``cxrtriage.model.integrity``), then validates every field that decides a result and names the field
that is wrong; ``verify_onnx`` checks the sha256 of the ONNX file. ``write_sealed_manifest`` writes a
manifest with its seal (the training recipe and ``cxrtriage models seal`` use it).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import numpy.typing as npt

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.files import atomic_write
from cxrtriage.model.integrity import INTEGRITY_FIELD, changed_fields, field_digests, manifest_digest, recorded_seal, seal_of
from cxrtriage.preprocess.recipe import PreprocessRecipe

SCHEMA_VERSION = 1
# Labels become CSV column names (score_<label>) and parts of file names (heat maps): keep them plain.
LABEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
OPERATING_POINT_NAMES = ("rule_out", "balanced")
# Study-level tiers a manifest may give operating points for (the policy decides which findings each holds).
STUDY_TIERS = ("critical", "urgent", "normal")
STUDY_SCORES = ("max",)  # how a tier's study score is made from its labels' calibrated probabilities
UNKNOWN_POPULATION = "unknown"  # reserved: a study whose population is not known (no age, or outside every range)
MAX_MANIFEST_BYTES = 16 << 20  # the shipped ones are ~30 KB; a larger file is not a manifest (or a memory attack)
SEAL_HINT = "cxrtriage models seal"


class Task(StrEnum):
    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A threshold on the calibrated score, with what it gave on the validation split."""

    threshold: float
    sensitivity: float | None = None
    specificity: float | None = None


@dataclass(frozen=True, slots=True)
class LabelThresholds:
    """Per-label operating points: ``rule_out`` (high sensitivity) and ``balanced`` (Youden).

    A manifest may give one of them only (torchxrayvision ships one operating point per label): the other name then
    holds the same point, and ``given`` says which one the manifest gave.
    """

    rule_out: OperatingPoint
    balanced: OperatingPoint
    given: tuple[str, ...] = OPERATING_POINT_NAMES


CALIBRATION_METHODS = ("platt", "op_norm")


@dataclass(frozen=True, slots=True)
class Calibration:
    """How a logit becomes a calibrated score, per label.

    ``platt``: p = sigmoid(a * logit + b) (identity: a=1, b=0). ``op_norm`` (torchxrayvision's operating-point
    normalisation): with q = sigmoid(logit) and the label's operating point t, p = q / (2t) below t and
    1 - (1 - q) / (2(1 - t)) from t on, so that t maps to 0.5; ``op_threshs`` holds t per label.
    """

    method: str
    a: dict[str, float] = field(default_factory=dict)
    b: dict[str, float] = field(default_factory=dict)
    op_threshs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeadInfo:
    """Where Grad-CAM finds the linear head that follows global average pooling.

    ``weight``/``bias`` name ONNX initializers; ``weight`` has shape [labels, channels] unless
    ``transposed`` is true ([channels, labels], as in a MatMul).
    """

    pooling: str
    weight: str
    bias: str | None = None
    transposed: bool = False


@dataclass(frozen=True, slots=True)
class Population:
    """A patient population the model was validated on, by age in years: ``age_min`` <= age < ``age_max``."""

    name: str
    age_min: float | None = None  # None: no lower bound
    age_max: float | None = None  # None: no upper bound
    description: str = ""

    def contains(self, age: float) -> bool:
        return (self.age_min is None or age >= self.age_min) and (self.age_max is None or age < self.age_max)

    @property
    def ages(self) -> str:
        """The age range in words, e.g. "1-5 years" or "18 years and older"."""
        lo, hi = self.age_min, self.age_max
        if lo is not None and hi is not None:
            return f"{lo:g} to under {hi:g} years"
        if lo is not None:
            return f"{lo:g} years and older"
        return f"under {hi:g} years" if hi is not None else "any age"


@dataclass(frozen=True, slots=True)
class LabelValidation:
    """Whether a label may decide a priority for one population, and the held-out evidence for it."""

    validated: bool
    auroc: float | None = None
    ci95: tuple[float, float] | None = None
    n_pos: int = 0
    n_neg: int = 0
    note: str = ""  # why it is not validated, e.g. "not labelled in this population's data"


@dataclass(frozen=True, slots=True)
class StudyTier:
    """The study-level operating point of one tier.

    The tier's study score is the highest calibrated probability among the tier's deciding labels over the
    study's images (``StudyOperatingPoints.score`` = "max"); the tier is reached when that score is at or above
    ``thresholds[population]`` (``critical``/``urgent``), or, for ``normal``, when it is below it. ``labels`` are
    the labels the thresholds were fitted over; ``target`` what they were set for on validation; ``validation``
    and ``test`` what they gave (per population: sensitivity, specificity, 95 % CIs, counts), informative only.
    """

    name: str
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    target: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)

    def threshold(self, population: str) -> float:
        """The threshold for ``population``; for ``unknown`` the most cautious one (the lowest: more studies flagged,
        fewer called normal)."""
        if population in self.thresholds:
            return self.thresholds[population]
        return min(self.thresholds.values())


@dataclass(frozen=True, slots=True)
class StudyOperatingPoints:
    """Study-level operating points: one ``StudyTier`` per tier, set on validation for a stated target."""

    score: str
    tiers: dict[str, StudyTier]
    fitted_on: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # any other key (study unit, candidates compared...)


POPULATION_POOLINGS = ("global_average",)


@dataclass(frozen=True, slots=True)
class PopulationEstimate:
    """A logistic regression that estimates the patient's population from the image (used only when the DICOM age and
    ``--population`` say nothing): p = sigmoid(pool(features) @ ``weights`` + ``bias``), where ``features`` is the
    graph output named by ``features_output`` and ``pooling`` how its maps become one value per channel. ``p`` is the
    probability of ``estimates`` (a population of the manifest) against ``versus``; at or above ``threshold`` the
    image is taken to be of ``estimates``, below it the population stays unknown. ``details``: how it was fitted,
    validated and tested (informative only)."""

    estimates: str
    versus: str
    features_output: str
    pooling: str
    weights: tuple[float, ...]
    bias: float
    threshold: float
    details: dict[str, Any] = field(default_factory=dict)

    def probability(self, features: npt.ArrayLike) -> np.ndarray:
        """P(``estimates``) per image of feature maps [N, C, h, w] (NumPy); ``ValueError`` when C does not match."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 4 or f.shape[1] != len(self.weights):
            raise ValueError(f"population estimate: feature maps must be [N, {len(self.weights)}, h, w], got "
                             f"{tuple(f.shape)}")
        z = f.mean(axis=(2, 3)) @ np.asarray(self.weights, dtype=np.float64) + self.bias
        p: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
        return p


@dataclass(frozen=True, slots=True)
class ModelManifest:
    name: str
    version: str
    task: Task
    onnx_file: Path
    sha256: str
    input_name: str
    input_shape: tuple[int | None, ...]
    labels: tuple[str, ...]
    outputs: dict[str, str]
    preprocessing: PreprocessRecipe
    thresholds: dict[str, LabelThresholds] = field(default_factory=dict)
    calibration: Calibration | None = None
    head: HeadInfo | None = None
    intended_use: str = ""
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    model_card: Path | None = None
    path: Path | None = None  # the manifest file itself
    extra: dict[str, Any] = field(default_factory=dict)
    integrity: str = ""  # integrity.sha256: the seal over the manifest's whole content ('' when not sealed)
    populations: dict[str, Population] = field(default_factory=dict)
    label_validation: dict[str, dict[str, LabelValidation]] = field(default_factory=dict)  # label -> population -> ...
    study: StudyOperatingPoints | None = None
    population_estimate: PopulationEstimate | None = None
    # Graph outputs per image and which of them the labels are (a null entry of 'labels' marks an ignored output,
    # e.g. one torchxrayvision left untrained); empty: every output is a label, in order.
    output_columns: tuple[int, ...] = ()
    n_outputs: int = 0

    def __post_init__(self) -> None:
        if not self.output_columns:
            object.__setattr__(self, "output_columns", tuple(range(len(self.labels))))
        if not self.n_outputs:
            object.__setattr__(self, "n_outputs", len(self.labels))

    @property
    def ignores_outputs(self) -> bool:
        """True when some graph outputs are no label (ignored)."""
        return self.n_outputs != len(self.labels)

    def population_of(self, age: float | None) -> str | None:
        """The population whose age range holds ``age``; None when the age is unknown or in no range."""
        if age is None:
            return None
        return next((p.name for p in self.populations.values() if p.contains(age)), None)

    def validated_for(self, label: str, population: str) -> bool:
        """May ``label`` decide a priority for ``population``? A model without ``label_validation`` says nothing,
        so every label decides (as before validation was recorded). For ``unknown``: validated for any population,
        so that no finding is silenced on a patient who might belong to it."""
        if not self.label_validation:
            return True
        per = self.label_validation.get(label, {})
        if population == UNKNOWN_POPULATION:
            return any(v.validated for v in per.values())
        v = per.get(population)
        return v is not None and v.validated

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]

    @property
    def short_integrity(self) -> str:
        return self.integrity[:12]

    @property
    def feature_output(self) -> str | None:
        """Name of the post-activation last feature map output (for CAM methods), if any."""
        return self.outputs.get("features")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


def read_manifest_data(path: str | Path) -> dict[str, Any]:
    """The parsed JSON object of a manifest file; ``ModelError`` when it is missing, not JSON or not an object.

    A key given twice in one object is refused: JSON readers disagree on which one wins, so the manifest a
    person reads could differ from the one that is used.
    """
    p = Path(path)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ModelError(f"{p}: manifest key '{key}' is given twice in one object; keep one and re-seal it "
                                 f"with `{SEAL_HINT}`")
            out[key] = value
        return out

    try:
        size = p.stat().st_size
        if not p.is_file():  # a FIFO or device would block or never end
            raise ModelError(f"{p}: manifest is not a regular file")
        if size > MAX_MANIFEST_BYTES:
            raise ModelError(f"{p}: manifest is {size / 2**20:.0f} MiB, more than the {MAX_MANIFEST_BYTES >> 20} MiB a "
                             "manifest may have; is this the right file?")
        data = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    except FileNotFoundError as exc:
        raise ModelError(f"{p}: manifest not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{p}: manifest cannot be read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{p}: manifest is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ModelError(f"{p}: manifest is nested too deeply to be a manifest") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{p}: manifest must be a JSON object")
    return data


def check_integrity(data: Mapping[str, Any], path: Path) -> str:
    """The manifest's ``integrity.sha256`` when its content matches it; ``ModelError`` saying what to do otherwise."""
    folder = path.parent
    recorded = recorded_seal(data)
    if recorded is None:
        state = "is missing" if INTEGRITY_FIELD not in data else "is not an object with a 64-hex 'sha256'"
        raise ModelError(
            f"{path}: manifest field '{INTEGRITY_FIELD}' {state}, so edits to this manifest cannot be detected. "
            f"Restore the manifest shipped with the model, or, if you own the model and its content is right, seal it "
            f"with `{SEAL_HINT} {folder}` (see models/README.md)"
        )
    actual = manifest_digest(data)
    if actual == recorded.sha256:
        return actual
    changed = changed_fields(recorded.fields, field_digests(data)) if recorded.fields else []
    what = f"changed since it was sealed: {', '.join(changed)}" if changed else "was changed since it was sealed"
    raise ModelError(
        f"{path}: manifest content does not match its integrity value (sealed {recorded.sha256[:12]}…, now "
        f"{actual[:12]}…): the manifest {what}. Restore the original manifest; or, if the edit is deliberate and "
        f"yours, review it and re-seal it with `{SEAL_HINT} {folder}`"
    )


def load_manifest(path: str | Path) -> ModelManifest:
    """Read a manifest file, refuse it when it was edited after sealing, and validate every field."""
    p = Path(path)
    data = read_manifest_data(p)
    try:
        integrity = check_integrity(data, p)
    except ModelError as exc:
        try:
            parse_manifest(data, p)
        except ModelError as invalid:  # say so now: re-sealing will not be enough
            raise ModelError(f"{exc}; besides, {invalid}") from exc
        raise
    return parse_manifest(data, p, integrity=integrity)


# --------------------------------------------------------------------------- validation helpers


def _fix_hint(path: Path) -> str:
    return f"fix it (or restore the original manifest) and re-seal it with `{SEAL_HINT} {path.parent}`"


def _bad(path: Path, name: str, problem: str) -> ModelError:
    return ModelError(f"{path}: manifest field '{name}' {problem}; {_fix_hint(path)}")


def _req(data: Mapping[str, Any], key: str, where: Path, name: str | None = None) -> Any:
    if key not in data:
        raise ModelError(f"{where}: manifest field '{name or key}' is missing; see models/README.md for the schema")
    return data[key]


def _object(value: Any, path: Path, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, name, f"must be a JSON object, got {type(value).__name__}")
    return value


def _text(value: Any, path: Path, name: str) -> str:
    """A non-empty single-line string (names and versions end up in file names, CSV cells and DICOM)."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(path, name, f"must be a non-empty string, got {value!r}")
    if _CONTROL.search(value):
        raise _bad(path, name, f"contains control characters ({value!r})")
    return value


def _number(value: Any, path: Path, name: str, *, lo: float | None = None, hi: float | None = None) -> float:
    """A finite JSON number (not a string, not a boolean), within [lo, hi] when given."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(path, name, f"must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise _bad(path, name, f"must be a finite number, got {value!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"[{lo:g}, {hi:g}]" if lo is not None and hi is not None else f">= {lo:g}" if lo is not None else f"<= {hi:g}"
        raise _bad(path, name, f"must be within {span}, got {v:g}")
    return v


def _inside(value: Any, path: Path, name: str) -> Path:
    """A file named relative to the model folder that stays inside it (no absolute path, '..', or escaping link)."""
    root = path.parent.resolve()
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise _bad(path, name, f"must name a file inside the model folder, relative to it, got {value!r}")
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or value.startswith(("/", "\\")):
        raise _bad(path, name, f"is an absolute path ({value!r}); it must name a file inside the model folder {root}, "
                               "relative to it (e.g. 'model.onnx')")
    if ".." in posix.parts or ".." in windows.parts:
        raise _bad(path, name, f"leaves the model folder {root} ('..' in {value!r}); name a file inside it")
    target = (root / value).resolve()
    if not target.is_relative_to(root):
        raise _bad(path, name, f"({value!r}) is a link that leads outside the model folder {root} (to {target}); "
                               "copy the file into the model folder instead")
    return target


# --------------------------------------------------------------------------- fields


def _labels(data: Mapping[str, Any], path: Path, task: Task) -> tuple[tuple[str, ...], tuple[int, ...], int]:
    """The labels, the graph output column of each, and the number of graph outputs.

    A classifier's ``labels`` may hold ``null`` for an output that is no label (torchxrayvision's untrained
    outputs): that column is ignored, never scored or shown.
    """
    raw = _req(data, "labels", path)
    if not isinstance(raw, list) or not raw:
        raise _bad(path, "labels", "must be a non-empty list of label names, in output order")
    for i, lab in enumerate(raw):
        if lab is None and task is Task.CLASSIFICATION:
            continue
        if not isinstance(lab, str) or not LABEL_PATTERN.fullmatch(lab):
            hint = " or null for an ignored output" if task is Task.CLASSIFICATION else ""
            raise _bad(path, f"labels[{i}]", f"must be a lower-case snake_case name (a-z, 0-9, _; at most 64 "
                                             f"characters){hint}, got {lab!r}")
    named = [lab for lab in raw if lab is not None]
    if not named:
        raise _bad(path, "labels", "ignores every output (all null); name at least one label")
    dupes = sorted({lab for lab in named if named.count(lab) > 1})
    if dupes:
        raise _bad(path, "labels", f"must be unique; {dupes} appear more than once")
    return tuple(named), tuple(i for i, lab in enumerate(raw) if lab is not None), len(raw)


def _keys_are_labels(obj: Mapping[str, Any], labels: tuple[str, ...], path: Path, name: str, *,
                     all_labels: bool = True) -> None:
    """At most one entry per label (a repeated key is refused when reading), none for a label the model does not
    have, and, with ``all_labels``, none missing."""
    unknown = [k for k in obj if k not in labels]
    if unknown:
        raise _bad(path, f"{name}.{unknown[0]}", f"is for a label the model does not have; labels are {list(labels)}")
    missing = [lab for lab in labels if lab not in obj]
    if missing and all_labels:
        raise _bad(path, name, f"has no entry for label(s) {missing}; give one for every label in 'labels'")


def _operating_point(value: Any, path: Path, name: str) -> OperatingPoint:
    d = _object(value, path, name)
    threshold = _number(_req(d, "threshold", path, f"{name}.threshold"), path, f"{name}.threshold", lo=0.0, hi=1.0)
    stats: dict[str, float | None] = {}
    for key in ("sensitivity", "specificity"):
        v = d.get(key)
        stats[key] = None if v is None else _number(v, path, f"{name}.{key}", lo=0.0, hi=1.0)
    return OperatingPoint(threshold=threshold, **stats)


def _thresholds(data: Mapping[str, Any], labels: tuple[str, ...], path: Path) -> dict[str, LabelThresholds]:
    """One complete set (rule_out and balanced) per label that has one.

    A label may have none: the training recipe writes none when the validation split has no positives or no
    negatives for it, and triage then refuses that label unless the policy ignores it or a site file gives one.
    """
    raw = data.get("thresholds")
    if raw is None:
        return {}
    obj = _object(raw, path, "thresholds")
    _keys_are_labels(obj, labels, path, "thresholds", all_labels=False)
    out: dict[str, LabelThresholds] = {}
    for lab in (lab for lab in labels if lab in obj):
        where = f"thresholds.{lab}"
        t = _object(obj[lab], path, where)
        unknown = [k for k in t if k not in OPERATING_POINT_NAMES]
        if unknown:
            raise _bad(path, f"{where}.{unknown[0]}", f"is not an operating point; give one or both of "
                                                      f"{list(OPERATING_POINT_NAMES)}")
        given = tuple(op for op in OPERATING_POINT_NAMES if op in t)
        if not given:
            raise _bad(path, where, f"gives no operating point; give one or both of {list(OPERATING_POINT_NAMES)} "
                                    '(e.g. {"balanced": {"threshold": 0.5}})')
        points = {op: _operating_point(t[op], path, f"{where}.{op}") for op in given}
        only = points[given[0]]
        out[lab] = LabelThresholds(rule_out=points.get("rule_out", only), balanced=points.get("balanced", only),
                                   given=given)
    return out


def _calibration(data: Mapping[str, Any], labels: tuple[str, ...], path: Path) -> Calibration | None:
    """None or ``{}``: scores are sigmoid(logit); else Platt a and b, finite, one of each per label."""
    raw = data.get("calibration")
    if raw is None or raw == {}:
        return None
    obj = _object(raw, path, "calibration")
    method = _text(_req(obj, "method", path, "calibration.method"), path, "calibration.method").lower()
    if method not in CALIBRATION_METHODS:
        raise _bad(path, "calibration.method", f"is '{method}'; a manifest supports 'platt' (score = sigmoid(a * logit "
                                               "+ b)) and 'op_norm' (torchxrayvision's operating-point normalisation); "
                                               "site files may use isotonic maps")
    if method == "op_norm":
        name = "calibration.op_threshs"
        values = _object(_req(obj, "op_threshs", path, name), path, name)
        _keys_are_labels(values, labels, path, name)
        ts = {lab: _number(values[lab], path, f"{name}.{lab}", lo=0.0, hi=1.0) for lab in labels}
        edge = [lab for lab, t in ts.items() if t in (0.0, 1.0)]
        if edge:
            raise _bad(path, f"{name}.{edge[0]}", "is 0 or 1; an operating point lies strictly between them")
        return Calibration(method=method, op_threshs=ts)
    params: dict[str, dict[str, float]] = {}
    for key in ("a", "b"):
        name = f"calibration.{key}"
        values = _object(_req(obj, key, path, name), path, name)
        _keys_are_labels(values, labels, path, name)
        params[key] = {lab: _number(values[lab], path, f"{name}.{lab}") for lab in labels}
    zero = [lab for lab, a in params["a"].items() if a == 0.0]
    if zero:
        raise _bad(path, f"calibration.a.{zero[0]}", "is 0, which makes the score ignore the image")
    return Calibration(method=method, a=params["a"], b=params["b"])


def _input(data: Mapping[str, Any], recipe: PreprocessRecipe, path: Path) -> tuple[str, tuple[int | None, ...]]:
    inp = _object(_req(data, "input", path), path, "input")
    name = _text(_req(inp, "name", path, "input.name"), path, "input.name")
    shape = _req(inp, "shape", path, "input.shape")
    if not isinstance(shape, list) or len(shape) != 4:
        raise _bad(path, "input.shape", f"must be [N, 1, S, S] (N may be null), got {shape!r}")
    dims: list[int | None] = []
    for i, v in enumerate(shape):
        if v is None:
            dims.append(None)
        elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
            dims.append(v)
        else:
            raise _bad(path, f"input.shape[{i}]", f"must be a positive integer or null, got {v!r}")
    if dims[1] not in (None, 1):
        raise _bad(path, "input.shape[1]", f"is {dims[1]}; models take one grey channel")
    for i in (2, 3):
        if dims[i] not in (None, recipe.size):
            raise _bad(path, f"input.shape[{i}]", f"is {dims[i]}, but preprocessing.size is {recipe.size}; they must agree")
    return name, tuple(dims)


def _outputs(data: Mapping[str, Any], task: Task, path: Path) -> dict[str, str]:
    obj = _object(_req(data, "outputs", path), path, "outputs")
    outputs = {str(k): _text(v, path, f"outputs.{k}") for k, v in obj.items()}
    main_output = "logits" if task is Task.CLASSIFICATION else "masks"
    if main_output not in outputs:
        raise _bad(path, "outputs", f"must name the '{main_output}' output of the ONNX graph")
    return outputs


def _head(data: Mapping[str, Any], path: Path) -> HeadInfo | None:
    raw = data.get("head")
    if not raw:
        return None
    h = _object(raw, path, "head")
    bias = h.get("bias")
    transposed = h.get("transposed", False)
    if not isinstance(transposed, bool):
        raise _bad(path, "head.transposed", f"must be true or false, got {transposed!r}")
    return HeadInfo(pooling=_text(_req(h, "pooling", path, "head.pooling"), path, "head.pooling"),
                    weight=_text(_req(h, "weight", path, "head.weight"), path, "head.weight"),
                    bias=None if bias is None else _text(bias, path, "head.bias"), transposed=transposed)


def _preprocessing(data: Mapping[str, Any], path: Path) -> PreprocessRecipe:
    raw = _object(_req(data, "preprocessing", path), path, "preprocessing")
    try:
        return PreprocessRecipe.from_dict(raw, where=f"{path}: manifest field 'preprocessing'")
    except ConfigError as exc:  # a model problem here, not a configuration one (exit code 3, not 4)
        raise ModelError(f"{exc}; {_fix_hint(path)}") from exc


def _sha256(data: Mapping[str, Any], path: Path) -> str:
    sha = _req(data, "sha256", path)
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower()):
        raise _bad(path, "sha256", f"must be the 64-hex sha256 of the ONNX file, got {sha!r}")
    return sha.lower()


def _populations(data: Mapping[str, Any], path: Path) -> dict[str, Population]:
    raw = data.get("populations")
    if raw is None:
        return {}
    obj = _object(raw, path, "populations")
    out: dict[str, Population] = {}
    for name, d in obj.items():
        where = f"populations.{name}"
        if not LABEL_PATTERN.fullmatch(name) or name == UNKNOWN_POPULATION:
            raise _bad(path, where, f"must be a lower-case snake_case name other than '{UNKNOWN_POPULATION}'")
        d = _object(d, path, where)
        ages = _req(d, "age_years", path, f"{where}.age_years")
        if not isinstance(ages, list) or len(ages) != 2:
            raise _bad(path, f"{where}.age_years", f"must be [min, max) in years (null for no bound), got {ages!r}")
        lo, hi = (None if v is None else _number(v, path, f"{where}.age_years", lo=0.0) for v in ages)
        if lo is not None and hi is not None and not lo < hi:
            raise _bad(path, f"{where}.age_years", f"must have min < max, got {ages!r}")
        desc = d.get("description", "")
        out[name] = Population(name, lo, hi, desc if isinstance(desc, str) else "")
    pops = sorted(out.values(), key=lambda p: -math.inf if p.age_min is None else p.age_min)
    for a, b in zip(pops, pops[1:], strict=False):
        if a.age_max is None or b.age_min is None or a.age_max > b.age_min:
            raise _bad(path, "populations", f"'{a.name}' and '{b.name}' overlap; an age must belong to one population")
    return out


def _label_validation(data: Mapping[str, Any], labels: tuple[str, ...], pops: Mapping[str, Population],
                      path: Path) -> dict[str, dict[str, LabelValidation]]:
    raw = data.get("label_validation")
    if raw is None:
        return {}
    obj = _object(_req(_object(raw, path, "label_validation"), "labels", path, "label_validation.labels"), path,
                  "label_validation.labels")
    _keys_are_labels(obj, labels, path, "label_validation.labels")
    out: dict[str, dict[str, LabelValidation]] = {}
    for lab in labels:
        per = _object(obj[lab], path, f"label_validation.labels.{lab}")
        unknown = [p for p in per if p not in pops]
        if unknown:
            raise _bad(path, f"label_validation.labels.{lab}.{unknown[0]}", f"names no population of 'populations' "
                                                                           f"({sorted(pops)})")
        out[lab] = {}
        for pop, v in per.items():
            where = f"label_validation.labels.{lab}.{pop}"
            d = _object(v, path, where)
            ok = _req(d, "validated", path, f"{where}.validated")
            if not isinstance(ok, bool):
                raise _bad(path, f"{where}.validated", f"must be true or false, got {ok!r}")
            auc = d.get("auroc")
            ci = d.get("ci95")
            if ci is not None and (not isinstance(ci, list) or len(ci) != 2):
                raise _bad(path, f"{where}.ci95", f"must be [low, high] or null, got {ci!r}")
            out[lab][pop] = LabelValidation(
                validated=ok,
                auroc=None if auc is None else _number(auc, path, f"{where}.auroc", lo=0.0, hi=1.0),
                ci95=None if ci is None else (_number(ci[0], path, f"{where}.ci95", lo=0.0, hi=1.0),
                                              _number(ci[1], path, f"{where}.ci95", lo=0.0, hi=1.0)),
                n_pos=int(d.get("n_pos", 0) or 0), n_neg=int(d.get("n_neg", 0) or 0), note=str(d.get("note", "")),
            )
    return out


def _study(data: Mapping[str, Any], labels: tuple[str, ...], pops: Mapping[str, Population],
           path: Path) -> StudyOperatingPoints | None:
    raw = data.get("study_operating_points")
    if raw is None:
        return None
    obj = _object(raw, path, "study_operating_points")
    if not pops:
        raise _bad(path, "study_operating_points", "needs 'populations' (the thresholds are per population)")
    score = _req(obj, "score", path, "study_operating_points.score")
    if score not in STUDY_SCORES:
        raise _bad(path, "study_operating_points.score", f"must be one of {list(STUDY_SCORES)}, got {score!r}")
    tiers_raw = _object(_req(obj, "tiers", path, "study_operating_points.tiers"), path, "study_operating_points.tiers")
    tiers: dict[str, StudyTier] = {}
    for name, t in tiers_raw.items():
        where = f"study_operating_points.tiers.{name}"
        if name not in STUDY_TIERS:
            raise _bad(path, where, f"is not a tier; tiers are {list(STUDY_TIERS)}")
        t = _object(t, path, where)
        tl = _req(t, "labels", path, f"{where}.labels")
        if not isinstance(tl, list) or not tl or any(lab not in labels for lab in tl):
            raise _bad(path, f"{where}.labels", f"must be a non-empty list of the model's labels {list(labels)}")
        thr = _object(_req(t, "thresholds", path, f"{where}.thresholds"), path, f"{where}.thresholds")
        missing = [p for p in pops if p not in thr]
        extra = [p for p in thr if p not in pops]
        if missing or extra:
            raise _bad(path, f"{where}.thresholds", f"must give one threshold per population {sorted(pops)} "
                                                    f"(missing {missing}, unknown {extra})")
        tiers[name] = StudyTier(
            name=name, labels=tuple(tl),
            thresholds={p: _number(v, path, f"{where}.thresholds.{p}", lo=0.0, hi=1.0) for p, v in thr.items()},
            target=dict(_object(t.get("target", {}), path, f"{where}.target")),
            validation=dict(_object(t.get("validation", {}), path, f"{where}.validation")),
            test=dict(_object(t.get("test", {}), path, f"{where}.test")),
        )
    if "normal" not in tiers:
        raise _bad(path, "study_operating_points.tiers", "must include 'normal' (the rule-out that makes a study normal)")
    fitted = obj.get("fitted_on", "")
    details = {k: v for k, v in obj.items() if k not in ("score", "tiers", "fitted_on")}
    return StudyOperatingPoints(score=str(score), tiers=tiers, fitted_on=str(fitted), details=details)


def _population_estimate(data: Mapping[str, Any], pops: Mapping[str, Population], outputs: Mapping[str, str],
                         path: Path) -> PopulationEstimate | None:
    raw = data.get("population_estimate")
    if raw is None:
        return None
    name = "population_estimate"
    obj = _object(raw, path, name)
    for key in ("estimates", "versus"):
        v = _req(obj, key, path, f"{name}.{key}")
        if v not in pops:
            raise _bad(path, f"{name}.{key}", f"must name a population of 'populations' ({sorted(pops)}), got {v!r}")
    if obj["estimates"] == obj["versus"]:
        raise _bad(path, f"{name}.versus", "must differ from 'estimates'")
    feats = _text(_req(obj, "features_output", path, f"{name}.features_output"), path, f"{name}.features_output")
    if feats != "features" or feats not in outputs:
        raise _bad(path, f"{name}.features_output", f"must be 'features', the feature-map output named in 'outputs' "
                                                    f"(this manifest's outputs: {sorted(outputs)}), got {feats!r}")
    pooling = _req(obj, "pooling", path, f"{name}.pooling")
    if pooling not in POPULATION_POOLINGS:
        raise _bad(path, f"{name}.pooling", f"must be one of {list(POPULATION_POOLINGS)}, got {pooling!r}")
    weights = _req(obj, "weights", path, f"{name}.weights")
    if not isinstance(weights, list) or not weights:
        raise _bad(path, f"{name}.weights", "must be a non-empty list of numbers, one per feature channel")
    threshold = _number(_req(obj, "threshold", path, f"{name}.threshold"), path, f"{name}.threshold", lo=0.0, hi=1.0)
    if threshold in (0.0, 1.0):
        raise _bad(path, f"{name}.threshold", "is 0 or 1; it must lie strictly between them")
    known = ("estimates", "versus", "features_output", "pooling", "weights", "bias", "threshold")
    return PopulationEstimate(
        estimates=str(obj["estimates"]), versus=str(obj["versus"]), features_output=feats, pooling=str(pooling),
        weights=tuple(_number(v, path, f"{name}.weights[{i}]") for i, v in enumerate(weights)),
        bias=_number(_req(obj, "bias", path, f"{name}.bias"), path, f"{name}.bias"), threshold=threshold,
        details={k: v for k, v in obj.items() if k not in known},
    )


KNOWN_FIELDS = frozenset({
    "schema_version", "name", "version", "task", "onnx_file", "sha256", "input", "labels", "outputs", "preprocessing",
    "thresholds", "calibration", "head", "intended_use", "training_data", "metrics", "model_card", INTEGRITY_FIELD,
    "populations", "label_validation", "study_operating_points", "population_estimate",
})
# Fields that name files; each must stay inside the model folder (see ``_inside``).
FILE_FIELDS = ("onnx_file", "model_card")


def parse_manifest(data: dict[str, Any], path: Path, *, integrity: str = "") -> ModelManifest:
    """Build a ModelManifest from parsed JSON, validating every field; ``path`` is the manifest file.

    The seal is not checked here (``load_manifest`` does that first); ``integrity`` is the checked value
    to record. ``ModelError`` names the first invalid field and how to fix it.
    """
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{path}: schema_version {data.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        task = Task(_req(data, "task", path))
    except ValueError as exc:
        raise _bad(path, "task", f"must be one of {[t.value for t in Task]}") from exc
    labels, columns, n_outputs = _labels(data, path, task)
    recipe = _preprocessing(data, path)
    input_name, input_shape = _input(data, recipe, path)
    card = data.get("model_card")
    for key in ("intended_use", "training_data"):
        if not isinstance(data.get(key, ""), str):
            raise _bad(path, key, "must be a string")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise _bad(path, "metrics", "must be a JSON object")
    pops = _populations(data, path)
    outputs = _outputs(data, task, path)
    return ModelManifest(
        name=_text(_req(data, "name", path), path, "name"),
        version=_text(_req(data, "version", path), path, "version"),
        task=task,
        onnx_file=_inside(_req(data, "onnx_file", path), path, "onnx_file"),
        sha256=_sha256(data, path),
        input_name=input_name,
        input_shape=input_shape,
        labels=labels,
        outputs=outputs,
        preprocessing=recipe,
        thresholds=_thresholds(data, labels, path),
        calibration=_calibration(data, labels, path),
        head=_head(data, path),
        intended_use=str(data.get("intended_use", "")),
        training_data=str(data.get("training_data", "")),
        metrics=dict(metrics),
        model_card=None if card is None or card == "" else _inside(card, path, "model_card"),
        path=path.resolve(),
        extra={k: v for k, v in data.items() if k not in KNOWN_FIELDS},
        integrity=integrity,
        populations=pops,
        label_validation=_label_validation(data, labels, pops, path),
        study=_study(data, labels, pops, path),
        population_estimate=_population_estimate(data, pops, outputs, path),
        output_columns=columns,
        n_outputs=n_outputs,
    )


# --------------------------------------------------------------------------- writing


def sealed(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with its ``integrity`` (re)computed, placed after ``sha256`` so that the two read together."""
    seal = seal_of(data).to_json()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == INTEGRITY_FIELD:
            continue
        out[key] = value
        if key == "sha256":
            out[INTEGRITY_FIELD] = seal
    out.setdefault(INTEGRITY_FIELD, seal)
    return out


def manifest_text(data: Mapping[str, Any]) -> str:
    """The file text of a manifest (2-space indent, as the training recipe has always written it)."""
    return json.dumps(data, indent=2) + "\n"


def write_sealed_manifest(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Seal ``data`` and write it to ``path`` atomically. Validates nothing: callers load it back (``load_manifest``)."""
    return atomic_write(Path(path), manifest_text(sealed(data)))


def verify_onnx(manifest: ModelManifest) -> None:
    """Refuse an ONNX file whose sha256 differs from the manifest (tampered or replaced)."""
    if not manifest.onnx_file.is_file():
        raise ModelError(f"{manifest.onnx_file}: ONNX file named by {manifest.path} does not exist")
    actual = sha256_file(manifest.onnx_file)
    if actual != manifest.sha256:
        raise ModelError(
            f"{manifest.onnx_file}: sha256 {actual[:12]}… does not match the manifest's {manifest.sha256[:12]}…; "
            "the model file was modified or replaced. Restore the original file, or re-export the model "
            "and its manifest together."
        )
