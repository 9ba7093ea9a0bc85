"""Decode DICOM pixel data with fallbacks: each pydicom plugin in turn (OpenJPEG first for JPEG 2000), then GDCM.

No decoder failure escapes as anything but an `InputError`: a plugin's exception, a Rust panic (pylibjpeg-rle,
a ``BaseException``) and a hard crash of GDCM (which aborts its process on some malformed files) all become the
reason the file failed. The GDCM fallback runs in a short-lived child process (`gdcm_child.py`), so that its
crash cannot take the run with it when decoding happens in the main process (``--workers 0``, reports); the
pydicom plugins run in this process, on sizes and layouts already checked against the codestream (`checks.py`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from cxrtriage.errors import InputError
from cxrtriage.io.dicom.messages import first_line, warning_notes
from cxrtriage.io.dicom.values import get_int
from cxrtriage.io.limits import MAX_IMAGE_MEMORY
from cxrtriage.io.native import decoder_notes, held_native_output

log = logging.getLogger(__name__)

_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                           "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
GDCM_TIMEOUT_S = 300
"""A GDCM child still decoding after this long is killed (a hostile codestream can make a decoder loop)."""
_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})  # Implicit / Explicit VR LE
_GDCM_CHILD = Path(__file__).with_name("gdcm_child.py")
_GDCM_ADDRESS_SPACE = 3 * MAX_IMAGE_MEMORY + (256 << 20)  # the image, GDCM's copies of it, the interpreter
_GDCM_DTYPES = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
                "UINT32": np.uint32, "INT32": np.int32, "FLOAT32": np.float32, "FLOAT64": np.float64}


def decode(ds: Dataset, p: Path, ts: str) -> tuple[np.ndarray, str, list[str]]:
    """Pixels of ``ds`` (read from ``p``, transfer syntax ``ts``), the decoder that succeeded, and notes.

    Each installed pydicom plugin for the syntax in turn (`_plugins`), then GDCM on the file, in a child process.
    The decoder is named as '``pydicom (<library>)``', e.g. 'pydicom (pylibjpeg-libjpeg)'.

    Raises:
        InputError: the pixel data is shorter than the header implies, a decoder panicked or crashed on it
            (corrupt compressed data), or no decoder can decode it.
    """
    native = native_words(ds, ts)
    if native is not None:
        return native, "numpy (uncompressed 16-bit little endian)", []
    arr, label, notes, errors = _decode_pydicom(ds, p, ts)
    if arr is not None:
        return arr, f"pydicom ({label})" if label != "pydicom" else "pydicom", notes
    try:
        arr = _decode_gdcm(ds, p)
        notes.append(f"decoded with GDCM directly after pydicom failed ({'; '.join(errors)[:240]})")
        return arr, "gdcm (fallback)", notes
    except Exception as exc:
        errors.append(f"gdcm: {' '.join(str(exc).split())}")
    raise InputError(f"{p}: pixel data cannot be decoded ({UID(ts).name}, {ts}); tried {'; '.join(errors)}. "
                     "Re-export the image uncompressed or with a standard lossless syntax")


def _decode_pydicom(ds: Dataset, p: Path, ts: str) -> tuple[np.ndarray | None, str, list[str], list[str]]:
    """The pixels from the first pydicom plugin that decodes them (None when none does), its `plugin_label`, the
    notes, and each failed plugin's error."""
    errors: list[str] = []
    notes: list[str] = []
    tried: list[str] = []
    arr: np.ndarray | None = None
    label = ""
    with warnings.catch_warnings(record=True) as caught, held_native_output() as held:
        warnings.simplefilter("always")
        for name in _plugins(ts) or ("",):
            label = plugin_label(name, ts)
            try:
                ds.pixel_array_options(decoding_plugin=name)
                arr = ds.pixel_array
                break
            except Exception as exc:  # this plugin cannot: the next one may (pydicom's own rule)
                msg = " ".join(str(exc).split()).removeprefix(_ALL_FAILED).removeprefix(f"{name}: ")
                if "less than expected" in msg or "number of bytes" in msg.lower():
                    raise InputError(f"{p}: pixel data is shorter than Rows x Columns x BitsAllocated imply ({msg}); "
                                     "the file is truncated or its header is wrong") from exc
                errors.append(f"{label}: {msg}")
                tried.append(label)
            except BaseException as exc:
                # A Rust panic (pyo3 PanicException) is a BaseException: pydicom's plugin loop does not catch it, and
                # a more lenient decoder that "succeeds" after it would hide data that are known to be corrupt.
                _reraise_exit(exc)
                raise _panicked(p, ts, exc) from None
            finally:
                ds.pixel_array_options(decoding_plugin="")
    if arr is not None:
        if tried:
            notes.append(f"decoded by {label} after {', '.join(tried)} could not ({'; '.join(errors)[:240]})")
        notes.extend(warning_notes(caught))
    # What a plugin that failed printed counts too: damage it reported does not go away when the next one decodes.
    said_by = " then ".join([*tried, label] if arr is not None else tried)
    notes.extend(decoder_notes(held.messages(), said_by))
    return arr, label, notes, errors


