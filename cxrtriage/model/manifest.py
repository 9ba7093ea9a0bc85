"""The model manifest: every fact about a model lives here, beside its ONNX file, never in code.

A manifest is ``manifest.json`` in a model folder (``models/<name>/``) or ``<file>.json`` beside
a loose ONNX file. Loading checks the schema; ``verify_onnx`` checks the sha256 of the ONNX file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cxrtriage.errors import ModelError
from cxrtriage.preprocess.recipe import PreprocessRecipe

SCHEMA_VERSION = 1


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
    """Per-label operating points: ``rule_out`` (high sensitivity) and ``balanced`` (Youden)."""

    rule_out: OperatingPoint
    balanced: OperatingPoint


@dataclass(frozen=True, slots=True)
class Calibration:
    """Platt scaling per label: p = sigmoid(a * logit + b). Identity is a=1, b=0."""

    method: str
    a: dict[str, float]
    b: dict[str, float]


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

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]

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


def _req(data: dict[str, Any], key: str, where: Path) -> Any:
    if key not in data:
        raise ModelError(f"{where}: manifest field '{key}' is missing; see models/README.md for the schema")
    return data[key]


def _op(d: dict[str, Any]) -> OperatingPoint:
    return OperatingPoint(
        threshold=float(d["threshold"]),
        sensitivity=None if d.get("sensitivity") is None else float(d["sensitivity"]),
        specificity=None if d.get("specificity") is None else float(d["specificity"]),
    )


def parse_manifest(data: dict[str, Any], path: Path) -> ModelManifest:
    """Build a ModelManifest from parsed JSON; ``path`` is the manifest file (for relative paths)."""
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{path}: schema_version {data.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        task = Task(_req(data, "task", path))
    except ValueError as exc:
        raise ModelError(f"{path}: task must be one of {[t.value for t in Task]}") from exc
    inp = _req(data, "input", path)
    labels = tuple(str(x) for x in _req(data, "labels", path))
    if not labels or len(set(labels)) != len(labels):
        raise ModelError(f"{path}: 'labels' must be a non-empty list of unique names")
    outputs = {str(k): str(v) for k, v in _req(data, "outputs", path).items()}
    main_output = "logits" if task is Task.CLASSIFICATION else "masks"
    if main_output not in outputs:
        raise ModelError(f"{path}: 'outputs' must name the '{main_output}' output of the ONNX graph")
    thresholds: dict[str, LabelThresholds] = {}
    for label, t in data.get("thresholds", {}).items():
        if label not in labels:
            raise ModelError(f"{path}: thresholds given for unknown label '{label}'; labels are {list(labels)}")
        thresholds[label] = LabelThresholds(rule_out=_op(t["rule_out"]), balanced=_op(t["balanced"]))
    cal = data.get("calibration")
    calibration = None
    if cal:
        calibration = Calibration(
            method=str(cal["method"]),
            a={k: float(v) for k, v in cal["a"].items()},
            b={k: float(v) for k, v in cal["b"].items()},
        )
    head = None
    if data.get("head"):
        h = data["head"]
        head = HeadInfo(pooling=str(h["pooling"]), weight=str(h["weight"]), bias=h.get("bias"),
                        transposed=bool(h.get("transposed", False)))
    base = path.parent
    card = data.get("model_card")
    known = {"schema_version", "name", "version", "task", "onnx_file", "sha256", "input", "labels", "outputs",
             "preprocessing", "thresholds", "calibration", "head", "intended_use", "training_data", "metrics",
             "model_card"}
    return ModelManifest(
        name=str(_req(data, "name", path)),
        version=str(_req(data, "version", path)),
        task=task,
        onnx_file=(base / str(_req(data, "onnx_file", path))).resolve(),
        sha256=str(_req(data, "sha256", path)).lower(),
        input_name=str(_req(inp, "name", path)),
        input_shape=tuple(None if v is None else int(v) for v in _req(inp, "shape", path)),
        labels=labels,
        outputs=outputs,
        preprocessing=PreprocessRecipe.from_dict(_req(data, "preprocessing", path), where=str(path)),
        thresholds=thresholds,
        calibration=calibration,
        head=head,
        intended_use=str(data.get("intended_use", "")),
        training_data=str(data.get("training_data", "")),
        metrics=dict(data.get("metrics", {})),
        model_card=(base / card).resolve() if card else None,
        path=path.resolve(),
        extra={k: v for k, v in data.items() if k not in known},
    )


def load_manifest(path: str | Path) -> ModelManifest:
    """Read and validate a manifest JSON file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{p}: manifest not found") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{p}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{p}: manifest must be a JSON object")
    return parse_manifest(data, p)


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
