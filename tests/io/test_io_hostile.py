"""Issue 11 rows 1, 3, 5, 6, 7 and the non-UTF-8 name of row 2, read in this process: a reason, never a crash."""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from factories import write_dicom
from hostile import (
    corrupt_rle,
    deflated_bomb,
    deflated_pixel_bomb,
    good_png,
    j2k_claiming,
    jpeg_claiming,
    jpeg_damaged,
    jpegls_claiming,
    jpegls_cut,
    latin1_copy,
    png_claiming,
    rle_with_bits_allocated,
    tiff_duplicate_size,
)

from cxrtriage.errors import InputError
from cxrtriage.io import assess, probe, read_image, select
from cxrtriage.io.codestream import CodestreamError, j2k_size, jpeg_ends, jpeg_size, png_size
from cxrtriage.io.dicom import checks, deflate
from cxrtriage.io.dicom.decode import _gdcm_in_child
from cxrtriage.io.dicom.deflate import deflated_problem
from cxrtriage.measure.quality import image_checks
from cxrtriage.pipeline.decode import DecodeTask, examine
from cxrtriage.preprocess import PreprocessRecipe
from cxrtriage.results import Status

RECIPE = PreprocessRecipe(size=16)


def _failed(path: Path) -> str:
    """The reason ``path`` fails, checked the way a run sees it (examine: no exception, one failed record)."""
    d = examine(DecodeTask(0, str(path), RECIPE))
    assert d.record.status is Status.FAILED, d.record
    assert d.record.reason
    return d.record.reason


def _peak_mib(fn: object, *args: object) -> float:
    """Peak of Python/NumPy allocations (MiB) while ``fn(*args)`` runs."""
    tracemalloc.start()
    try:
        fn(*args)  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


# --- row 1: a Rust panic (BaseException) in the RLE decoder ------------------------------------------------------


def test_row1_corrupt_rle_panic_is_a_reason_not_an_escape(tmp_path: Path) -> None:
    bad = corrupt_rle(tmp_path / "bad_rle.dcm")
    with pytest.raises(InputError, match="RLE Lossless decoder stopped on an internal error .*PanicException"):
        read_image(bad)
    reason = _failed(bad)
    assert "compressed pixel data are corrupt" in reason and "index out of bounds" in reason


def test_row1_panic_output_is_held_back_from_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _failed(corrupt_rle(tmp_path / "bad_rle.dcm"))
    err = capfd.readouterr().err
    assert "panicked" not in err and "Traceback" not in err


# --- row 3: GDCM aborts its process (BitsAllocated 33) -----------------------------------------------------------


def test_row3_bits_allocated_33_refused_before_any_decoder(tmp_path: Path) -> None:
    reason = _failed(rle_with_bits_allocated(tmp_path / "ba33.dcm"))
    assert "(0028,0100) BitsAllocated 33 is invalid" in reason


def test_row3_gdcm_abort_in_its_child_process_is_a_reason(tmp_path: Path) -> None:
    """Without the header check, GDCM aborts on this file: only its child process dies (this test survives)."""
    with pytest.raises(RuntimeError, match=r"GDCM crashed \(SIGABRT\)"):
        _gdcm_in_child(rle_with_bits_allocated(tmp_path / "ba33.dcm"))


