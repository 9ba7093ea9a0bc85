"""Read the GAP + linear head named by a manifest from the ONNX graph, and check it against the logits."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from cxrtriage.errors import ModelError
from cxrtriage.explain.base import HeadWeights
from cxrtriage.model.manifest import ModelManifest
from cxrtriage.model.weights import WireFormatError, read_initializers
from cxrtriage.types import FloatArray

log = logging.getLogger(__name__)

GAP_NAMES = frozenset({"gap", "avg", "average", "mean", "global_average", "global_avg", "globalaveragepool"})

# Relative tolerance when checking that the head reproduces the logits from the pooled features.
HEAD_CHECK_RTOL = 1e-3


@lru_cache(maxsize=8)
def _read_tensors(onnx_file: str, sha256: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Initializers (or Constant node values) of ``onnx_file`` by name; cached per file content.

    Read from the file's bytes (`cxrtriage.model.weights`, which spares the ~0.7 s import of ``onnx``) when they are
    plain initializers, as a head's weights are; with the ``onnx`` package for the rest (Constant nodes, external
    data)."""
    try:
        found = read_initializers(Path(onnx_file).read_bytes(), names)
    except (OSError, WireFormatError):  # onnx below says what is wrong with the file
        found = {}
    if all(n in found for n in names):
        return found
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_file)
    found = {}
    for init in model.graph.initializer:
        if init.name in names:
            found[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:  # some exporters store weights as Constant nodes
        if node.op_type == "Constant" and node.output and node.output[0] in names and node.output[0] not in found:
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def head_problem(manifest: ModelManifest) -> str:
    """Why gradient methods cannot run on this model ('' when the manifest declares a usable head)."""
    if manifest.feature_output is None:
        return "the model exports no 'features' output (the last post-ReLU feature map)"
    if manifest.head is None:
        return "the manifest declares no GAP + linear 'head'"
    if manifest.head.pooling.strip().lower() not in GAP_NAMES:
        return f"the head pooling is '{manifest.head.pooling}', not global average pooling"
    return ""


def read_head(manifest: ModelManifest) -> HeadWeights:
    """The head weights [labels, channels] and bias [labels] named by ``manifest.head``.

    Honours ``head.transposed`` ([C, L] as in a MatMul). Raises ``ModelError`` saying what is
    missing and which methods still apply.
    """
    problem = head_problem(manifest)
    if problem:
        raise ModelError(f"{manifest.path}: {problem}")
    head = manifest.head
    assert head is not None
    names = (head.weight,) + ((head.bias,) if head.bias else ())
    tensors = _read_tensors(str(Path(manifest.onnx_file)), manifest.sha256, names)
    if head.weight not in tensors:
        raise ModelError(
            f"{manifest.path}: head.weight '{head.weight}' is not an initializer or Constant of {manifest.onnx_file.name}; "
            "fix the name in the manifest (list them with onnx: [i.name for i in onnx.load(PATH).graph.initializer])"
        )
    w = np.asarray(tensors[head.weight], dtype=np.float32)
    if w.ndim != 2:
        raise ModelError(f"{manifest.path}: head.weight '{head.weight}' has shape {w.shape}; a linear head weight is 2-D")
    if head.transposed:
        w = w.T
    n_out = manifest.n_outputs  # rows of the graph's head; the manifest's labels pick theirs (others are ignored)
    if w.shape[0] != n_out:
        hint = " (is 'transposed' set correctly?)" if w.shape[1] == n_out else ""
        raise ModelError(
            f"{manifest.path}: head.weight '{head.weight}' gives {w.shape[0]} rows after transposition={head.transposed}, "
            f"but the model has {n_out} outputs{hint}"
        )
    if head.bias:
        if head.bias not in tensors:
            raise ModelError(f"{manifest.path}: head.bias '{head.bias}' is not an initializer of {manifest.onnx_file.name}")
        b = np.asarray(tensors[head.bias], dtype=np.float32).reshape(-1)
        if b.shape != (n_out,):
            raise ModelError(f"{manifest.path}: head.bias '{head.bias}' has shape {b.shape}, expected ({n_out},)")
    else:  # no bias, or one the exporter dropped because it was all zero
        b = np.zeros(n_out, np.float32)
    cols = np.asarray(manifest.output_columns, np.intp)
    return HeadWeights(weight=np.ascontiguousarray(w[cols]), bias=np.ascontiguousarray(b[cols]),
                       source=f"{manifest.onnx_file.name}:{head.weight}")


def check_head(head: HeadWeights, features: FloatArray, logits: FloatArray, *, where: str) -> None:
    """Refuse a head that does not turn GAP(features) into the model's logits.

    The analytic gradient W_ck / (h*w) is exact only if logits = mean_ij(A) @ W.T + b; this check
    costs one small matrix product per batch and catches a wrong manifest, a non-linear head or a
    features output that is not the tensor feeding the pooling.
    """
    if features.shape[1] != head.n_channels:
        raise ModelError(
            f"{where}: the features output has {features.shape[1]} channels but the head weight has {head.n_channels}; "
            "the manifest's head or features output is wrong"
        )
    pooled = features.astype(np.float64).mean(axis=(2, 3))
    predicted = pooled @ head.weight.astype(np.float64).T + head.bias.astype(np.float64)
    err = float(np.max(np.abs(predicted - logits), initial=0.0))
    scale = 1.0 + float(np.max(np.abs(logits), initial=0.0))
    if err > HEAD_CHECK_RTOL * scale:
        raise ModelError(
            f"{where}: GAP(features) @ head.weight.T + head.bias differs from the logits by up to {err:.3g}, so the head is "
            "not the GAP + linear layer named in the manifest (or 'features' is not the tensor it pools); gradient methods "
            "would be wrong. Fix the manifest's head/outputs, or use eigencam, scorecam or occlusion."
        )
    log.debug("head check passed (max |Δlogit| %.2e)", err)
