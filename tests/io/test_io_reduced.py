"""Reduced-resolution decoding: JPEG 2000 resolution levels (OpenJPEG), JPEG DCT scaling (OpenCV), and the fallbacks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from factories import block_means, make_cxr_dataset, save_encapsulated
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

import cxrtriage.io.reduced as reduced
from cxrtriage.io import assess, read_image
from cxrtriage.io.dicom import read_dicom, read_dicom_detailed
from cxrtriage.io.inspect import inspect_file
from cxrtriage.io.raster import read_raster_detailed
from cxrtriage.io.reduced import ReducedDecodeError, block_average, decode_j2k_reduced, scale_for
from cxrtriage.types import Image2D, InputKind, SourceRef, reduced_shape


def _chest(rows: int = 300, cols: int = 260, top: int = 4095) -> np.ndarray:
    """A smooth chest-like picture with some texture (lungs dark, mediastinum bright), 12-bit."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    lungs = (((yy - rows * 0.5) / (rows * 0.35)) ** 2 + ((np.abs(xx - cols * 0.5) - cols * 0.22) / (cols * 0.15)) ** 2) < 1
    img = 0.75 - 0.45 * lungs + 0.05 * np.sin(xx / 15.0) * np.cos(yy / 20.0)
    return np.clip(img * top, 0, top).astype(np.uint16)