def test_row3_decode_falls_back_to_gdcm_in_a_child_and_fails_cleanly(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Let the incoherent header through: pydicom refuses BitsAllocated 33, then the GDCM fallback aborts (child).
    monkeypatch.setattr("cxrtriage.io.dicom.reader.check_pixel_module", lambda ds, p, keyword="": 16)
    reason = _failed(rle_with_bits_allocated(tmp_path / "ba33.dcm"))
    assert "pixel data cannot be decoded" in reason and "GDCM crashed (SIGABRT)" in reason


@pytest.mark.parametrize(("attrs", "message"), [
    ({"BitsStored": 17}, r"\(0028,0101\) BitsStored 17 is not between 1 and BitsAllocated 16"),
    ({"HighBit": 16}, r"\(0028,0102\) HighBit 16 is inconsistent"),
    ({"HighBit": 3}, r"\(0028,0102\) HighBit 3 is inconsistent"),
    ({"PixelRepresentation": 2}, r"\(0028,0103\) PixelRepresentation 2 is invalid"),
])
def test_row3_incoherent_pixel_module_is_refused_with_the_tag(tmp_path: Path, attrs: dict[str, int],
                                                              message: str) -> None:
    path = write_dicom(tmp_path / "x.dcm", rows=16, cols=16, **attrs)
    with pytest.raises(InputError, match=message):
        read_image(path)


def test_row3_missing_bits_allocated_is_named(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", rows=16, cols=16)
    ds = pydicom.dcmread(path)
    del ds.BitsAllocated
    ds.save_as(path)
    with pytest.raises(InputError, match=r"\(0028,0100\) BitsAllocated is missing"):
        read_image(path)


# --- row 5: the codestream's size, not the header's --------------------------------------------------------------


@pytest.mark.parametrize(("make", "codec"), [
    (j2k_claiming, "JPEG 2000"),
    (jpeg_claiming, "JPEG"),
    (lambda dest: jpeg_claiming(dest, lossless=True), "JPEG"),
    (jpegls_claiming, "JPEG-LS"),
])
def test_row5_codestream_claiming_20000_squared_is_refused_cheaply(tmp_path: Path, make: object, codec: str) -> None:
    path = make(tmp_path / "forged.dcm")  # type: ignore[operator]
    assert path.stat().st_size < 4096
    assert select(probe(path)).status is Status.SCORED  # the header alone says 64x64
    peak = _peak_mib(assess, path)
    reason = _failed(path)
    assert f"the {codec} codestream describes a different image (20000x20000" in reason and "(64x64" in reason
    assert peak < 16, f"{peak:.0f} MiB allocated for a refused file"


def test_row5_honest_small_codestreams_still_decode(tmp_path: Path) -> None:
    for make in (j2k_claiming, jpeg_claiming, jpegls_claiming):
        path = make(tmp_path / f"{make.__name__}.dcm", 64)
        img = read_image(path)
        assert img.pixels.shape == (64, 64)


# --- a JPEG stream cut short, or damaged inside ------------------------------------------------------------------


def _reduced(shape: tuple[int, int]) -> float:
    return 4.0  # a caller that accepts 1/4: the reduced JPEG path (libjpeg DCT scaling) is tried first


@pytest.mark.parametrize("max_scale", [None, _reduced], ids=["full", "reduced"])
@pytest.mark.parametrize("make", [lambda d: jpeg_damaged(d, "cut"), jpegls_cut], ids=["jpeg", "jpeg-ls"])
def test_a_jpeg_stream_without_its_end_fails_instead_of_decoding_grey_rows(tmp_path: Path, make: object,
                                                                           max_scale: object) -> None:
    # pylibjpeg's libjpeg decodes such a baseline or lossless stream without a word (the RG1 chest cut at 60%: the
    # lower 45% grey): the missing EOI is what says so
    path = make(tmp_path / "cut.dcm")  # type: ignore[operator]
    d = examine(DecodeTask(0, str(path), RECIPE, needs=max_scale))  # type: ignore[arg-type]
    assert d.record.status is Status.FAILED
    assert "data stop before the image does (no EOI marker FFD9" in str(d.record.reason)
    assert "re-send or re-export the image" in str(d.record.reason)


@pytest.mark.parametrize("how", ["intact", "padded"])
def test_a_complete_jpeg_stream_reads_whatever_follows_its_end(tmp_path: Path, how: str) -> None:
    img = read_image(jpeg_damaged(tmp_path / f"{how}.dcm", how))
    assert img.pixels.shape == (256, 256) and not [n for n in img.notes if "reported while decoding" in n]


def test_jpeg_ends_looks_past_padding_only() -> None:
    assert jpeg_ends(b"\x12\x34\xff\xd9") and jpeg_ends(b"\xff\xd9\x00") and jpeg_ends(b"\xff\xd9\xff")
    assert jpeg_ends(b"\xff\xd9" + bytes(4096))  # zero padding of any length
    assert not jpeg_ends(b"\x12\x34\xff\x00\x56") and not jpeg_ends(b"") and not jpeg_ends(bytes(8))
    assert not jpeg_ends(b"\xff\xd9" + b"\x01" * 40)  # junk after the end: the marker is not at the end


@pytest.mark.parametrize("max_scale", [None, _reduced], ids=["full", "reduced"])
def test_corrupt_jpeg_data_is_scored_with_the_decoders_words_and_fails_the_decoding_check(
        tmp_path: Path, max_scale: object) -> None:
    path = jpeg_damaged(tmp_path / "zeroed.dcm", "zeroed")
    d = examine(DecodeTask(0, str(path), RECIPE, image_checks=True, needs=max_scale))  # type: ignore[arg-type]
    assert d.ok and d.image_checks is not None
    said = "reported while decoding: Corrupt JPEG data: premature end of data segment"
    assert said in str(d.record.reason)
    decoding = {c.name: c for c in d.image_checks}["decoding"]
    assert not decoding.passed and decoding.value == 1.0
    assert decoding.message.startswith("damaged pixel data: ") and said in decoding.message
    intact = read_image(jpeg_damaged(tmp_path / "intact.dcm", "intact"))
    assert {c.name: c for c in image_checks(intact)}["decoding"].passed


def test_row5_rle_header_must_match_the_image(tmp_path: Path) -> None:
    bad = tmp_path / "rle.dcm"
    data = bytearray((Path(__file__).parents[2] / "sample_data" / "cxr_pa_rg1_half_rle.dcm").read_bytes())
    value = bytes(pydicom.dcmread(io.BytesIO(bytes(data))).PixelData)
    bot_length = struct.unpack("<I", value[4:8])[0]
    header_at = data.index(value) + 8 + bot_length + 8  # Basic Offset Table item, then the fragment's item tag
    assert struct.unpack("<II", data[header_at:header_at + 8]) == (2, 64)  # 2 segments, the first at byte 64
    struct.pack_into("<I", data, header_at, 3)  # 3 segments for a 16-bit grey image (2 expected)
    bad.write_bytes(bytes(data))
    assert "RLE header announces 3 segment(s) where the header's SamplesPerPixel and BitsAllocated need 2" in _failed(bad)
    struct.pack_into("<II", data, header_at, 2, 80)  # the first segment must start right after the 64-byte header
    bad.write_bytes(bytes(data))
    assert "RLE segment offsets [80, " in _failed(bad)


def test_codestream_parsers_read_only_the_header() -> None:
    soc_siz = (b"\xff\x4f\xff\x51" + struct.pack(">HHIIIIIIIIH", 41, 0, 300, 200, 0, 0, 300, 200, 0, 0, 1)
               + bytes([15, 1, 1]))
    size = j2k_size(soc_siz)
    assert (size.rows, size.columns, size.components, size.precision) == (200, 300, 1, 16)
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I4s", 8 + 22, b"jp2h")
           + struct.pack(">I4sIIHBBBB", 22, b"ihdr", 200, 300, 1, 15, 7, 0, 0) + struct.pack(">I4s", 0, b"jp2c") + soc_siz)
    assert j2k_size(jp2) == size
    tiny_tiles = bytearray(soc_siz)
    struct.pack_into(">II", tiny_tiles, 24, 1, 1)  # 1x1 tiles: 60000 tiles... and more for a bigger image
    struct.pack_into(">II", tiny_tiles, 8, 1000, 1000)
    with pytest.raises(CodestreamError, match="tiles"):
        j2k_size(bytes(tiny_tiles))
    sof3 = b"\xff\xd8\xff\xc3" + struct.pack(">HBHHB", 11, 16, 300, 400, 1) + b"\x01\x11\x00" + b"\xff\xda"
    assert jpeg_size(sof3).text == "400x300, 1 component(s) of 16 bit(s)"
    lse = (b"\xff\xd8\xff\xf7" + struct.pack(">HBHHB", 11, 12, 0, 0, 1) + b"\x01\x11\x00"
           + b"\xff\xf8" + struct.pack(">HBB", 2 + 2 + 6, 4, 3) + (70000).to_bytes(3, "big") + (5).to_bytes(3, "big"))
    assert (jpeg_size(lse).rows, jpeg_size(lse).columns, jpeg_size(lse).codec) == (70000, 5, "JPEG-LS")
    with pytest.raises(CodestreamError, match="DNL"):
        jpeg_size(b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 11, 8, 0, 400, 1) + b"\x01\x11\x00\xff\xda")
    with pytest.raises(CodestreamError, match="IHDR"):
        png_size(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)


