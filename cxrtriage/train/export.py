"""ONNX export and verification of the head initializers named in the manifest."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from cxrtriage.errors import ModelError


def export_onnx(model: torch.nn.Module, path: Path, size: int, output_names: tuple[str, ...], opset: int = 17) -> None:
    """Export ``model`` (eval mode, batch dimension dynamic) with input ``image`` [N, 1, size, size]."""
    model.eval()
    dummy = torch.zeros(2, 1, size, size)
    axes = {"image": {0: "N"}, **{n: {0: "N"} for n in output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), input_names=["image"], output_names=list(output_names),
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))


def find_head(path: Path, weight: np.ndarray, bias: np.ndarray | None) -> dict[str, object]:
    """Locate the linear head's initializers in the exported graph by VALUE (the exporter may rename/transpose).

    Returns the manifest ``head`` dict; raises ModelError when no initializer matches.
    """
    model = onnx.load(str(path))
    w_name, transposed, b_name = None, False, None
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.shape == weight.shape and np.array_equal(arr, weight):
            w_name, transposed = init.name, False
        elif arr.shape == weight.T.shape and np.array_equal(arr, weight.T) and weight.shape[0] != weight.shape[1]:
            w_name, transposed = init.name, True
        elif bias is not None and arr.shape == bias.shape and np.array_equal(arr, bias):
            b_name = init.name
    if w_name is None:
        raise ModelError(f"{path}: no initializer equals the head weight {weight.shape}; cannot name it in the manifest")
    if bias is not None and b_name is None:
        raise ModelError(f"{path}: no initializer equals the head bias {bias.shape}")
    consumers = [n for n in model.graph.node if w_name in n.input]
    if not consumers or consumers[0].op_type not in ("Gemm", "MatMul"):
        raise ModelError(f"{path}: head weight '{w_name}' is not consumed by a Gemm/MatMul node")
    return {"pooling": "gap", "weight": w_name, "bias": b_name, "transposed": transposed}


def check_head(path: Path, head: dict[str, object], n_labels: int, channels: int) -> None:
    """Verify that the manifest's head names exist in the ONNX file with the stated shapes."""
    inits = {i.name: tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}
    want = (channels, n_labels) if head["transposed"] else (n_labels, channels)
    if inits.get(str(head["weight"])) != want:
        raise ModelError(f"{path}: head weight '{head['weight']}' has shape {inits.get(str(head['weight']))}, expected {want}")
    if head.get("bias") is not None and inits.get(str(head["bias"])) != (n_labels,):
        raise ModelError(f"{path}: head bias '{head['bias']}' missing or not shaped ({n_labels},)")
