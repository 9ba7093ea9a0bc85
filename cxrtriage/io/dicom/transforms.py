"""Grey-level transforms of DICOM pixels: modality LUT, MONOCHROME1 / INVERSE to MONOCHROME2 sense, VOI as a VoiWindow.

Each function returns what it did as text (it goes into `DicomReadFacts` and the image notes, and from there
into results files: keep the wording stable).

pydicom's `pydicom.pixels.processing` is used where it gives what the reader needs; where it does not, the
reason is given at the place:

- Rescale Slope/Intercept: `apply_modality_lut`, given only values checked here (see `modality_lut`).
- Modality LUT Sequence: own lookup (see `_lut_lookup`).
- MONOCHROME1 and Presentation LUT Shape INVERSE: own inversion (see `to_monochrome2`).
- VOI: not applied here at all. It is recorded as a `VoiWindow`, which a model's preprocessing recipe applies
  after resizing (float values, output in [0, 1]); the tests check `VoiWindow.apply` against `apply_voi_lut`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.valuerep import DSfloat

from cxrtriage.errors import InputError
from cxrtriage.io.dicom.messages import first_line
from cxrtriage.io.dicom.values import get_int, get_numbers, get_text
from cxrtriage.types import VoiWindow

NO_MODALITY_LUT = "none (identity)"


def stored_range(arr: np.ndarray, keyword: str, bits_stored: int, pixel_rep: int) -> tuple[tuple[float, float], list[str]]:
    """Nominal (lo, hi) of the stored values: from BitsStored and PixelRepresentation, or the data when float."""
    if keyword != "PixelData" or arr.dtype.kind == "f":
        return (float(np.nanmin(arr)), float(np.nanmax(arr))), ["floating-point pixel data: value range taken from the data"]
    if pixel_rep == 1:
        return (float(-(1 << (bits_stored - 1))), float((1 << (bits_stored - 1)) - 1)), []
    return (0.0, float((1 << bits_stored) - 1)), []


def modality_lut(arr: np.ndarray, ds: Dataset, stored: tuple[float, float],
                 p: Path) -> tuple[np.ndarray, tuple[float, float], str, list[str]]:
    """PS3.3 C.11.1: LUT Sequence or Rescale Slope/Intercept; returns float32 values, nominal range, description, notes.

    Raises:
        InputError: the Modality LUT Sequence is malformed (the values cannot be interpreted without it).
    """
    notes: list[str] = []
    seq = ds.get("ModalityLUTSequence")
    if seq:
        try:
            lut, first, bits = lut_data(seq[0], ds)
        except Exception as exc:
            raise InputError(f"{p}: (0028,3000) Modality LUT Sequence is malformed ({first_line(exc)}); "
                             "the pixel values cannot be interpreted") from exc
        values = _lut_lookup(arr, lut, first)
        if "RescaleSlope" in ds:
            notes.append("both Modality LUT Sequence and RescaleSlope present: used the LUT Sequence")
        desc = f"Modality LUT Sequence ({lut.size} entries from {first}, {bits}-bit)"
        notes.append(f"modality LUT applied: {desc}")
        return values, (float(lut.min()), float(lut.max())), desc, notes
    # pydicom's apply_modality_lut reads RescaleSlope/Intercept itself: it raises on a malformed DS, turns the
    # image into NaN for a NaN value or into one grey for a zero slope, and ignores a slope without an intercept.
    # So the values are read and checked here, and pydicom is given only those.
    slope_v = get_numbers(ds, "RescaleSlope")
    icpt_v = get_numbers(ds, "RescaleIntercept")
    slope = slope_v[0] if slope_v else None
    intercept = icpt_v[0] if icpt_v else 0.0
    if slope_v is None and icpt_v is not None and intercept != 0.0:
        slope = 1.0
    if slope is not None and (not math.isfinite(slope) or slope == 0.0 or not math.isfinite(intercept)):
        notes.append(f"RescaleSlope/Intercept {slope}/{intercept} invalid: modality LUT ignored")
        slope = None
    if slope is None or (slope == 1.0 and intercept == 0.0):
        if slope_v == [] or icpt_v == []:
            notes.append("RescaleSlope/RescaleIntercept malformed: modality LUT ignored")
        return arr.astype(np.float32), stored, NO_MODALITY_LUT, notes
    checked = Dataset()
    checked.RescaleSlope = DSfloat(slope, auto_format=True)  # auto_format: any float fits the 16-character DS
    checked.RescaleIntercept = DSfloat(intercept, auto_format=True)
    values = apply_modality_lut(arr, checked).astype(np.float32)
    # The nominal range is not something pydicom computes: map the stored range's ends the same way.
    a, b = stored[0] * slope + intercept, stored[1] * slope + intercept
    desc = f"RescaleSlope {slope:g} / RescaleIntercept {intercept:g}"
    notes.append(f"modality LUT applied: {desc}")
    return values, (min(a, b), max(a, b)), desc, notes


def lut_data(item: Dataset, ds: Dataset) -> tuple[np.ndarray, int, int]:
    """(lut values, first mapped value, bits) of a Modality/VOI LUT Sequence item.

    Raises:
        ValueError, KeyError, ...: the item is malformed (callers turn this into a note or an InputError).
    """
    desc = list(item.LUTDescriptor)
    n = int(desc[0]) or 65536
    first = int(desc[1])
    bits = int(desc[2])
    if get_int(ds, "PixelRepresentation", 0) == 1 and first >= 32768:
        first -= 65536  # descriptor read as US although the value is signed (US or SS by PixelRepresentation)
    elem = item["LUTData"]
    if isinstance(elem.value, bytes | bytearray):
        little = ds.original_encoding[1] is not False
        data = np.frombuffer(bytes(elem.value), dtype="<u2" if little else ">u2")
    else:
        data = np.asarray(list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value])
    data = data.astype(np.float64)[:n]
    if data.size == 0:
        raise ValueError("empty LUTData")
    return data, first, bits


def _lut_lookup(arr: np.ndarray, lut: np.ndarray, first: int) -> np.ndarray:
    """``lut[x - first]``, clipped to the table's ends, as float32.

    Not pydicom's apply_modality_lut (3.0.2): it builds the table as ``uint<bits>``, so it fails on 12-bit
    descriptors ("data type 'uint12' not understood"); it takes the first mapped value as read, where a signed
    one stored as US (63488 for -2048, corrected in `lut_data`) must be corrected, and a negative one overflows
    with unsigned pixels; it unpacks OW LUT Data to exactly the announced length (struct.error otherwise);
    and the reader needs the table itself anyway, for the nominal range and the description.
    """
    idx = np.clip(arr.astype(np.int64) - first, 0, lut.size - 1)
    return lut[idx].astype(np.float32)


def to_monochrome2(values: np.ndarray, ds: Dataset, photometric: str,
                   value_range: tuple[float, float]) -> tuple[np.ndarray, float | None, list[str]]:
    """Invert MONOCHROME1, and MONOCHROME2 with PresentationLUTShape INVERSE, about the nominal range.

    Returns (values, mirror, notes); ``mirror`` is ``lo + hi`` when inverted (the `VoiWindow` needs it to window
    the original values), else None.

    Not pydicom's apply_presentation_lut: it inverts about the image's own maximum (``arr.max() - arr``), so the
    result would depend on the image content and the VOI window (defined on the stored values) could not be
    mirrored onto it; it raises on Presentation LUT Shape values other than IDENTITY/INVERSE; and MONOCHROME1 is
    not a Presentation LUT at all (pydicom leaves it to the viewer).
    """
    notes: list[str] = []
    invert = photometric == "MONOCHROME1"
    shape = get_text(ds, "PresentationLUTShape").upper()
    if photometric == "MONOCHROME2" and shape == "INVERSE":
        invert = True
        notes.append("PresentationLUTShape INVERSE on MONOCHROME2: displayed inverted, so inverted here")
    if not invert:
        return values, None, notes
    lo, hi = value_range
    mirror = lo + hi
    if values.dtype == np.float32 and values.flags.writeable and values.flags.owndata:
        values = np.subtract(np.float32(mirror), values, out=values)  # in place: no second full-size copy
    else:
        values = (np.float32(mirror) - values).astype(np.float32)
    if photometric == "MONOCHROME1":
        notes.append(f"MONOCHROME1 inverted to MONOCHROME2 sense: lo + hi - x over [{lo:g}, {hi:g}]")
    return values, mirror, notes


def voi_window(ds: Dataset, *, mirror: float | None = None) -> tuple[VoiWindow | None, str, list[str]]:
    """The first VOI transform (VOI LUT Sequence preferred, else WindowCenter/Width), or None with a note.

    Recorded, not applied: the preprocessing recipe applies it after resizing (see the module docstring).
    """
    notes: list[str] = []
    seq = ds.get("VOILUTSequence")
    if seq:
        try:
            lut, first, bits = lut_data(seq[0], ds)
            desc = f"VOI LUT Sequence ({lut.size} entries from {first}, {bits}-bit)"
            return VoiWindow(lut=lut.astype(np.float32), first_mapped=float(first), mirror=mirror), desc, notes
        except Exception as exc:
            notes.append(f"VOI LUT Sequence malformed ({first_line(exc)}): ignored")
    centers = get_numbers(ds, "WindowCenter")
    widths = get_numbers(ds, "WindowWidth")
    if centers is None and widths is None:
        return None, "none", notes
    if not centers or not widths:
        notes.append("WindowCenter/WindowWidth missing or malformed: no VOI window")
        return None, "none", notes
    center, width = centers[0], widths[0]
    function = (get_text(ds, "VOILUTFunction").upper() or "LINEAR").split("\\")[0]
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        notes.append(f"VOILUTFunction '{function}' unknown: LINEAR used")
        function = "LINEAR"
    # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID.
    valid = math.isfinite(center) and math.isfinite(width) and (width >= 1.0 if function == "LINEAR" else width > 0.0)
    if not valid:
        notes.append(f"WindowCenter/WindowWidth {center:g}/{width:g} invalid for {function}: no VOI window")
        return None, "none", notes
    extra = f" (first of {len(centers)})" if len(centers) > 1 else ""
    desc = f"WindowCenter {center:g} / WindowWidth {width:g} {function}{extra}"
    return VoiWindow(center=center, width=width, function=function, mirror=mirror), desc, notes