def _j2k_dicom(path: Path, pixels: np.ndarray, **attrs: object) -> Path:
    ds = make_cxr_dataset(rows=pixels.shape[0], cols=pixels.shape[1], pixels=pixels, **attrs)  # type: ignore[arg-type]
    ds.compress(JPEG2000Lossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg_dicom(path: Path, pixels: np.ndarray) -> Path:
    ds = make_cxr_dataset(rows=pixels.shape[0], cols=pixels.shape[1], pixels=pixels, bits_stored=8)
    ds.BitsAllocated, ds.HighBit = 8, 7
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _area(full: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(cv2.resize(full.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA))


def test_scale_is_the_largest_power_of_two_allowed() -> None:
    assert [scale_for(f, 32) for f in (0.5, 1.0, 1.99, 2.0, 3.9, 4.0, 8.7, 100.0)] == [1, 1, 1, 2, 2, 4, 8, 32]
    assert scale_for(8.7, 4) == 4 and scale_for(float("nan"), 8) == 1
    assert reduced_shape((1955, 1841), 8) == (245, 231) and reduced_shape((8, 8), 8) == (1, 1)


def test_jpeg2000_is_decoded_at_the_allowed_resolution_level_with_the_full_geometry(tmp_path: Path) -> None:
    pixels = _chest()
    path = _j2k_dicom(tmp_path / "j2k.dcm", pixels)
    full = read_dicom(path)
    image, facts = read_dicom_detailed(path, max_scale=lambda shape: 4.6)
    assert full.scale == 1 and np.array_equal(full.pixels, pixels.astype(np.float32))
    assert image.scale == 4 and image.shape == (300, 260) and image.pixels.shape == (75, 65)
    assert image.full_shape == (300, 260) and image.reduced
    assert facts.reduction == "1/4: 65x75 decoded of 260x300" and facts.decoder.startswith("OpenJPEG ")
    assert "2 resolution level(s) discarded" in facts.decoder
    # the wavelet low-pass band: the full image, low-pass filtered and subsampled (its samples sit on the even
    # positions of each level, a fraction of a reduced pixel from an area average's centres), same value range
    ref = _area(full.pixels, image.pixels.shape)
    assert np.corrcoef(ref.ravel(), image.pixels.ravel())[0, 1] > 0.95
    assert abs(float(image.pixels.mean()) - float(full.pixels.mean())) < 0.01 * 4095
    assert image.value_range == full.value_range and image.voi == full.voi and image.notes == full.notes


def test_no_reduction_when_the_consumers_need_every_pixel(tmp_path: Path) -> None:
    path = _j2k_dicom(tmp_path / "j2k.dcm", _chest())
    image, facts = read_dicom_detailed(path, max_scale=lambda shape: 1.9)
    assert image.scale == 1 and image.pixels.shape == (300, 260)
    assert facts.reduction.startswith("none: the consumers need the full resolution")
    _, facts = read_dicom_detailed(path)
    assert facts.reduction == "none (full resolution)"


def test_a_failing_reduced_path_falls_back_to_full_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _j2k_dicom(tmp_path / "j2k.dcm", _chest())
    monkeypatch.setattr(reduced, "openjpeg_decoder", lambda: None)  # as without libopenjp2
    image, facts = read_dicom_detailed(path, max_scale=lambda shape: 8.0)
    # decoded in full, then block averaged: still as small as the consumers allow
    assert image.scale == 8 and np.array_equal(image.pixels, block_average(_chest(), 8))
    assert "reduced decoding failed (the system libopenjp2 is not available)" in facts.reduction
    assert facts.reduction == ("1/8: 33x38 block-averaged after a full decode of 260x300 (reduced decoding failed "
                               "(the system libopenjp2 is not available))")
    assert facts.decoder.startswith("pydicom")
    with pytest.raises(ReducedDecodeError, match="not a bare JPEG 2000"):
        decode_j2k_reduced(b"\xff\xd8\xff\xe0" + bytes(60), rows=8, columns=8, max_scale=4.0)


def test_signedness_that_disagrees_with_pixel_representation_is_left_to_the_full_decoder(tmp_path: Path) -> None:
    path = _j2k_dicom(tmp_path / "j2k.dcm", _chest())
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = 1  # the codestream says unsigned
    ds.save_as(tmp_path / "signed.dcm")
    image, facts = read_dicom_detailed(tmp_path / "signed.dcm", max_scale=lambda shape: 4.0)
    assert "signedness" in facts.reduction and "block-averaged after a full decode" in facts.reduction
    assert image.scale == 4 and facts.decoder.startswith("pydicom")


def test_jpeg_baseline_dicom_uses_dct_scaling(tmp_path: Path) -> None:
    pixels = (_chest(320, 280, 255)).astype(np.uint8)
    path = _jpeg_dicom(tmp_path / "jpeg.dcm", pixels)
    full = read_dicom(path)
    image, facts = read_dicom_detailed(path, max_scale=lambda shape: 8.0)
    assert image.scale == 8 and image.pixels.shape == (40, 35) and image.shape == (320, 280)
    assert facts.decoder.startswith("OpenCV") and facts.reduction.startswith("1/8: 35x40")
    assert np.corrcoef(_area(full.pixels, (40, 35)).ravel(), image.pixels.ravel())[0, 1] > 0.99


def test_grey_jpeg_files_are_reduced_and_colour_ones_decoded_in_full(tmp_path: Path) -> None:
    grey = _chest(256, 200, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "grey.jpg"), grey)
    cv2.imwrite(str(tmp_path / "colour.jpg"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    small = read_image(tmp_path / "grey.jpg", max_scale=lambda shape: 4.0)
    assert small.scale == 4 and small.pixels.shape == (64, 50) and small.shape == (256, 200)
    assert small.source.kind is InputKind.RASTER and small.value_range == (0.0, 255.0)
    _, how = read_raster_detailed(tmp_path / "grey.jpg", max_scale=lambda shape: 4.0)
    assert how.startswith("1/4: 50x64 decoded of 200x256 by OpenCV") and "DCT scaling 1/4" in how
    # colour JPEG and PNG: decoded in full, then block averaged
    for name in ("colour.jpg", "grey.png"):
        image, how = read_raster_detailed(tmp_path / name, max_scale=lambda shape: 4.0)
        assert image.scale == 4 and image.pixels.shape == (64, 50)
        assert how == "1/4: 50x64 block-averaged after a full decode of 200x256 by OpenCV"
    png = read_image(tmp_path / "grey.png", max_scale=lambda shape: 4.0)
    assert np.array_equal(png.pixels, block_average(grey, 4)) and png.value_range == (0.0, 255.0)
    assert read_raster_detailed(tmp_path / "grey.png", max_scale=lambda shape: 1.5)[1] == (
        "none: the consumers need the full resolution")
    a = assess(tmp_path / "grey.jpg", max_scale=lambda shape: 2.0)
    assert a.image is not None and a.image.scale == 2


def test_image2d_refuses_a_scale_that_does_not_match_its_pixels() -> None:
    src = SourceRef("x", InputKind.DICOM)
    px = np.zeros((10, 9), np.float32)
    assert Image2D(px, (0, 1), src, full_shape=(40, 33), scale=4).shape == (40, 33)
    with pytest.raises(ValueError, match="reduced by"):
        Image2D(px, (0, 1), src, full_shape=(40, 40), scale=4)
    with pytest.raises(ValueError, match="full_shape"):
        Image2D(px, (0, 1), src, scale=2)


def test_inspect_says_which_path_predict_uses(tmp_path: Path) -> None:
    path = _j2k_dicom(tmp_path / "j2k.dcm", _chest())
    report = inspect_file(path, max_scale=lambda shape: 8.0)
    assert report.reduced_decode.startswith("1/8: 33x38 decoded of 260x300 by OpenJPEG ")
    assert report.rows == 300 and report.decoder.startswith("pydicom")  # the full read is reported as before
    plain = tmp_path / "plain.dcm"
    make_cxr_dataset(rows=300, cols=260, pixels=_chest()).save_as(plain, enforce_file_format=True)
    assert inspect_file(plain, max_scale=lambda shape: 8.0).reduced_decode == (
        "1/8: 33x38 block-averaged after a full decode of 260x300 (Explicit VR Little Endian has no reduced-resolution "
        "decoding) by numpy (uncompressed 16-bit little endian)")
    assert inspect_file(path).reduced_decode == ""


def _textured(rows: int = 256, cols: int = 240) -> np.ndarray:
    """`_chest` with fine detail (ribs-like stripes and deterministic grain), 8-bit: what the low-pass band keeps
    sharper than an area average does."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    grain = cv2.GaussianBlur(np.random.default_rng(7).normal(0, 1, (rows, cols)).astype(np.float32), (0, 0), 1.2)
    img = _chest(rows, cols, top=200).astype(np.float32) + 20 * np.sin(yy / 3.1 + xx / 17.0) + 25 * grain
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("lossy", [False, True], ids=["5/3 lossless", "9/7 lossy"])
@pytest.mark.parametrize("scale", [2, 4])
def test_a_jpeg2000_level_is_made_the_area_average_of_the_full_decode(tmp_path: Path, lossy: bool,
                                                                       scale: int) -> None:
    pixels = _textured()
    ds = make_cxr_dataset(rows=pixels.shape[0], cols=pixels.shape[1], pixels=pixels, bits_stored=8)
    ds.BitsAllocated, ds.HighBit = 8, 7
    if lossy:
        ds.compress(pydicom.uid.JPEG2000, j2k_cr=[8])
    else:
        ds.compress(JPEG2000Lossless)
    path = tmp_path / "j2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    full = read_dicom(path).pixels
    image, facts = read_dicom_detailed(path, max_scale=lambda shape: float(scale))
    assert image.scale == scale and f"{'9/7' if lossy else '5/3'} level made an area average" in facts.decoder
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
    raw = decode_j2k_reduced(frame, rows=256, columns=240, max_scale=float(scale), correct=False)
    assert raw is not None and raw.area_kernel is None
    area = full.reshape(256 // scale, scale, 240 // scale, scale).mean(axis=(1, 3))
    inner = (slice(2, -2), slice(2, -2))  # the filter replicates the border; compare inside it

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a[inner] - area[inner]) ** 2)))

    # what the pipeline's area resize would have made of the full decode: the corrected level is much closer to it
    # than the level as decoded (measured here: about half the difference or less)
    assert rms(image.pixels) < 0.6 * rms(raw.samples.astype(np.float32))
    assert image.pixels.min() >= 0 and image.pixels.max() <= 255 and image.value_range == (0.0, 255.0)


def _htj2k_dicom(path: Path, pixels: np.ndarray, *, lossy: bool) -> Path:
    """``pixels`` as High-Throughput JPEG 2000 (OpenJPH through imagecodecs: pydicom cannot encode it): lossless
    (reversible 5/3, HTJ2K Lossless) or lossy (irreversible 9/7, ~9:1 on a chest, HTJ2K)."""
    import imagecodecs

    ds = make_cxr_dataset(rows=pixels.shape[0], cols=pixels.shape[1], pixels=pixels, bits_stored=12)
    stream = (imagecodecs.htj2k_encode(pixels, level=0.002, reversible=False) if lossy
              else imagecodecs.htj2k_encode(pixels))
    return save_encapsulated(ds, stream, pydicom.uid.HTJ2K if lossy else pydicom.uid.HTJ2KLossless, path)


@pytest.mark.parametrize("lossy", [False, True], ids=["lossless", "lossy"])
def test_htj2k_is_read_in_full_and_at_reduced_resolution_like_jpeg2000(tmp_path: Path, lossy: bool) -> None:
    # the High-Throughput block coder changes the entropy coding only: the wavelet levels, and so the reduced path
    # and its area filters, are JPEG 2000's (OpenJPEG >= 2.5 decodes both)
    pixels = (_textured().astype(np.uint16) * 16) | 5  # 12-bit, every bit used
    path = _htj2k_dicom(tmp_path / "htj2k.dcm", pixels, lossy=lossy)
    full = read_dicom(path)
    if lossy:
        assert 0 < float(np.abs(full.pixels - pixels).max()) < 400
    else:
        assert np.array_equal(full.pixels, pixels.astype(np.float32))
    image, facts = read_dicom_detailed(path, max_scale=lambda shape: 4.0)
    assert image.scale == 4 and image.pixels.shape == (64, 60) and image.shape == (256, 240)
    assert facts.decoder.startswith("OpenJPEG ") and f"{'9/7' if lossy else '5/3'} level made an area average" in (
        facts.decoder)
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
    raw = decode_j2k_reduced(frame, rows=256, columns=240, max_scale=4.0, correct=False)
    assert raw is not None
    area = full.pixels.reshape(64, 4, 60, 4).mean(axis=(1, 3))
    inner = (slice(2, -2), slice(2, -2))

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a[inner] - area[inner]) ** 2)))

    # as for JPEG 2000 (measured: 65 against 224 lossless, 58 against 181 lossy, in 4095)
    assert rms(image.pixels) < 0.4 * rms(raw.samples.astype(np.float32))
    assert inspect_file(path, max_scale=lambda shape: 4.0).reduced_decode.startswith("1/4: 60x64 decoded of 240x256")


def test_jpeg2000_reduction_stops_at_one_eighth_and_the_filters_keep_the_mean(tmp_path: Path) -> None:
    path = _j2k_dicom(tmp_path / "j2k.dcm", _chest(600, 560))  # OpenJPEG's default: 5 levels, 1/32 possible
    image = read_dicom(path, max_scale=lambda shape: 100.0)
    assert image.scale == reduced.MAX_J2K_SCALE == 8 and image.pixels.shape == (75, 70)
    for reversible in (True, False):
        for scale in (2, 4, 8):
            k = reduced.area_kernel(reversible, scale)
            assert k.shape == (reduced.AREA_KERNEL_TAPS,) * 2 and abs(float(k.sum()) - 1.0) < 1e-4


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32])
def test_block_average_is_the_mean_of_each_block_edges_included(dtype: type) -> None:
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    for shape in ((37, 53), (64, 48), (9, 3), (3, 2), (1, 1)):
        a = (rng.integers(info.min, int(info.max) + 1, size=shape).astype(dtype) if info is not None
             else rng.normal(100.0, 30.0, size=shape).astype(dtype))
        for scale in (1, 2, 4, 8):
            out = block_average(a, scale)
            assert out.dtype == np.float32 and out.shape == reduced_shape(shape, scale)
            # 8-bit means are exact; 16-bit ones are rounded to half a stored unit in the first halving
            tol = 0.5 if dtype in (np.uint16, np.int16) and scale > 1 else 1e-6 * max(1.0, float(np.abs(a).max()))
            assert np.abs(out - block_means(a, scale)).max() <= tol, (shape, scale)
    with pytest.raises(ValueError, match="power of two"):
        block_average(np.zeros((8, 8), np.uint8), 3)


def test_block_average_reads_big_endian_samples_by_value() -> None:
    a = np.random.default_rng(4).integers(0, 4096, size=(20, 18)).astype(">u2")
    assert np.abs(block_average(a, 4) - block_means(a.astype(np.uint16), 4)).max() <= 0.5


def test_uncompressed_dicom_is_averaged_before_its_linear_mappings(tmp_path: Path) -> None:
    # MONOCHROME1 with a rescale: averaging the stored values first is averaging the mapped ones
    pixels = _chest(301, 257)
    ds = make_cxr_dataset(rows=301, cols=257, pixels=pixels, photometric="MONOCHROME1")
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -100
    path = tmp_path / "m1.dcm"
    ds.save_as(path, enforce_file_format=True)
    full, full_facts = read_dicom_detailed(path)
    image, facts = read_dicom_detailed(path, max_scale=lambda shape: 5.0)
    assert full_facts.reduction == "none (full resolution)" and full.scale == 1
    assert image.scale == 4 and image.shape == (301, 257) and image.pixels.shape == (76, 65)
    assert facts.reduction.startswith("1/4: 65x76 block-averaged after a full decode of 257x301")
    assert image.value_range == full.value_range and image.voi == full.voi and image.notes == full.notes
    # within a quarter of a stored unit (the 16-bit rounding, times the slope)
    assert np.abs(image.pixels - block_means(full.pixels, 4)).max() <= 0.25 + 1e-3


def test_a_modality_lut_sequence_keeps_the_full_resolution(tmp_path: Path) -> None:
    pixels = _chest(64, 64, top=255)
    ds = make_cxr_dataset(rows=64, cols=64, pixels=pixels, bits_stored=8)
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new(0x00283006, "US", [int(v) for v in (np.arange(256) ** 2 // 64)])  # not linear
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = pydicom.Sequence([item])
    path = tmp_path / "lut.dcm"
    ds.save_as(path, enforce_file_format=True)
    image, facts = read_dicom_detailed(path, max_scale=lambda shape: 4.0)
    assert image.scale == 1 and image.pixels.shape == (64, 64)
    assert facts.reduction.endswith("not averaged: a Modality LUT Sequence is not linear")


def test_simpleitk_images_are_block_averaged(tmp_path: Path) -> None:
    import SimpleITK as sitk

    pixels = _chest(130, 98)
    path = tmp_path / "chest.mha"
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))
    full = read_image(path)
    image = read_image(path, max_scale=lambda shape: 2.0)
    assert image.source.kind is InputKind.SITK and image.scale == 2 and image.pixels.shape == (65, 49)
    assert image.shape == full.shape == (130, 98) and image.value_range == full.value_range
    assert np.abs(image.pixels - block_means(full.pixels, 2)).max() <= 0.5
    assert inspect_file(path, max_scale=lambda shape: 2.0).reduced_decode == (
        "1/2: 49x65 block-averaged after a full decode of 98x130 by SimpleITK")
