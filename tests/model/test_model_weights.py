"""Initializers read from an ONNX file's bytes equal what the onnx package reads; anything else is left to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cxrtriage.explain.head import _read_tensors
from cxrtriage.model import load_classifier
from cxrtriage.model.weights import WireFormatError, read_initializers


def _model(*inits: TensorProto, constant: TensorProto | None = None) -> onnx.ModelProto:
    """A one-node graph (Identity) that carries ``inits`` as initializers and optionally one Constant node."""
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    if constant is not None:
        nodes.append(helper.make_node("Constant", [], [constant.name], value=constant))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=list(inits))
    return helper.make_model(graph)


def _reference(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_every_initializer_of_the_shipped_classifier_equals_onnx() -> None:
    path = load_classifier(None).manifest.onnx_file
    ref = _reference(onnx.load(str(path)))
    got = read_initializers(path.read_bytes(), set(ref))
    assert set(got) == set(ref) and all(_same(got[k], ref[k]) for k in ref)


def test_float_types_raw_and_typed_fields_scalars_and_negative_values() -> None:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((11, 256)).astype(np.float32), "raw32"),  # raw_data
        helper.make_tensor("typed32", TensorProto.FLOAT, [3, 2], rng.standard_normal(6).astype(np.float32).tolist()),
        numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float64), "raw64"),
        helper.make_tensor("typed64", TensorProto.DOUBLE, [2], [1.5, -2.25]),
        numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float16), "raw16"),
        numpy_helper.from_array(np.array(-3.5, dtype=np.float32), "scalar"),
        numpy_helper.from_array(np.zeros((0, 4), np.float32), "empty"),
    ]
    model = _model(*inits)
    ref = _reference(model)
    got = read_initializers(model.SerializeToString(), set(ref))
    assert set(got) == set(ref)
    assert all(_same(got[k], ref[k]) for k in ref)
    assert got["raw32"].flags.writeable  # a copy, not a view into the file's bytes


def test_only_the_names_asked_for_and_only_float_data_in_the_file(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = _model(numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.arange(3, dtype=np.int64), "ints"),
                   numpy_helper.from_array(np.ones(2, np.float32), "other"))
    data = model.SerializeToString()
    assert set(read_initializers(data, {"w"})) == {"w"}
    assert read_initializers(data, {"ints", "missing"}) == {}  # an int64 tensor and an absent name: not read
    # weights saved in an external data file: left to onnx (which knows where the file is)
    big = np.ones((64, 64), np.float32)
    ext = _model(numpy_helper.from_array(big, "big"))
    onnx.save(ext, str(tmp_path / "m.onnx"), save_as_external_data=True, size_threshold=0, location="m.data")
    assert read_initializers((tmp_path / "m.onnx").read_bytes(), {"big"}) == {}


def test_bytes_that_are_not_a_model_are_refused() -> None:
    data = _model(numpy_helper.from_array(np.ones((50, 50), np.float32), "w")).SerializeToString()
    with pytest.raises(WireFormatError):
        read_initializers(data[: len(data) // 2], {"w"})  # the graph's length runs past the end
    with pytest.raises(WireFormatError):
        read_initializers(b"\x0f\x00\x00", {"w"})  # wire type 7 does not exist


def test_the_head_reader_falls_back_to_onnx_for_a_constant_node(tmp_path: Path) -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([0.5, -0.5], np.float32)
    path = tmp_path / "c.onnx"
    onnx.save(_model(numpy_helper.from_array(b, "b"), constant=numpy_helper.from_array(w, "w")), str(path))
    got = _read_tensors(str(path), "sha-of-c", ("w", "b"))
    assert _same(got["w"], w) and _same(got["b"], b)
