"""DICOM pixel handling on tiny data sets built in code: LUTs, MONOCHROME1, BitsStored, VOI, spacing, broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import make_cxr_dataset
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, JPEG2000Lossless, RLELossless

from cxrtriage.errors import InputError
from cxrtriage.io import probe, read_image, select
from cxrtriage.io.dicom import read_dicom_detailed


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows: int = 8, cols: int = 8, bits: int = 12) -> np.ndarray:
    return (np.arange(rows * cols).reshape(rows, cols) * 37 % (1 << bits)).astype(np.uint16)


# ----------------------------------------------------------------------------- modality LUT


def test_rescale_slope_intercept_applied_with_nominal_range(tmp_path: Path) -> None:
    px = ramp()
    ds = make_cxr_dataset(8, 8, pixels=px, bits_stored=12, RescaleSlope="0.5", RescaleIntercept="-100")
    img = read_image(save(ds, tmp_path / "a.dcm"))
    np.testing.assert_allclose(img.pixels, px * 0.5 - 100)
    assert img.value_range == (-100.0, 4095 * 0.5 - 100)
    assert img.pixels.dtype == np.float32
    assert any("RescaleSlope 0.5" in n for n in img.notes)


def test_negative_slope_gives_sorted_range(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), bits_stored=12, RescaleSlope="-1", RescaleIntercept="4095")
    img = read_image(save(ds, tmp_path / "a.dcm"))
    assert img.value_range == (0.0, 4095.0)
    np.testing.assert_allclose(img.pixels, 4095 - ramp())


def test_modality_lut_sequence_applied(tmp_path: Path) -> None:
    px = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.uint16)
    ds = make_cxr_dataset(2, 4, pixels=px, bits_stored=8)
    item = Dataset()
    item.LUTDescriptor = [4, 2, 16]  # 4 entries, first mapped value 2
    item.add_new(0x00283006, "US", [100, 200, 300, 400])  # LUTData as US
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    img, facts = read_dicom_detailed(save(ds, tmp_path / "lut.dcm"))
    # below first mapped -> first entry; above the last -> last entry
    np.testing.assert_array_equal(img.pixels, [[100, 100, 100, 200], [300, 400, 400, 400]])
    assert img.value_range == (100.0, 400.0)
    assert "Modality LUT Sequence" in facts.modality_lut


def save_with_raw_ds(ds: Dataset, path: Path, tag: int, text: str) -> Path:
    """Save ``ds`` with DS element ``tag`` holding ``text`` verbatim (pydicom refuses to build malformed values)."""
    placeholder = "".join("\\" if c == "\\" else "7" for c in text)
    ds.add_new(tag, "DS", placeholder)
    save(ds, path)
    data = path.read_bytes()
    padded = placeholder + (" " if len(placeholder) % 2 else "")
    new = text + (" " if len(text) % 2 else "")
    # Anchor on the element header (explicit VR little endian: tag, "DS", 2-byte length): the placeholder's
    # digits alone can also occur in a random UID or in the pixel bytes.
    header = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + b"DS" + len(padded).to_bytes(2, "little")
    assert data.count(header + padded.encode()) == 1
    path.write_bytes(data.replace(header + padded.encode(), header + new.encode()))
    return path


def test_malformed_rescale_is_ignored_with_a_note(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), bits_stored=12)
    ds.add_new(0x00281052, "DS", "0")
    img = read_image(save_with_raw_ds(ds, tmp_path / "bad.dcm", 0x00281053, "abc"))  # RescaleSlope
    np.testing.assert_array_equal(img.pixels, ramp())
    assert any("malformed" in n for n in img.notes)


# ----------------------------------------------------------------------------- MONOCHROME1, BitsStored


def test_monochrome1_inverted_over_nominal_range_and_voi_mirrored(tmp_path: Path) -> None:
    px = ramp()
    ds = make_cxr_dataset(8, 8, pixels=px, bits_stored=12, photometric="MONOCHROME1",
                          WindowCenter="1000", WindowWidth="2000")
    img, facts = read_dicom_detailed(save(ds, tmp_path / "m1.dcm"))
    np.testing.assert_array_equal(img.pixels, 4095 - px.astype(np.float32))
    assert img.value_range == (0.0, 4095.0)
    assert facts.inverted
    assert img.voi is not None and img.voi.mirror == 4095.0
    # A viewer windows the stored values then inverts: dense (low stored value in MONO1) shows bright.
    display = img.voi.apply(img.pixels)
    expected = 1.0 - np.clip((px - 999.5) / 1999.0 + 0.5, 0, 1)
    np.testing.assert_allclose(display, expected, atol=1e-6)


def test_monochrome1_with_rescale_inverts_after_modality_lut(tmp_path: Path) -> None:
    px = ramp()
    ds = make_cxr_dataset(8, 8, pixels=px, bits_stored=12, photometric="MONOCHROME1",
                          RescaleSlope="2", RescaleIntercept="10")
    img = read_image(save(ds, tmp_path / "m1r.dcm"))
    lo, hi = 10.0, 4095 * 2 + 10.0
    assert img.value_range == (lo, hi)
    np.testing.assert_allclose(img.pixels, lo + hi - (px * 2.0 + 10))


def test_presentation_lut_inverse_on_monochrome2_inverts(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), bits_stored=12, PresentationLUTShape="INVERSE")
    img = read_image(save(ds, tmp_path / "inv.dcm"))
    np.testing.assert_array_equal(img.pixels, 4095 - ramp().astype(np.float32))


def _raw_dataset(values: list[int], *, signed: bool, bits_stored: int = 12) -> Dataset:
    ds = make_cxr_dataset(1, len(values), pixels=np.zeros((1, len(values)), np.uint16), bits_stored=bits_stored)
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.array(values, dtype=np.uint16).tobytes()  # garbage allowed in the unused high bits
    return ds


def test_bits_stored_masks_unused_high_bits(tmp_path: Path) -> None:
    ds = _raw_dataset([0xF123, 0x0FFF, 0x1000, 0x0001], signed=False)
    img = read_image(save(ds, tmp_path / "mask.dcm"))
    np.testing.assert_array_equal(img.pixels, [[0x123, 4095, 0, 1]])
    assert img.value_range == (0.0, 4095.0)


def test_bits_stored_sign_extends_signed_pixels(tmp_path: Path) -> None:
    ds = _raw_dataset([0x0FFF, 0x0800, 0x07FF, 0x0000], signed=True)
    img = read_image(save(ds, tmp_path / "sign.dcm"))
    np.testing.assert_array_equal(img.pixels, [[-1, -2048, 2047, 0]])
    assert img.value_range == (-2048.0, 2047.0)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, ExplicitVRBigEndian])
def test_lossless_encodings_decode_identically(tmp_path: Path, syntax: str) -> None:
    px = ramp(64, 48, 12)
    ref = read_image(save(make_cxr_dataset(64, 48, pixels=px, photometric="MONOCHROME1"), tmp_path / "ref.dcm"))
    ds = make_cxr_dataset(64, 48, pixels=px, photometric="MONOCHROME1")
    if syntax == ExplicitVRBigEndian:  # pydicom writes OW bytes as given: swap them ourselves
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = px.astype(">u2").tobytes()
    else:
        ds.compress(syntax)
    img = read_image(save(ds, tmp_path / "enc.dcm"))
    np.testing.assert_array_equal(img.pixels, ref.pixels)
    assert img.dicom is not None and img.dicom.transfer_syntax_uid == syntax


# ----------------------------------------------------------------------------- VOI


def test_voi_first_of_multiple_windows_and_function(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), WindowCenter=["500", "900"], WindowWidth=["100", "300"],
                          VOILUTFunction="SIGMOID")
    img = read_image(save(ds, tmp_path / "w.dcm"))
    assert img.voi is not None
    assert (img.voi.center, img.voi.width, img.voi.function, img.voi.mirror) == (500.0, 100.0, "SIGMOID", None)


def test_voi_invalid_width_gives_none_with_note(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), WindowCenter="500", WindowWidth="0")
    img = read_image(save(ds, tmp_path / "w0.dcm"))
    assert img.voi is None
    assert any("invalid" in n for n in img.notes)


def test_voi_lut_sequence_preferred(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), WindowCenter="500", WindowWidth="100")
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new(0x00283006, "OW", np.arange(0, 4096, 16, dtype="<u2").tobytes())  # LUTData as OW
    ds.VOILUTSequence = Sequence([item])
    img = read_image(save(ds, tmp_path / "voilut.dcm"))
    assert img.voi is not None and img.voi.lut is not None
    assert img.voi.lut.size == 256 and img.voi.first_mapped == 0.0
    out = img.voi.apply(np.array([[0.0, 255.0, 5000.0]], np.float32))
    np.testing.assert_allclose(out, [[0.0, 1.0, 1.0]])


# ----------------------------------------------------------------------------- pixel spacing


@pytest.mark.parametrize("value", ["0.000\\0.000", "-0.1\\0.1", "nan\\0.1", "abc\\0.1", "0.1", "0.1\\0.1\\0.1", ""])
def test_invalid_pixel_spacing_is_unknown_never_a_crash(tmp_path: Path, value: str) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp())
    path = save_with_raw_ds(ds, tmp_path / "sp.dcm", 0x00280030, value) if value else save(ds, tmp_path / "sp.dcm")
    if not value:
        ds.add_new(0x00280030, "DS", "")
        save(ds, path)
    img = read_image(path)
    assert img.pixel_spacing_mm is None
    assert any("PixelSpacing" in n for n in img.notes)


def test_pixel_spacing_row_column_order(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), PixelSpacing=["0.139", "0.143"])
    img, facts = read_dicom_detailed(save(ds, tmp_path / "sp.dcm"))
    assert img.pixel_spacing_mm == (0.139, 0.143)
    assert facts.spacing_source == "PixelSpacing"


def test_imager_pixel_spacing_fallback_is_noted(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), ImagerPixelSpacing=["0.2", "0.25"])
    ds.add_new(0x00280030, "DS", "0\\0")
    img, facts = read_dicom_detailed(save(ds, tmp_path / "isp.dcm"))
    assert img.pixel_spacing_mm == (0.2, 0.25)
    assert facts.spacing_source == "ImagerPixelSpacing"
    assert any("ImagerPixelSpacing" in n and "magnification" in n for n in img.notes)


# ----------------------------------------------------------------------------- broken / refused files


def test_truncated_native_pixel_data_fails_cleanly(tmp_path: Path) -> None:
    path = save(make_cxr_dataset(32, 32, pixels=ramp(32, 32)), tmp_path / "t.dcm")
    path.write_bytes(path.read_bytes()[:-100])
    pr = probe(path)
    assert select(pr).status == "failed" and "truncated" in select(pr).reason
    with pytest.raises(InputError, match=r"t\.dcm: pixel data truncated"):
        read_image(path)


def test_truncated_encapsulated_pixel_data_fails_cleanly(tmp_path: Path) -> None:
    ds = make_cxr_dataset(16, 16, pixels=ramp(16, 16))
    ds.compress(RLELossless)
    path = save(ds, tmp_path / "rle.dcm")
    path.write_bytes(path.read_bytes()[:-40])
    assert select(probe(path)).status == "failed"
    with pytest.raises(InputError, match="encapsulated pixel data truncated"):
        read_image(path)


def _bare(ds: Dataset, *, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    bare = Dataset()
    bare.update(ds)
    write_dataset(fp, bare)
    return fp.getvalue()


@pytest.mark.parametrize("implicit", [True, False])
def test_metaless_dataset_detected_by_content_and_read(tmp_path: Path, implicit: bool) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), photometric="MONOCHROME1")
    path = tmp_path / "noext"
    path.write_bytes(_bare(ds, implicit=implicit))
    pr = probe(path)
    assert pr.kind == "dicom" and pr.assumed_transfer_syntax is not None
    assert select(pr).status == "scored"
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, 4095 - ramp().astype(np.float32))
    assert any("assumed" in n and ("Implicit" if implicit else "Explicit") in n for n in img.notes)


def test_missing_transfer_syntax_with_compressed_pixels_is_a_clear_error(tmp_path: Path) -> None:
    ds = make_cxr_dataset(16, 16, pixels=ramp(16, 16))
    ds.compress(RLELossless)
    path = tmp_path / "rle_nometa"
    path.write_bytes(_bare(ds, implicit=False))
    with pytest.raises(InputError, match="compressed .* no .*TransferSyntaxUID"):
        read_image(path)


@pytest.mark.parametrize(("rows", "cols", "frames"), [(20000, 10, 1), (10, 16385, 1), (16000, 16000, 3)])
def test_absurd_sizes_refused_before_decoding(tmp_path: Path, rows: int, cols: int, frames: int) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp())
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    path = save(ds, tmp_path / "huge.dcm")
    sel = select(probe(path))
    assert sel.status in ("failed", "excluded")
    with pytest.raises(InputError, match="limit|multi-frame|less than|shorter"):
        read_image(path)
    if frames == 1:
        assert sel.status == "failed" and "limit" in sel.reason
        with pytest.raises(InputError, match="exceeds the limit"):
            read_image(path)


def test_colour_and_multiframe_refused_by_reader(tmp_path: Path) -> None:
    rgb = make_cxr_dataset(4, 4, pixels=np.zeros((4, 4), np.uint16), bits_stored=8)
    rgb.set_pixel_data(np.zeros((4, 4, 3), np.uint8), "RGB", 8)
    with pytest.raises(InputError, match="PhotometricInterpretation 'RGB'"):
        read_image(save(rgb, tmp_path / "rgb.dcm"))
    mf = make_cxr_dataset(4, 4, pixels=np.zeros((4, 4), np.uint16))
    mf.set_pixel_data(np.zeros((3, 4, 4), np.uint16), "MONOCHROME2", 12)
    with pytest.raises(InputError, match="multi-frame object \\(3 frames\\)"):
        read_image(save(mf, tmp_path / "mf.dcm"))


def test_no_patient_identifiers_in_errors_or_notes(tmp_path: Path) -> None:
    ds = make_cxr_dataset(8, 8, pixels=ramp(), photometric="MONOCHROME1", PixelSpacing=["0", "0"])
    img = read_image(save(ds, tmp_path / "phi.dcm"))
    text = " ".join(img.notes) + repr(img.dicom)
    assert "Test^Factory" not in text and "FACTORY-1" not in text


def test_truncation_anywhere_fails_and_never_raises(tmp_path: Path) -> None:
    from cxrtriage.io import assess

    data = save(make_cxr_dataset(16, 16, pixels=ramp(16, 16), WindowCenter="100", WindowWidth="200"),
                tmp_path / "full.dcm").read_bytes()
    statuses = set()
    for cut in range(0, len(data) - 1, 13):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        a = assess(path)
        statuses.add(a.selection.status)
        assert a.selection.status == "failed", (cut, a.selection)
        assert a.selection.reason
    assert statuses == {"failed"}
