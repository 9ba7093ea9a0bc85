"""Every file of ../shared/data/dicom gets the expected decision and read outcome; RG1 chest pixels are right.

Decisions (default rules: CR/DX, CHEST or absent, PA/AP or absent):
- the three NEMA RG1 encodings are the only scored files (CR, CHEST, PA);
- the two 16x16 CR stubs are excluded: their BodyPartExamined is CSPINE (one is also a lateral, LL);
- the extremity CR is excluded as not a chest; every other modality is excluded by Modality, or as a non-image
  object (SR, SEG, RT) before that; text files (licences, provenance) are excluded as text;
- damaged files fail, whatever their modality, so that broken transfers get noticed: truncated native and
  encapsulated pixel data, a header with pixel data but no Rows/Columns, and an unparseable "no_meta" file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrtriage.errors import InputError
from cxrtriage.io import SelectionRules, assess, discover, probe, read_image, select

pytestmark = pytest.mark.data

# relative path -> (status, substring of the reason)
EXPECTED: dict[str, tuple[str, str]] = {
    "cxr_real/nema_wg04_RG1_J2KI.dcm": ("scored", "CR CHEST PA"),
    "cxr_real/nema_wg04_RG1_J2KR.dcm": ("scored", "CR CHEST PA"),
    "cxr_real/nema_wg04_RG1_UNCR.dcm": ("scored", "CR CHEST PA"),
    "licenses/pydicom-data_LICENSE.MIT.txt": ("excluded", "text file"),
    "licenses/pydicom_LICENSE.txt": ("excluded", "text file"),
    "licenses/pydicom_test_files_README.txt": ("excluded", "text file"),
    "provenance.json": ("excluded", "text file"),
    "other_modalities/693_J2KI.dcm": ("excluded", "Modality 'CT' not accepted"),
    "other_modalities/CT_small.dcm": ("excluded", "Modality 'CT' not accepted"),
    "other_modalities/ExplVR_BigEndNoMeta.dcm": ("excluded", "non-image object: RT Ion Plan Storage"),
    "other_modalities/JPEG-LL.dcm": ("excluded", "Modality 'NM' not accepted"),
    "other_modalities/JPEG-lossy.dcm": ("excluded", "Modality 'NM' not accepted"),
    "other_modalities/JPEGLSNearLossless_16.dcm": ("excluded", "Modality missing"),
    "other_modalities/JPGExtended.dcm": ("excluded", "Modality 'NM' not accepted"),
    "other_modalities/JPGLosslessP14SV1_1s_1f_8b.dcm": ("excluded", "Modality 'US' not accepted"),
    "other_modalities/MR_small_RLE.dcm": ("excluded", "Modality 'MR' not accepted"),
    "other_modalities/MR_small_bigendian.dcm": ("excluded", "Modality 'MR' not accepted"),
    "other_modalities/MR_small_implicit.dcm": ("excluded", "Modality 'MR' not accepted"),
    "other_modalities/MR_small_jp2klossless.dcm": ("excluded", "Modality 'MR' not accepted"),
    "other_modalities/MR_small_jpeg_ls_lossless.dcm": ("excluded", "Modality 'MR' not accepted"),
    "other_modalities/MR_truncated.dcm": ("failed", "pixel data truncated: the element announces 8192 bytes"),
    "other_modalities/OBXXXX1A_rle.dcm": ("excluded", "Modality 'US' not accepted"),
    "other_modalities/OT-PAL-8-face.dcm": ("excluded", "Modality 'OT' not accepted"),
    "other_modalities/SC_rgb_16bit_2frame.dcm": ("excluded", "Modality 'OT' not accepted"),
    "other_modalities/SC_rgb_jpeg_dcmtk.dcm": ("excluded", "Modality 'OT' not accepted"),
    "other_modalities/SC_rgb_jpeg_gdcm.dcm": ("excluded", "Modality 'OT' not accepted"),
    "other_modalities/SC_ybr_full_uncompressed.dcm": ("excluded", "Modality 'OT' not accepted"),
    "other_modalities/emri_small.dcm": ("excluded", "Modality 'MR' not accepted"),
    "other_modalities/emri_small_RLE.dcm": ("excluded", "Modality 'MR' not accepted"),
    "other_modalities/emri_small_jpeg_2k_lossless_too_short.dcm": ("failed", "encapsulated pixel data truncated"),
    "other_modalities/examples_ybr_color.dcm": ("excluded", "Modality 'US' not accepted"),
    "other_modalities/image_dfl.dcm": ("excluded", "Modality 'OT' not accepted"),
    "other_modalities/liver.dcm": ("excluded", "non-image object: Segmentation Storage"),
    "other_modalities/meta_missing_tsyntax.dcm": ("failed", "Rows/Columns missing"),
    "other_modalities/no_meta.dcm": ("failed", "not a recognised image file"),
    "other_modalities/reportsi.dcm": ("excluded", "non-image object: Basic Text SR Storage"),
    "other_modalities/rtdose.dcm": ("excluded", "non-image object: RT Dose Storage"),
    "xray_other/nema_wg04_RG3_J2KR_extremity.dcm": ("excluded", "not a chest: BodyPartExamined 'EXTREMITY'"),
    "xray_other/pydicom_dicomdir_CR_MONO1_16x16_6154.dcm": ("excluded", "not a chest: BodyPartExamined 'CSPINE'"),
    "xray_other/pydicom_dicomdir_CR_MONO1_16x16_6247.dcm": ("excluded", "not a chest: BodyPartExamined 'CSPINE'"),
}

# With every modality accepted, the next rule in line must give the reason (colour, multi-frame, view...).
LENIENT = SelectionRules(modalities=("CR", "DX", "CT", "MR", "NM", "US", "OT", ""), body_parts=("CHEST", ""),
                         views=("PA", "AP", ""))
EXPECTED_LENIENT: dict[str, tuple[str, str]] = {
    "other_modalities/OBXXXX1A_rle.dcm": ("excluded", "colour image (PhotometricInterpretation 'PALETTE COLOR'"),
    "other_modalities/OT-PAL-8-face.dcm": ("excluded", "colour image (PhotometricInterpretation 'PALETTE COLOR'"),
    "other_modalities/SC_rgb_16bit_2frame.dcm": ("excluded", "colour image (PhotometricInterpretation 'RGB'"),
    "other_modalities/SC_rgb_jpeg_dcmtk.dcm": ("excluded", "colour image (PhotometricInterpretation 'YBR_FULL'"),
    "other_modalities/SC_ybr_full_uncompressed.dcm": ("excluded", "colour image"),
    "other_modalities/examples_ybr_color.dcm": ("excluded", "'YBR_FULL_422', 3 sample(s)"),
    "other_modalities/emri_small.dcm": ("excluded", "multi-frame object (10 frames)"),
    "other_modalities/emri_small_RLE.dcm": ("excluded", "multi-frame object (10 frames)"),
    "other_modalities/emri_small_jpeg_2k_lossless_too_short.dcm": ("failed", "encapsulated pixel data truncated"),
    "other_modalities/MR_small_jp2klossless.dcm": ("scored", "MR body part absent view absent"),
    "other_modalities/JPEGLSNearLossless_16.dcm": ("scored", ""),
    "xray_other/pydicom_dicomdir_CR_MONO1_16x16_6154.dcm": ("excluded", "not a chest"),
}

# relative path -> None (reads) or a substring of the InputError message
READ: dict[str, str | None] = {
    "cxr_real/nema_wg04_RG1_J2KI.dcm": None,
    "cxr_real/nema_wg04_RG1_J2KR.dcm": None,
    "cxr_real/nema_wg04_RG1_UNCR.dcm": None,
    "other_modalities/693_J2KI.dcm": None,
    "other_modalities/CT_small.dcm": None,
    "other_modalities/ExplVR_BigEndNoMeta.dcm": "no pixel data (7FE0,0010)",
    "other_modalities/JPEG-LL.dcm": None,
    "other_modalities/JPEG-lossy.dcm": None,  # pydicom's plugins refuse 12-bit JPEG Extended; GDCM fallback reads it
    "other_modalities/JPEGLSNearLossless_16.dcm": None,
    "other_modalities/JPGExtended.dcm": None,
    "other_modalities/JPGLosslessP14SV1_1s_1f_8b.dcm": None,
    "other_modalities/MR_small_RLE.dcm": None,
    "other_modalities/MR_small_bigendian.dcm": None,
    "other_modalities/MR_small_implicit.dcm": None,
    "other_modalities/MR_small_jp2klossless.dcm": None,
    "other_modalities/MR_small_jpeg_ls_lossless.dcm": None,
    "other_modalities/MR_truncated.dcm": "pixel data truncated",
    "other_modalities/OBXXXX1A_rle.dcm": "'PALETTE COLOR'",
    "other_modalities/OT-PAL-8-face.dcm": "'PALETTE COLOR'",
    "other_modalities/SC_rgb_16bit_2frame.dcm": "'RGB'",
    "other_modalities/SC_rgb_jpeg_dcmtk.dcm": "'YBR_FULL'",
    "other_modalities/SC_rgb_jpeg_gdcm.dcm": "'RGB'",
    "other_modalities/SC_ybr_full_uncompressed.dcm": "'YBR_FULL'",
    "other_modalities/emri_small.dcm": "multi-frame object (10 frames)",
    "other_modalities/emri_small_RLE.dcm": "multi-frame object (10 frames)",
    "other_modalities/emri_small_jpeg_2k_lossless_too_short.dcm": "encapsulated pixel data truncated",
    "other_modalities/examples_ybr_color.dcm": "'YBR_FULL_422'",
    "other_modalities/image_dfl.dcm": None,
    "other_modalities/liver.dcm": "multi-frame object (3 frames)",
    "other_modalities/meta_missing_tsyntax.dcm": "Rows / (0028,0011) Columns are missing",
    "other_modalities/no_meta.dcm": "not a recognised image file",
    "other_modalities/reportsi.dcm": "no pixel data (7FE0,0010)",
    "other_modalities/rtdose.dcm": "multi-frame object (15 frames)",
    "xray_other/nema_wg04_RG3_J2KR_extremity.dcm": None,
    "xray_other/pydicom_dicomdir_CR_MONO1_16x16_6154.dcm": None,
    "xray_other/pydicom_dicomdir_CR_MONO1_16x16_6247.dcm": None,
}


@pytest.fixture(scope="module")
def dicom_dir(shared_data: Path) -> Path:
    return shared_data / "dicom"


def test_every_file_has_the_expected_decision(dicom_dir: Path) -> None:
    found = {p.relative_to(dicom_dir).as_posix(): p for p in discover([dicom_dir])}
    assert sorted(found) == sorted(EXPECTED), "files added/removed in shared/data/dicom: update EXPECTED"
    wrong = {}
    for rel, path in found.items():
        a = assess(path)  # probe + select + read (scored files are decoded: a decode failure would show)
        status, reason = EXPECTED[rel]
        if a.selection.status != status or reason not in a.selection.reason:
            wrong[rel] = (a.selection.status, a.selection.reason)
        if status == "scored":
            assert a.image is not None
    assert not wrong, wrong


def test_next_rule_in_line_under_lenient_rules(dicom_dir: Path) -> None:
    wrong = {}
    for rel, (status, reason) in EXPECTED_LENIENT.items():
        sel = select(probe(dicom_dir / rel), LENIENT)
        if sel.status != status or reason not in sel.reason:
            wrong[rel] = (sel.status, sel.reason)
    assert not wrong, wrong


@pytest.mark.parametrize("rel", sorted(READ))
def test_read_outcome(dicom_dir: Path, rel: str) -> None:
    expected = READ[rel]
    path = dicom_dir / rel
    if expected is None:
        img = read_image(path)
        assert img.pixels.dtype == np.float32 and img.pixels.ndim == 2
        assert np.isfinite(img.pixels).all()
        lo, hi = img.value_range
        assert lo <= float(img.pixels.min()) and float(img.pixels.max()) <= hi
    else:
        with pytest.raises(InputError) as info:
            read_image(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and expected in message


def test_jpeg_lossy_fallback_matches_its_decodable_twin(dicom_dir: Path) -> None:
    lossy = read_image(dicom_dir / "other_modalities/JPEG-lossy.dcm")
    twin = read_image(dicom_dir / "other_modalities/JPGExtended.dcm")
    assert any("GDCM" in n for n in lossy.notes)
    assert np.abs(lossy.pixels - twin.pixels).max() <= 2  # IDCT rounding differs between decoders


def test_rg1_three_encodings_decode_to_the_same_chest(dicom_dir: Path) -> None:
    unc = read_image(dicom_dir / "cxr_real/nema_wg04_RG1_UNCR.dcm")
    j2kr = read_image(dicom_dir / "cxr_real/nema_wg04_RG1_J2KR.dcm")
    j2ki = read_image(dicom_dir / "cxr_real/nema_wg04_RG1_J2KI.dcm")
    assert unc.shape == j2kr.shape == j2ki.shape == (1955, 1841)
    np.testing.assert_array_equal(unc.pixels, j2kr.pixels)  # lossless: bit-identical
    diff = np.abs(unc.pixels - j2ki.pixels)
    assert float(diff.mean()) < 0.005 * 32767  # lossy J2K: ~50 of 32767 on average
    assert np.corrcoef(unc.pixels.ravel(), j2ki.pixels.ravel())[0, 1] > 0.999
    for img in (unc, j2kr, j2ki):
        assert img.value_range == (0.0, 32767.0)  # BitsStored 15
        assert img.pixel_spacing_mm is None  # PixelSpacing 0.000\0.000 means unknown
        assert img.voi is not None and (img.voi.center, img.voi.width, img.voi.mirror) == (15000.0, 30000.0, 32767.0)
        assert any("MONOCHROME1 inverted" in n for n in img.notes)


def test_rg1_after_inversion_lungs_are_darker_than_mediastinum(dicom_dir: Path) -> None:
    img = read_image(dicom_dir / "cxr_real/nema_wg04_RG1_UNCR.dcm")
    h, w = img.shape

    def region(r0: float, r1: float, c0: float, c1: float) -> float:
        return float(np.median(img.pixels[int(h * r0):int(h * r1), int(w * c0):int(w * c1)]))

    right_lung, left_lung = region(0.15, 0.45, 0.2, 0.35), region(0.15, 0.45, 0.6, 0.8)
    mediastinum = region(0.3, 0.6, 0.45, 0.55)
    assert right_lung < mediastinum - 3000 and left_lung < mediastinum - 3000
    display = img.voi.apply(img.pixels) if img.voi else img.pixels
    assert float(np.median(display[int(h * 0.15):int(h * 0.45), int(w * 0.2):int(w * 0.35)])) < 0.6
