"""The classifier: preprocessing from its manifest, ONNX inference, and Platt-calibrated scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrtriage.errors import ModelError
from cxrtriage.model.manifest import Calibration, ModelManifest, Task
from cxrtriage.model.session import OrtSession
from cxrtriage.preprocess import ModelInput, to_model_input
from cxrtriage.types import FloatArray, Image2D


@dataclass(frozen=True, slots=True)
class ClassifierOutput:
    """One batch of results: raw ``logits`` [N, L], calibrated ``scores`` [N, L] in [0, 1],
    and the last feature map ``features`` [N, C, h, w] when asked for (else None)."""

    logits: FloatArray
    scores: FloatArray
    features: FloatArray | None = None

    def __post_init__(self) -> None:
        if self.logits.shape != self.scores.shape or self.logits.ndim != 2:
            raise ValueError(f"logits {self.logits.shape} and scores {self.scores.shape} must both be [N, labels]")
        if self.features is not None and (self.features.ndim != 4 or self.features.shape[0] != self.logits.shape[0]):
            raise ValueError(f"features must be [N, C, h, w] with N = {self.logits.shape[0]}, got {self.features.shape}")


def _sigmoid(x: FloatArray) -> FloatArray:
    # Split by sign so that exp never overflows for large |x|.
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out.astype(np.float32)


def calibration_arrays(calibration: Calibration | None, labels: tuple[str, ...]) -> tuple[FloatArray, FloatArray]:
    """Platt ``a`` and ``b`` as [L] arrays in label order; no calibration (and ``op_norm``, which follows the
    sigmoid) is the identity (a=1, b=0)."""
    if calibration is None or calibration.method.lower() == "op_norm":
        return np.ones(len(labels), np.float32), np.zeros(len(labels), np.float32)
    if calibration.method.lower() != "platt":
        raise ModelError(f"calibration method '{calibration.method}' is not supported; the manifest must use 'platt' "
                         "or 'op_norm'")
    missing = [lab for lab in labels if lab not in calibration.a or lab not in calibration.b]
    if missing:
        raise ModelError(f"calibration has no a/b for label(s) {missing}; give Platt a and b for every label")
    a = np.array([calibration.a[lab] for lab in labels], dtype=np.float32)
    b = np.array([calibration.b[lab] for lab in labels], dtype=np.float32)
    return a, b


def calibrate(logits: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    """Platt scaling per label: p = sigmoid(a * logit + b)."""
    return _sigmoid(logits.astype(np.float32) * a[None, :] + b[None, :])


def op_norm(probs: FloatArray, op_threshs: FloatArray) -> FloatArray:
    """torchxrayvision's operating-point normalisation of probabilities [N, L]: each label's point t maps to 0.5,
    linearly on either side (p / 2t below t, 1 - (1 - p) / (2 (1 - t)) from t on), so the order of scores is kept."""
    t = op_threshs[None, :].astype(np.float64)
    p = probs.astype(np.float64)
    out = np.where(p < t, p / (t * 2), 1.0 - (1.0 - p) / ((1.0 - t) * 2))
    return out.astype(np.float32)


def op_thresh_array(calibration: Calibration | None, labels: tuple[str, ...]) -> FloatArray | None:
    """The ``op_norm`` operating points as an [L] array in label order; None for any other calibration."""
    if calibration is None or calibration.method.lower() != "op_norm":
        return None
    return np.array([calibration.op_threshs[lab] for lab in labels], dtype=np.float32)


class Classifier:
    """A multi-label chest X-ray classifier described by a manifest and run by onnxruntime."""

    def __init__(self, manifest: ModelManifest, session: OrtSession) -> None:
        if manifest.task is not Task.CLASSIFICATION:
            raise ModelError(f"{manifest.path}: model '{manifest.name}' is a {manifest.task.value} model, not a classifier")
        self.manifest = manifest
        self.session = session
        self._a, self._b = calibration_arrays(manifest.calibration, manifest.labels)
        self._op_threshs = op_thresh_array(manifest.calibration, manifest.labels)
        self._columns = None if not manifest.ignores_outputs else np.array(manifest.output_columns, np.intp)
        self._logits_name = manifest.outputs["logits"]
        self._features_name = manifest.feature_output
        fixed = manifest.input_shape[0] if manifest.input_shape else None
        self._max_batch = fixed if isinstance(fixed, int) and fixed > 0 else None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def input_size(self) -> int:
        return self.manifest.preprocessing.size

    @property
    def has_features(self) -> bool:
        return self._features_name is not None

    def preprocess(self, image: Image2D) -> ModelInput:
        """The exact [1, S, S] array this model expects, with the geometry to map results back."""
        return to_model_input(image, self.manifest.preprocessing)

    def _run_chunk(self, batch: FloatArray, features: bool) -> tuple[FloatArray, FloatArray | None]:
        names = [self._logits_name] + ([self._features_name] if features and self._features_name else [])
        outs = self.session.run(names, {self.manifest.input_name: batch})
        logits = outs[0].astype(np.float32, copy=False)
        n = self.manifest.n_outputs
        if logits.ndim != 2 or logits.shape != (batch.shape[0], n):
            raise ModelError(
                f"{self.manifest.onnx_file}: output '{self._logits_name}' has shape {logits.shape}, expected "
                f"[{batch.shape[0]}, {n}] for labels {list(self.labels)}; the manifest does not match the graph"
            )
        if self._columns is not None:  # outputs the manifest marks as ignored (null labels) are dropped here
            logits = np.ascontiguousarray(logits[:, self._columns])
        return logits, (outs[1].astype(np.float32, copy=False) if len(outs) > 1 else None)

    def run(self, batch: FloatArray, *, features: bool = False) -> ClassifierOutput:
        """Score a batch [N, 1, S, S] of preprocessed inputs.

        ``features=True`` also returns the last (post-activation) feature map, for CAM methods;
        it raises ``ModelError`` when the manifest names no ``features`` output.
        """
        if features and not self.has_features:
            raise ModelError(
                f"{self.manifest.path}: model '{self.manifest.name}' exports no 'features' output, so it cannot give "
                "feature maps (needed for heatmaps); re-export it with the last feature map as a second output"
            )
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (1, s, s):
            raise ModelError(f"batch must be [N, 1, {s}, {s}] for model '{self.manifest.name}', got {tuple(batch.shape)}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = self._max_batch or max(1, batch.shape[0])
        parts = [self._run_chunk(batch[i : i + step], features) for i in range(0, batch.shape[0], step)]
        logits = np.concatenate([p[0] for p in parts], axis=0) if parts else np.zeros((0, len(self.labels)), np.float32)
        feats = np.concatenate([p[1] for p in parts if p[1] is not None], axis=0) if features and parts else None
        return ClassifierOutput(logits=logits, scores=self.scores_of(logits), features=feats)

    def scores_of(self, logits: FloatArray) -> FloatArray:
        """Calibrated scores [N, L] of logits [N, L], by the manifest's calibration (Platt, op_norm or none)."""
        scores = calibrate(logits, self._a, self._b)
        return scores if self._op_threshs is None else op_norm(scores, self._op_threshs)

    def predict(self, image: Image2D) -> dict[str, float]:
        """Calibrated score per label for one image."""
        out = self.run(self.preprocess(image).array[None])
        return {lab: float(v) for lab, v in zip(self.labels, out.scores[0], strict=True)}