def native_words(ds: Dataset, ts: str) -> np.ndarray | None:
    """Uncompressed little-endian 16-bit greyscale pixel data (one frame) read straight from the data set's bytes,
    the bits above BitsStored cleared (unsigned) or filled with the sign (signed), as pydicom does; None for any other
    layout (pydicom decodes it).

    Why not pydicom: for this, the most common layout of DX/CR images, its ``pixel_array`` copies the pixels twice
    (reading them, then correcting the unused bits), ~5 of the ~7 ms the 3.6-megapixel RG1 chest costs to read; here
    one masking pass makes the array (tests/io/test_io_dicom_native.py compares both on every case).
    """
    if ts not in _NATIVE_LITTLE_ENDIAN:
        return None
    data = ds.get("PixelData")
    rows, cols = get_int(ds, "Rows", 0), get_int(ds, "Columns", 0)
    allocated, stored = get_int(ds, "BitsAllocated", 0), get_int(ds, "BitsStored", 0)
    signed = get_int(ds, "PixelRepresentation", 0)
    if (not isinstance(data, bytes) or allocated != 16 or not 1 <= stored <= 16 or signed not in (0, 1)
            or get_int(ds, "HighBit", stored - 1) != stored - 1 or get_int(ds, "SamplesPerPixel", 1) != 1
            or get_int(ds, "NumberOfFrames", 1) not in (0, 1) or rows < 1 or cols < 1
            or len(data) < 2 * rows * cols):
        return None
    words = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
    if stored == 16:
        return words.astype(words.dtype.newbyteorder("="))  # a writable copy in native byte order
    if signed:
        shift = 16 - stored  # move the sign bit to bit 15 and back: an arithmetic shift fills the bits above it
        out: np.ndarray = np.left_shift(words, shift, dtype=np.int16)
        np.right_shift(out, shift, out=out)
        return out
    masked: np.ndarray = np.bitwise_and(words, np.uint16((1 << stored) - 1), dtype=np.uint16)
    return masked


def _reraise_exit(exc: BaseException) -> None:
    """Interrupts and exits are the user's or the interpreter's, never a file's problem."""
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise exc


def _panicked(p: Path, ts: str, exc: BaseException) -> InputError:
    return InputError(f"{p}: the {UID(ts).name} decoder stopped on an internal error ({type(exc).__name__}: "
                      f"{first_line(exc)}): the compressed pixel data are corrupt; re-export or re-send the image")


_ALL_FAILED = "Unable to decode as exceptions were raised by all available plugins: "  # pydicom's, even for one
_PLUGIN_ORDER = ("gdcm", "pylibjpeg", "pillow", "pyjpegls", "pydicom")
"""The order pydicom 3 tries its decoding plugins in, for every syntax that has several."""


