"""PNG / JPEG / TIFF (8/16-bit, grey, grey-in-RGB, colour) and NIfTI / MHA / NRRD via SimpleITK."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrtriage.errors import InputError
from cxrtriage.io import assess, probe, read_image, select
from cxrtriage.io.raster import read_raster_header
from cxrtriage.types import InputKind


def gradient(rows: int = 20, cols: int = 30, dtype: type = np.uint8) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return np.linspace(0, top, rows * cols).reshape(rows, cols).astype(dtype)


def test_png_16bit_keeps_depth_and_range(tmp_path: Path) -> None:
    arr = gradient(dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "x.png"), arr)
    pr = probe(tmp_path / "x.png")
    assert (pr.fmt, pr.rows, pr.columns, pr.bits, pr.samples_per_pixel) == ("png", 20, 30, 16, 1)
    img = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(img.pixels, arr.astype(np.float32))
    assert img.value_range == (0.0, 65535.0)
    assert img.source.kind is InputKind.RASTER and img.pixel_spacing_mm is None
    assert select(pr).status == "scored"


def test_png_8bit_and_tiff_16bit(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "g.png"), gradient())
    assert read_image(tmp_path / "g.png").value_range == (0.0, 255.0)
    arr = gradient(dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "t.tif"), arr)
    header = read_raster_header(tmp_path / "t.tif", "tiff")
    assert (header.rows, header.columns, header.bits, header.channels) == (20, 30, 16, 1)
    img = read_image(tmp_path / "t.tif")
    np.testing.assert_array_equal(img.pixels, arr.astype(np.float32))
    assert img.value_range == (0.0, 65535.0)


def test_grey_jpeg_stored_as_rgb_is_scored_and_read_as_grey(tmp_path: Path) -> None:
    grey = gradient(64, 64)
    cv2.imwrite(str(tmp_path / "g.jpg"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    pr = probe(tmp_path / "g.jpg")
    assert pr.samples_per_pixel == 3 and not pr.colour
    assert select(pr).status == "scored"
    img = read_image(tmp_path / "g.jpg")
    assert img.pixels.shape == (64, 64)
    assert np.abs(img.pixels - grey).mean() < 3
    assert any("grey image stored as RGB" in n for n in img.notes)


def test_colour_raster_is_excluded(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16] = (0, 0, 255)
    rgb[:, 16:] = (0, 255, 0)
    cv2.imwrite(str(tmp_path / "c.png"), rgb)
    pr = probe(tmp_path / "c.png")
    assert pr.colour
    assert select(pr).status == "excluded" and "colour content" in select(pr).reason
    assert any("luminance" in n for n in read_image(tmp_path / "c.png").notes)


def test_damaged_png_fails_with_reason(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "ok.png"), gradient())
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:60])
    with pytest.raises(InputError, match="cut.png: OpenCV could not decode"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "hdr.png").write_bytes(data[:8] + b"\x00" * 30)
    sel = select(probe(tmp_path / "hdr.png"))
    assert sel.status == "failed" and "malformed PNG header" in sel.reason


def test_absurd_png_header_refused_before_decoding(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "ok.png"), gradient())
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[16:24] = struct.pack(">II", 100000, 100000)  # IHDR width/height (CRC now wrong: never decoded)
    (tmp_path / "huge.png").write_bytes(bytes(data))
    sel = select(probe(tmp_path / "huge.png"))
    assert sel.status == "failed" and "exceeds the limit" in sel.reason
    with pytest.raises(InputError, match="huge.png: image size 100000x100000 exceeds the limit"):
        read_image(tmp_path / "huge.png")


def test_png_chunk_announcing_more_than_the_file_is_refused_before_decoding(tmp_path: Path) -> None:
    # Found by tests/fuzz: libpng allocates a chunk's announced length before reading it, so a 10 KB PNG with a
    # tEXt chunk announcing 2 GiB made OpenCV allocate 2 GiB. A chunk the file cannot hold is damage.
    cv2.imwrite(str(tmp_path / "ok.png"), gradient())
    data = (tmp_path / "ok.png").read_bytes()
    idat = data.index(b"IDAT") - 4
    body = b"tEXt" + b"a\0b"
    lying = struct.pack(">I", 0x7FFFFFF0) + body + struct.pack(">I", zlib.crc32(body))
    (tmp_path / "text.png").write_bytes(data[:idat] + lying + data[idat:])
    sel = select(probe(tmp_path / "text.png"))
    assert sel.status == "failed" and "the tEXt chunk at byte 33 announces 2147483632 bytes, past the end" in sel.reason
    with pytest.raises(InputError, match="text.png: malformed PNG header .*tEXt chunk .* past the end of the file"):
        read_image(tmp_path / "text.png")
    damaged = struct.pack(">I", 0x7FFFFFF0) + b"\x01\x02\x03\x04a\0b" + b"\0" * 4  # a chunk type that is no name
    (tmp_path / "type.png").write_bytes(data[:idat] + damaged + data[idat:])
    assert "the 0x01020304 chunk at byte 33 announces" in select(probe(tmp_path / "type.png")).reason
    # an honest text chunk, and a file cut short inside its image data, are still the decoder's business
    honest = struct.pack(">I", 3) + body + struct.pack(">I", zlib.crc32(body))
    (tmp_path / "honest.png").write_bytes(data[:idat] + honest + data[idat:])
    assert read_image(tmp_path / "honest.png").pixels.shape == gradient().shape
    (tmp_path / "cut-in-idat.png").write_bytes(data[:idat + 20])
    with pytest.raises(InputError, match="OpenCV could not decode"):
        read_image(tmp_path / "cut-in-idat.png")


def _write_sitk(arr: np.ndarray, path: Path, spacing: tuple[float, ...] | None = None) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    if spacing is not None:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("name", ["x.nii", "x.nii.gz", "x.mha", "x.nrrd"])
def test_sitk_2d_images_read_with_spacing(tmp_path: Path, name: str) -> None:
    arr = gradient(12, 10, np.uint16)
    path = _write_sitk(arr, tmp_path / name, spacing=(0.15, 0.2))  # x (columns), y (rows)
    renamed = path.rename(tmp_path / "renamed.bin")  # recognised by content, not by name
    pr = probe(renamed)
    assert pr.kind is InputKind.SITK and (pr.rows, pr.columns) == (12, 10)
    assert select(pr).status == "scored"
    img = read_image(renamed)
    np.testing.assert_array_equal(img.pixels, arr.astype(np.float32))
    assert img.pixel_spacing_mm == pytest.approx((0.2, 0.15))
    assert img.value_range == (0.0, 65535.0)


def test_nifti_single_slice_volume_ok_true_volume_refused(tmp_path: Path) -> None:
    one = _write_sitk(gradient(12, 10, np.uint16)[None], tmp_path / "one.nii.gz")
    assert read_image(one).pixels.shape == (12, 10)
    vol = _write_sitk(np.zeros((5, 12, 10), np.int16), tmp_path / "vol.nii.gz")
    pr = probe(vol)
    assert pr.frames == 5
    assert select(pr).status == "excluded" and "volume" in select(pr).reason
    with pytest.raises(InputError, match="vol.nii.gz: a 10x12x5 volume \\(5 slices\\)"):
        read_image(vol)


def test_gzip_that_is_not_nifti_is_not_recognised(tmp_path: Path) -> None:
    (tmp_path / "x.nii.gz").write_bytes(gzip.compress(b"hello world" * 100))
    sel = select(probe(tmp_path / "x.nii.gz"))
    assert sel.status == "failed" and "gzip file whose content is not a NIfTI image" in sel.reason


def test_metaimage_without_dimensions_fails_with_a_reason(tmp_path: Path) -> None:
    # Found by tests/fuzz: ITK reads "NDims = 0" as a size of no dimensions, which surfaced as an IndexError
    # ("unexpected ... please report this file") instead of a reason.
    header = ("ObjectType = Image\nNDims = 0\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "ElementSpacing = 0.2 0.2\nDimSize = 30 20\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    (tmp_path / "nodims.mha").write_bytes(header.encode() + gradient().tobytes())
    sel = select(probe(tmp_path / "nodims.mha"))
    assert sel.status == "failed" and sel.reason == "the image header declares no dimensions; the file is damaged"
    with pytest.raises(InputError, match="nodims.mha: the image header declares no dimensions"):
        read_image(tmp_path / "nodims.mha")


def _noise(rows: int = 128, cols: int = 128) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (rows, cols), dtype=np.uint8)  # incompressible: a big file


@pytest.mark.parametrize(("ext", "fmt", "marker"), [(".png", "PNG", "IEND chunk"),
                                                    (".jpg", "JPEG", "end-of-image marker (FFD9)")])
def test_truncated_png_and_jpeg_are_named_by_content_and_said_truncated(tmp_path: Path, ext: str, fmt: str,
                                                                        marker: str) -> None:
    cv2.imwrite(str(tmp_path / f"ok{ext}"), _noise())
    data = (tmp_path / f"ok{ext}").read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[:len(data) // 3])
    with pytest.raises(InputError) as info:
        read_image(cut)
    msg = str(info.value)
    assert msg.startswith(f"{cut}: OpenCV could not decode this {fmt} file")
    assert f"without its {marker}, so it is likely truncated" in msg and "re-send or re-export the original" in msg
    assert "re-export it as PNG" not in msg
    sel = assess(cut).selection  # the results row says the same
    assert sel.status == "failed" and f"this {fmt} file" in sel.reason and "likely truncated" in sel.reason


def test_undecodable_raster_is_named_by_its_content_not_its_name(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "ok.png"), _noise())
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])  # a cut PNG under a JPEG name
    with pytest.raises(InputError, match=r"cut\.jpg: OpenCV could not decode this PNG file: .* without its IEND chunk"):
        read_image(tmp_path / "cut.jpg")


def test_complete_but_corrupt_png_is_not_said_truncated(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "ok.png"), _noise())
    data = bytearray((tmp_path / "ok.png").read_bytes())
    idat = data.index(b"IDAT") + 4
    data[idat + 100:idat + 400] = bytes(300)  # damaged image data; the file still ends with its IEND chunk
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "bad.png")
    msg = str(info.value)
    assert "could not decode this PNG file" in msg and "its content is corrupt" in msg
    assert "truncated" not in msg and "re-export the image from its source or re-send the original" in msg