# --- row 6: deflated data set inflating without limit ------------------------------------------------------------


def test_row6_deflate_bomb_refused_before_inflating(tmp_path: Path) -> None:
    bomb = deflated_bomb(tmp_path / "bomb.dcm")  # 1 GiB of zeros in a private OB element, ~1 MB on disk
    assert bomb.stat().st_size < 2 << 20
    peak = _peak_mib(select, probe(bomb))
    reason = _failed(bomb)
    assert "element (0009,1000) alone announces 1024 MiB" in reason and "refused before it is inflated" in reason
    assert peak < 16, f"{peak:.0f} MiB allocated for a refused file"


def test_row6_small_private_elements_add_up_to_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deflate, "MAX_HEADER_BYTES", 1 << 20)
    bomb = deflated_bomb(tmp_path / "bomb.dcm", zeros=3 << 19)  # 1.5 MiB in one element: above a 1 MiB limit
    assert "more than 1 MiB of elements other than the pixel data" in (deflated_problem(bomb) or "")
    monkeypatch.setattr(deflate, "MAX_HEADER_BYTES", 4 << 20)
    monkeypatch.setattr(deflate, "MAX_IMAGE_MEMORY", 1 << 20)  # total: 5 MiB, the stream inflates to 1.5 MiB: ok
    assert deflated_problem(bomb) is None
    monkeypatch.setattr(deflate, "MAX_HEADER_BYTES", 1 << 19)
    monkeypatch.setattr(deflate, "MAX_IMAGE_MEMORY", 1 << 18)
    monkeypatch.setattr(deflate._Inflating, "count_header", lambda self, n, tag: None)  # only the total counts
    assert "inflates to more than" in (deflated_problem(bomb) or "")


