"""Decode DICOM pixel data with fallbacks: OpenJPEG first for JPEG 2000, then every pydicom plugin, then GDCM."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from cxrtriage.errors import InputError
from cxrtriage.io.dicom.messages import first_line, warning_notes
from cxrtriage.io.dicom.values import get_int

log = logging.getLogger(__name__)

_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                           "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})


def decode(ds: Dataset, p: Path, ts: str) -> tuple[np.ndarray, str, list[str]]:
    """Pixels of ``ds`` (read from ``p``, transfer syntax ``ts``), the decoder that succeeded, and notes.

    pydicom first (it tries every installed plugin for the syntax), then GDCM directly on the file.
    For JPEG 2000 the OpenJPEG plugin (pylibjpeg) is asked first: on the RG1 chest it needs ~0.6-0.85x the CPU
    time of pydicom's default choice (GDCM), which matters when several decode workers share the cores.

    Raises:
        InputError: the pixel data is shorter than the header implies, or no decoder can decode it.
    """
    errors: list[str] = []
    notes: list[str] = []
    if ts in _J2K_SYNTAXES and _has_plugin(ts, "pylibjpeg"):
        try:
            ds.pixel_array_options(decoding_plugin="pylibjpeg")
            return ds.pixel_array, "pydicom (pylibjpeg-openjpeg)", notes
        except Exception as exc:  # fall through to every plugin
            log.debug("%s: pylibjpeg could not decode (%s); trying all plugins", p, first_line(exc))
        finally:
            ds.pixel_array_options(decoding_plugin="")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arr = ds.pixel_array
        notes.extend(warning_notes(caught))
        return arr, "pydicom", notes
    except Exception as exc:  # every plugin failed, or the data do not match the header
        msg = " ".join(str(exc).split())
        if "less than expected" in msg or "number of bytes" in msg.lower():
            raise InputError(f"{p}: pixel data is shorter than Rows x Columns x BitsAllocated imply ({msg}); "
                             "the file is truncated or its header is wrong") from exc
        errors.append(f"pydicom: {msg}")
    try:
        arr = _decode_gdcm(ds, p)
        notes.append(f"decoded with GDCM directly after pydicom failed ({errors[0][:160]})")
        return arr, "gdcm (fallback)", notes
    except Exception as exc:
        errors.append(f"gdcm: {' '.join(str(exc).split())}")
    raise InputError(f"{p}: pixel data cannot be decoded ({UID(ts).name}, {ts}); tried {'; '.join(errors)}. "
                     "Re-export the image uncompressed or with a standard lossless syntax")


def _has_plugin(ts: str, name: str) -> bool:
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return name in get_decoder(UID(ts)).available_plugins
    except Exception:
        return False


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """GDCM's codecs print to the C stderr; capture it for the error message instead of the terminal."""
    out: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.extend(line for line in tmp.read().decode("utf-8", "replace").splitlines() if line.strip())


def _decode_gdcm(ds: Dataset, p: Path) -> np.ndarray:
    """GDCM on the file itself, with BitsStored masking and sign extension (GDCM returns the raw samples)."""
    import gdcm  # python-gdcm; imported lazily, only for files pydicom cannot decode

    with _captured_stderr() as messages:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(p))
        ok = reader.Read()
    if not ok:
        raise RuntimeError("GDCM could not read the file" + (f": {messages[-1]}" if messages else ""))
    img = reader.GetImage()
    fmt = img.GetPixelFormat()
    dtypes = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
              "UINT32": np.uint32, "INT32": np.int32, "FLOAT32": np.float32, "FLOAT64": np.float64}
    dtype = dtypes.get(fmt.GetScalarTypeAsString())
    if dtype is None:
        raise RuntimeError(f"unsupported GDCM scalar type {fmt.GetScalarTypeAsString()}")
    with _captured_stderr() as messages:
        buf = img.GetBuffer()
    if not buf:
        raise RuntimeError("GDCM returned no pixel buffer" + (f": {messages[-1]}" if messages else ""))
    raw = buf.encode("utf-8", "surrogateescape") if isinstance(buf, str) else bytes(buf)
    arr = np.frombuffer(raw, dtype=dtype)
    rows, cols = get_int(ds, "Rows", 0), get_int(ds, "Columns", 0)
    if arr.size != rows * cols:
        raise RuntimeError(f"GDCM returned {arr.size} values for a {rows}x{cols} image")
    arr = arr.reshape(rows, cols)
    bits_stored = get_int(ds, "BitsStored", 0)
    if 0 < bits_stored < arr.dtype.itemsize * 8 and arr.dtype.kind in "iu":
        mask = (1 << bits_stored) - 1
        as_unsigned = arr.astype(np.int64) & mask
        if get_int(ds, "PixelRepresentation", 0) == 1:
            sign = 1 << (bits_stored - 1)
            as_unsigned = (as_unsigned ^ sign) - sign
        arr = as_unsigned.astype(np.int32 if arr.dtype.kind == "i" else np.uint32)
    return arr