def _plugins(ts: str) -> tuple[str, ...]:
    """pydicom's decoding plugins installed for ``ts``, in the order they are tried; () where pydicom decodes the
    syntax itself (uncompressed layouts) or knows no decoder.

    The plugins are tried one by one (pydicom's ``decoding_plugin`` option) rather than by pydicom's own loop, so that
    ``inspect`` and the notes can say which one decoded the file. For JPEG 2000 the OpenJPEG plugin (pylibjpeg)
    goes first: on the RG1 chest it needs ~0.6-0.85x the CPU time of pydicom's first choice (GDCM), which matters
    when several decode workers share the cores.
    """
    from pydicom.pixels.decoders.base import get_decoder

    try:
        available = set(get_decoder(UID(ts)).available_plugins)
    except Exception:  # no decoder for this syntax: pydicom says why when asked for the pixels
        return ()
    order = [n for n in _PLUGIN_ORDER if n in available] + sorted(available - set(_PLUGIN_ORDER))
    if ts in _J2K_SYNTAXES and "pylibjpeg" in order:
        order.remove("pylibjpeg")
        order.insert(0, "pylibjpeg")
    return tuple(order)


def plugin_label(name: str, ts: str) -> str:
    """The library behind pydicom plugin ``name`` for syntax ``ts``: pylibjpeg is a front for three ('pylibjpeg-openjpeg'
    for JPEG 2000, 'pylibjpeg-rle' for RLE, 'pylibjpeg-libjpeg' for the JPEG family); '' is pydicom's own decoding."""
    if name == "pylibjpeg":
        return ("pylibjpeg-openjpeg" if ts in _J2K_SYNTAXES else "pylibjpeg-rle" if ts == _RLE_LOSSLESS
                else "pylibjpeg-libjpeg")
    return _PLUGIN_LABELS.get(name, name or "pydicom")


_RLE_LOSSLESS = "1.2.840.10008.1.2.5"
_PLUGIN_LABELS = {"gdcm": "GDCM", "pillow": "Pillow", "pyjpegls": "pyjpegls (CharLS)", "pydicom": "its own RLE decoder"}


def _decode_gdcm(ds: Dataset, p: Path) -> np.ndarray:
    """GDCM on the file itself, with BitsStored masking and sign extension (GDCM returns the raw samples).

    Runs `gdcm_child.py` in a child process: this process only sees its exit status (a crash is a reason like
    any other) and the samples.
    """
    raw, scalar = _gdcm_in_child(p)
    dtype = _GDCM_DTYPES.get(scalar)
    if dtype is None:
        raise RuntimeError(f"unsupported GDCM scalar type {scalar}")
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


def _gdcm_in_child(p: Path) -> tuple[bytes, str]:
    """(samples, GDCM scalar type) of ``p`` decoded by GDCM in a child process.

    The child gets the open file as a descriptor where the platform allows it (GDCM cannot open a file name that
    is not valid UTF-8), and GDCM's messages, which it prints on the C stderr, come back for the error message.
    """
    fd = os.open(p, os.O_RDONLY)
    try:
        fd_path = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}"
        target = fd_path if os.name == "posix" else str(p)
        cmd = [sys.executable, "-P", str(_GDCM_CHILD), target, str(_GDCM_ADDRESS_SPACE)]
        try:
            res = subprocess.run(cmd, capture_output=True, timeout=GDCM_TIMEOUT_S, pass_fds=(fd,) if os.name == "posix" else (),
                                 stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"GDCM was still decoding after {GDCM_TIMEOUT_S} s and was stopped") from exc
    finally:
        os.close(fd)
    messages = [line.strip() for line in res.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    said = f": {messages[-1][:200]}" if messages else ""
    if res.returncode < 0:
        try:
            name = signal.Signals(-res.returncode).name
        except ValueError:
            name = f"signal {-res.returncode}"
        raise RuntimeError(f"GDCM crashed ({name}) on this file{said}")
    if res.returncode != 0:
        raise RuntimeError(f"GDCM could not decode the file (exit status {res.returncode}){said}")
    line, _, raw = res.stdout.partition(b"\n")
    try:
        head = json.loads(line)
        return raw, str(head["scalar"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"GDCM child process answered something unreadable{said}") from exc