def test_row6_honest_deflated_file_still_reads(tmp_path: Path) -> None:
    path = deflated_bomb(tmp_path / "ok.dcm", zeros=4096)
    assert deflated_problem(path) is None
    d = examine(DecodeTask(0, str(path), RECIPE))
    assert d.record.status is Status.SCORED and (d.record.rows, d.record.columns) == (64, 64)


def test_row6_deflated_pixel_data_held_to_the_size_the_header_describes(tmp_path: Path) -> None:
    # Found by tests/fuzz: pixel data of 1 GiB (within the per-image limit) for a header that says 64 x 64
    # passed the walk, and pydicom's one-piece inflation plus its copy of the element cost 3 GiB.
    bomb = deflated_pixel_bomb(tmp_path / "pixels.dcm")
    assert bomb.stat().st_size < 2 << 20
    peak = _peak_mib(select, probe(bomb))
    reason = _failed(bomb)
    assert "the deflated pixel data announce 1024.0 MiB, but the header describes 64x64" in reason
    assert "refused before it is inflated" in reason
    assert peak < 16, f"{peak:.0f} MiB allocated for a refused file"
    # a header that describes an image over the per-image limit is refused before its pixel data are inflated
    huge = deflated_pixel_bomb(tmp_path / "huge.dcm", zeros=64 << 20, side=16000)
    assert "describes an image that is refused before inflating it" in (deflated_problem(huge) or "")
    # an honest file whose pixel data carry a little more than the header needs still reads
    padded = deflated_pixel_bomb(tmp_path / "padded.dcm", zeros=64 * 64 + 1024)
    assert deflated_problem(padded) is None


def test_row6_report_reader_refuses_the_bomb(tmp_path: Path) -> None:
    from cxrtriage.report.dicom_common import read_dataset

    with pytest.raises(InputError, match="refused before it is inflated"):
        read_dataset(deflated_bomb(tmp_path / "bomb.dcm"))


