"""The libopenjp2 binding: in-memory codestreams, fragments read where they lie, OpenJPEG's errors as exceptions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from openjpeg.utils import encode_array

from cxrtriage.io.openjpeg import OpenJpegError, decode_reduced, openjpeg_version

pytestmark = pytest.mark.skipif(openjpeg_version() is None, reason="the system libopenjp2 is not installed")


def _picture(rows: int = 150, cols: int = 131, bits: int = 12, signed: bool = False) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    img = 0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 0.05 * rng.standard_normal((rows, cols))
    top = (1 << bits) - 1
    values = np.clip(img * top, 0, top)
    if signed:
        return (values - (1 << (bits - 1))).astype(np.int16)
    return values.astype(np.uint16 if bits > 8 else np.uint8)


def _codestream(pixels: np.ndarray, bits: int) -> bytes:
    # pylibjpeg-openjpeg's encoder (its own OpenJPEG build): a bare J2K codestream, lossless 5/3, 5 levels
    return bytes(encode_array(pixels, bits_stored=bits, codec_format=0))


@pytest.mark.parametrize(("bits", "signed", "dtype"), [(12, False, np.uint16), (8, False, np.uint8),
                                                       (16, False, np.uint16), (12, True, np.int16)])
def test_full_resolution_is_the_lossless_image_itself(bits: int, signed: bool, dtype: type) -> None:
    pixels = _picture(bits=bits, signed=signed)
    out = decode_reduced([_codestream(pixels, bits)], 0)
    assert out.dtype == dtype and out.shape == pixels.shape
    assert np.array_equal(out, pixels)


@pytest.mark.parametrize("reduce", [1, 2, 3])
def test_a_reduced_level_has_the_ceil_size_and_looks_like_the_image(reduce: int) -> None:
    pixels = _picture()
    out = decode_reduced([_codestream(pixels, 12)], reduce)
    s = 1 << reduce
    assert out.shape == (-(-150 // s), -(-131 // s)) and out.dtype == np.uint16
    small = cv2.resize(pixels.astype(np.float32), (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.corrcoef(out.ravel().astype(np.float64), small.ravel())[0, 1] > 0.95


def test_fragments_are_read_across_their_boundaries_as_one_stream() -> None:
    code = _codestream(_picture(), 12)
    whole = decode_reduced([code], 1)
    # cuts inside the SIZ marker, a one-byte and an empty fragment, memoryviews as the DICOM reader passes them
    view = memoryview(code)
    cuts = [0, 3, 4, 4, 41, 500, len(code) // 2, len(code)]
    parts = [view[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    assert np.array_equal(decode_reduced(parts, 1), whole)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_broken_codestream_raises_openjpeg_error_not_a_crash(damage: str) -> None:
    code = _codestream(_picture(), 12)
    data = {"truncated": code[:60], "garbage": b"\xff\x4f\xff\x51" + bytes(range(256)) * 4, "empty": b""}[damage]
    with pytest.raises(OpenJpegError):
        decode_reduced([data], 1)


def test_more_levels_than_the_codestream_has_is_an_error_with_openjpegs_message() -> None:
    code = _codestream(_picture(), 12)  # 5 decomposition levels
    with pytest.raises(OpenJpegError, match=r"[Rr]educ|resolution|decod"):
        decode_reduced([code], 7)
