"""Named initializers of an ONNX file, read straight from its protobuf encoding, without the ``onnx`` package.

Why: the heat maps need two tensors of the classifier (its linear head: `cxrtriage.explain.head`), and importing
``onnx`` to load the file costs ~0.7 s, a seventh of the Quick start. An ONNX file is a ``ModelProto`` in protobuf's
wire format, of which this reads only what it needs: the graph's initializers, their name, dims, data type and data.
Anything else (data in an external file, a type other than float16/32/64, a tensor only stored as a ``Constant``
node) is left for the caller to read with ``onnx``: ``read_initializers`` returns what it found and never guesses.

Field numbers are those of onnx/onnx.proto (stable since ONNX 1.0): ModelProto.graph = 7, GraphProto.initializer = 5,
TensorProto.dims = 1, data_type = 2, float_data = 4, double_data = 10, name = 8, raw_data = 9, external_data = 13,
data_location = 14; TensorProto.DataType FLOAT = 1, FLOAT16 = 10, DOUBLE = 11.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_DIMS, _DATA_TYPE, _FLOAT_DATA, _NAME, _RAW_DATA, _DOUBLE_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 1, 2, 4, 8, 9, 10, 13, 14
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<f4"), 10: np.dtype("<f2"), 11: np.dtype("<f8")}


class WireFormatError(ValueError):
    """The bytes are not the protobuf encoding this reader expects (a damaged or non-ONNX file)."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireFormatError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of each field of one message: an int for a varint or a fixed-width value, the bytes for
    a length-delimited one (a message, a string, or a packed repeated field)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield field, value
        elif wire == _LEN:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise WireFormatError("a field runs past the end of its message")
            yield field, buf[pos:pos + n]
            pos += n
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if pos + width > len(buf):
                raise WireFormatError("truncated fixed-width field")
            yield field, int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        else:  # groups (3, 4) are not used by ONNX
            raise WireFormatError(f"unexpected wire type {wire}")


def _packed_varints(value: int | memoryview) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _tensor(msg: memoryview, names: frozenset[str]) -> tuple[str, np.ndarray] | None:
    """The (name, array) of one TensorProto when its name is wanted and its data are here in a supported type."""
    name: str | None = None
    dims: list[int] = []
    dtype_code = 0
    raw: memoryview | None = None
    typed: list[memoryview] = []  # float_data / double_data, packed
    for field, value in _fields(msg):
        if field == _NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif field == _DIMS:
            dims += [d - (1 << 64) if d >= 1 << 63 else d for d in _packed_varints(value)]
        elif field == _DATA_TYPE and isinstance(value, int):
            dtype_code = value
        elif field == _RAW_DATA and isinstance(value, memoryview):
            raw = value
        elif field in (_FLOAT_DATA, _DOUBLE_DATA):
            if not isinstance(value, memoryview):  # an unpacked repeated value: rare, left to onnx
                return None
            typed.append(value)
        elif field in (_EXTERNAL_DATA, _DATA_LOCATION) and value:  # data in another file: left to onnx
            return None
    if name is None or name not in names or dtype_code not in _DTYPES or any(d < 0 for d in dims):
        return None
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if raw is not None:
        data = np.frombuffer(raw, dtype=_DTYPES[dtype_code])
    elif typed and dtype_code in (1, 11):  # float_data holds float32, double_data float64
        data = np.frombuffer(b"".join(typed), dtype=_DTYPES[dtype_code])
    else:
        return None
    if data.size != count:
        return None
    return name, data.reshape(dims).astype(data.dtype.newbyteorder("="), copy=True)


def read_initializers(model: bytes, names: frozenset[str] | set[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """The graph initializers of an ONNX ``model`` (the file's bytes) whose name is in ``names``, as arrays.

    Returns only what it could read exactly; a name that is missing from the result is not an initializer with its
    data in this file in a float type (read those with the ``onnx`` package). Raises ``WireFormatError`` on bytes that
    are not a protobuf message.
    """
    wanted = frozenset(names)
    found: dict[str, np.ndarray] = {}
    view = memoryview(model)
    for field, graph in _fields(view):
        if field != _MODEL_GRAPH or not isinstance(graph, memoryview):
            continue
        for gfield, init in _fields(graph):
            if gfield == _GRAPH_INITIALIZER and isinstance(init, memoryview):
                tensor = _tensor(init, wanted)
                if tensor is not None:
                    found[tensor[0]] = tensor[1]
    return found