def test_nifti_header_extension_bomb_refused_before_itk(tmp_path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint16)), str(tmp_path / "x.nii"))
    raw = bytearray((tmp_path / "x.nii").read_bytes())
    struct.pack_into("<f", raw, 108, float(512 << 20))  # vox_offset: 512 MiB of "extensions" for ITK to read
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(bytes(raw[:348]) + b"\x01\x00\x00\x00"
                                                          + struct.pack("<ii", 512 << 20, 4)))
    sel = select(probe(tmp_path / "bomb.nii.gz"))
    assert sel.status is Status.FAILED and "NIfTI vox_offset 536870912" in sel.reason


# --- row 7: TIFF with duplicate size tags ------------------------------------------------------------------------


def test_row7_tiff_with_duplicate_size_tags_is_refused(tmp_path: Path) -> None:
    path = tiff_duplicate_size(tmp_path / "dup.tif")
    sel = select(probe(path))
    assert sel.status is Status.FAILED and "ImageWidth (256) appears twice in the first IFD" in sel.reason
    with pytest.raises(InputError, match="appears twice"):
        read_image(path)


def test_row7_the_same_tiff_without_the_duplicates_reads(tmp_path: Path) -> None:
    path = tiff_duplicate_size(tmp_path / "ok.tif", first=100)  # listed twice with the same value: still refused
    assert select(probe(path)).status is Status.FAILED
    import cv2

    cv2.imwrite(str(tmp_path / "plain.tif"), np.full((100, 100), 7, np.uint8))
    assert read_image(tmp_path / "plain.tif").pixels.shape == (100, 100)


# --- the 16384^2 PNG of the memory remark, a huge IHDR -----------------------------------------------------------


def test_png_whose_ihdr_is_16384_squared_is_refused_for_its_memory(tmp_path: Path) -> None:
    path = png_claiming(tmp_path / "big.png")
    reason = _failed(path)
    assert "reading this image would need about 2.5 GiB of memory (16384x16384" in reason


# --- row 2 (reading part): a file name that is not valid UTF-8 ---------------------------------------------------


def test_row2_latin1_file_name_reads_in_this_process(tmp_path: Path) -> None:
    path = latin1_copy(tmp_path)
    assert "\udcfc" in str(path)  # the byte 0xFC, kept by Python as a surrogate
    good = read_image(good_png(tmp_path / "good.png"))
    img = read_image(path)  # cv2.imread(str(path)) crashed the process here
    np.testing.assert_array_equal(img.pixels, good.pixels)
    d = examine(DecodeTask(0, str(path), RECIPE, image_checks=True))
    assert d.record.status is Status.SCORED


def test_row2_latin1_file_name_colour_probe(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "M\udcfcller-rgb.png"
    ok, enc = cv2.imencode(".png", np.dstack([np.full((20, 20), v, np.uint8) for v in (10, 10, 10)]))
    assert ok
    path.write_bytes(enc.tobytes())
    pr = probe(path)
    assert pr.error is None and not pr.colour and "grey content stored as colour channels" in pr.notes


def test_checks_module_finds_the_first_fragment() -> None:
    from pydicom.encaps import encapsulate

    head, total = checks.first_frame_head(encapsulate([b"\x01\x02\x03\x04", b"\x05\x06"]))
    assert head == b"\x01\x02\x03\x04\x05\x06" and total == 6


def test_checks_module_takes_the_streams_end_across_fragments() -> None:
    from pydicom.encaps import encapsulate

    value = encapsulate([b"\x01\x02\x03\x04", b"\x05\x06", b"\xff\xd9"])  # an EOI alone in the last fragment
    spans = checks._fragment_spans(value)
    assert checks._tail(value, spans, 5) == b"\x04\x05\x06\xff\xd9"
    assert checks._tail(value, spans, 64) == b"\x01\x02\x03\x04\x05\x06\xff\xd9"
    # zero padding of any length, also a whole fragment of it, is not the stream's end
    padded = encapsulate([b"\x01\x02" * 3000 + b"\xff\xd9" + bytes(9000), bytes(5000)])
    assert checks._tail(padded, checks._fragment_spans(padded), 4) == b"\x01\x02\xff\xd9"
    assert checks._tail(encapsulate([bytes(10)]), checks._fragment_spans(encapsulate([bytes(10)])), 4) == b""


# --- the shared corpus: real codestreams forged, and the GDCM fallback through its child process -----------------


@pytest.mark.data
@pytest.mark.parametrize(("name", "marker", "codec"), [
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", b"\xff\xc3", "JPEG"),
    ("JPGExtended.dcm", b"\xff\xc1", "JPEG"),
    ("MR_small_jpeg_ls_lossless.dcm", b"\xff\xf7", "JPEG-LS"),
    ("693_J2KI.dcm", b"\xff\x4f\xff\x51", "JPEG 2000"),
])
def test_real_codestreams_with_a_forged_size_are_refused(shared_data: Path, tmp_path: Path, name: str, marker: bytes,
                                                         codec: str) -> None:
    src = shared_data / "dicom" / "other_modalities" / name
    assert read_image(src).pixels.size  # the original decodes
    data = bytearray(src.read_bytes())
    pos = data.index(marker)
    if codec == "JPEG 2000":
        struct.pack_into(">II", data, pos + 8, 20000, 20000)  # Xsiz, Ysiz
        struct.pack_into(">II", data, pos + 24, 20000, 20000)  # XTsiz, YTsiz
    else:
        struct.pack_into(">HH", data, pos + 5, 20000, 20000)  # SOF: Y, X after length and precision
    forged = tmp_path / name
    forged.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"the {codec} codestream describes a different image \\(20000x20000"):
        read_image(forged)


@pytest.mark.data
def test_gdcm_fallback_decodes_through_its_child_process(shared_data: Path) -> None:
    from cxrtriage.io.dicom import read_dicom_detailed

    image, facts = read_dicom_detailed(shared_data / "dicom" / "other_modalities" / "JPEG-lossy.dcm")
    assert facts.decoder == "gdcm (fallback)" and image.pixels.shape == (1024, 256)
    assert any("decoded with GDCM directly after pydicom failed" in n for n in facts.notes)


def test_row2_every_opencv_read_goes_through_bytes(tmp_path: Path) -> None:
    import cv2

    from cxrtriage.io.raster import decode_file
    from cxrtriage.report.imaging import read_png_rgb
    from cxrtriage.report.masks import read_mask, write_mask_png

    folder = tmp_path / "M\udcfcller"  # an output folder whose name is not valid UTF-8
    mask = write_mask_png(folder / "mask.png", np.eye(8, dtype=np.uint8))
    np.testing.assert_array_equal(read_mask(mask, (8, 8)), np.eye(8, dtype=np.uint8))
    assert read_png_rgb(mask).shape == (8, 8, 3)
    assert decode_file(folder / "missing.png", cv2.IMREAD_UNCHANGED) is None
    (folder / "empty.png").write_bytes(b"")
    assert decode_file(folder / "empty.png", cv2.IMREAD_UNCHANGED) is None


def test_row6_deflated_file_with_a_meta_group_that_cannot_be_walked_is_refused(tmp_path: Path) -> None:
    path = deflated_bomb(tmp_path / "meta.dcm", zeros=16)
    data = bytearray(path.read_bytes())
    version = data.index(b"\x02\x00\x01\x00OB")  # (0002,0001) FileMetaInformationVersion
    struct.pack_into("<I", data, version + 8, 0xFFFFFFFF)  # an undefined length where a 2-byte value should be
    path.write_bytes(bytes(data))
    assert "file meta information of this deflated file is malformed" in (deflated_problem(path) or "")


def test_sequences_nested_deeper_than_python_recursion_give_a_reason_that_says_so(tmp_path: Path) -> None:
    # 5,000 SQ items inside each other (undefined lengths) before the pixel data: pydicom recurses per level.
    src = write_dicom(tmp_path / "base.dcm")
    raw = src.read_bytes()
    sq_head = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    at = raw.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"O")
    deep = tmp_path / "deep.dcm"
    deep.write_bytes(raw[:at] + (sq_head + item) * 5000 + ends * 5000 + raw[at:])
    d = examine(DecodeTask(0, str(deep), RECIPE))
    assert d.record.status is Status.FAILED
    reason = d.record.reason or ""
    assert "nested too deeply" in reason and "transferred completely" not in reason, reason
