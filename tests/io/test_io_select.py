"""Selection rules: defaults, normalisation, every exclusion reason, and rules loaded from TOML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import make_cxr_dataset, write_dicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrtriage.errors import ConfigError
from cxrtriage.io import SelectionRules, load_rules, normalise, probe, select
from cxrtriage.io.selection import Selection


def decide(tmp_path: Path, rules: SelectionRules | None = None, **kwargs: object) -> Selection:
    path = write_dicom(tmp_path / f"{len(list(tmp_path.iterdir()))}.dcm", rows=8, cols=8, **kwargs)  # type: ignore[arg-type]
    return select(probe(path), rules) if rules is not None else select(probe(path))


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # non-conformant values are the point here
@pytest.mark.parametrize(("modality", "body", "view"), [
    ("CR", "CHEST", "PA"), ("DX", "CHEST", "AP"), ("CR", None, None), ("DX", "chest", "ap supine"),
    ("DX", "PORT CHEST", "AP_PORTABLE"), ("CR", "CHEST", "PA-ERECT"), ("CR", "", ""),
])
def test_frontal_chest_radiographs_are_scored(tmp_path: Path, modality: str, body: str | None, view: str | None) -> None:
    sel = decide(tmp_path, modality=modality, body_part=body, view=view)
    assert sel.status == "scored", sel.reason
    assert sel.reason.startswith(modality)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"view": "LL"}, "lateral view: ViewPosition 'LL'"),
    ({"view": "RL"}, "lateral view"),
    ({"view": "LATERAL"}, "lateral view"),
    ({"view": "OBLIQUE"}, "ViewPosition 'OBLIQUE' not accepted (accepted: PA, AP or absent)"),
    ({"body_part": "EXTREMITY"}, "not a chest: BodyPartExamined 'EXTREMITY'"),
    ({"body_part": "SKULL"}, "not a chest"),
    ({"modality": "CT"}, "Modality 'CT' not accepted (accepted: CR, DX)"),
    ({"modality": "MR"}, "Modality 'MR' not accepted"),
    ({"PresentationIntentType": "FOR PROCESSING"}, "FOR PROCESSING"),
])
def test_exclusions_carry_the_reason(tmp_path: Path, kwargs: dict[str, object], reason: str) -> None:
    sel = decide(tmp_path, **kwargs)
    assert sel.status == "excluded"
    assert reason in sel.reason


def test_missing_modality_excluded(tmp_path: Path) -> None:
    ds = make_cxr_dataset(4, 4)
    del ds.Modality
    path = tmp_path / "nomod.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert select(probe(path)) == Selection("excluded", "Modality missing not accepted (accepted: CR, DX)")


def test_colour_and_multiframe_excluded(tmp_path: Path) -> None:
    rgb = make_cxr_dataset(4, 4, bits_stored=8)
    rgb.set_pixel_data(np.zeros((4, 4, 3), np.uint8), "YBR_FULL", 8)
    rgb.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    sel = select(probe(tmp_path / "rgb.dcm"))
    assert sel.status == "excluded" and "colour image (PhotometricInterpretation 'YBR_FULL', 3 sample" in sel.reason
    pal = make_cxr_dataset(4, 4, bits_stored=8, pixels=np.zeros((4, 4), np.uint8))
    pal.PhotometricInterpretation = "PALETTE COLOR"
    pal.save_as(tmp_path / "pal.dcm", enforce_file_format=True)
    assert "colour image (PhotometricInterpretation 'PALETTE COLOR'" in select(probe(tmp_path / "pal.dcm")).reason
    mf = make_cxr_dataset(4, 4)
    mf.set_pixel_data(np.zeros((2, 4, 4), np.uint16), "MONOCHROME2", 12)
    mf.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    assert select(probe(tmp_path / "mf.dcm")) == Selection(
        "excluded", "multi-frame object (2 frames), not a single radiograph")


@pytest.mark.parametrize(("sop", "modality", "what"), [
    ("1.2.840.10008.5.1.4.1.1.88.11", "SR", "Basic Text SR Storage (1.2.840.10008.5.1.4.1.1.88.11)"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "SEG", "Segmentation Storage"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "RTPLAN", "RT Plan Storage"),
    ("1.2.840.10008.5.1.4.1.1.104.1", "DOC", "Encapsulated PDF Storage"),
    ("1.2.840.10008.5.1.4.1.1.11.1", "PR", "Grayscale Softcopy Presentation State Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.999", "SR", "structured report (1.2.840.10008.5.1.4.1.1.88.999)"),
])
def test_non_image_sop_classes_excluded(tmp_path: Path, sop: str, modality: str, what: str) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop, uid, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    path = tmp_path / "obj.dcm"
    ds.save_as(path, enforce_file_format=True)
    sel = select(probe(path))
    assert sel.status == "excluded" and sel.not_an_image  # in no study: not one of its images
    assert f"non-image object: {what}" in sel.reason


def test_only_files_that_are_no_image_at_all_are_marked_so(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("notes\n")
    assert select(probe(tmp_path / "README.md")).not_an_image
    lateral = decide(tmp_path, view="LL")  # excluded, yet an image of its study
    assert lateral.status == "excluded" and not lateral.not_an_image
    (tmp_path / "cut.dcm").write_bytes(b"\x00" * 10)  # failed: it may be a damaged image
    failed = select(probe(tmp_path / "cut.dcm"))
    assert failed.status == "failed" and not failed.not_an_image


def test_missing_pixel_data(tmp_path: Path) -> None:
    # An image object without pixel data cannot be told from a truncated file: failed, so that it is noticed.
    ds = make_cxr_dataset(4, 4)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    sel = select(probe(tmp_path / "nopix.dcm"))
    assert sel.status == "failed" and "ends before the pixel data of this Computed Radiography Image Storage" in sel.reason
    # An object of a class not known as an image, without image attributes: excluded for having no pixel data.
    other = Dataset()
    other.file_meta = FileMetaDataset()
    other.file_meta.MediaStorageSOPClassUID = other.SOPClassUID = "1.2.3.4.5"
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID = generate_uid()
    other.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    other.Modality = "XX"
    other.save_as(tmp_path / "unknown.dcm", enforce_file_format=True)
    assert select(probe(tmp_path / "unknown.dcm")) == Selection("excluded", "no pixel data (1.2.3.4.5)")


def test_normalise() -> None:
    assert normalise("  ap_supine ") == "AP SUPINE"
    assert normalise("PA-Erect/Left") == "PA ERECT LEFT"


def test_site_rules_change_the_decision(tmp_path: Path) -> None:
    strict = SelectionRules(modalities=("DX",), body_parts=("CHEST",), views=("PA",))
    assert decide(tmp_path, strict, modality="CR").status == "excluded"
    sel = decide(tmp_path, strict, view=None, modality="DX")
    assert sel.status == "excluded" and "(accepted: PA)" in sel.reason
    assert "(accepted: CHEST)" in decide(tmp_path, strict, body_part=None, modality="DX").reason
    lenient = SelectionRules(modalities=("CR", "DX", "OT"), views=("PA", "AP", "LL", ""), allow_for_processing=True)
    assert decide(tmp_path, lenient, view="LL").status == "scored"
    assert decide(tmp_path, lenient, PresentationIntentType="FOR PROCESSING").status == "scored"


def test_rules_validate_types() -> None:
    with pytest.raises(ConfigError, match="'modalities' must be a list of strings"):
        SelectionRules(modalities="CR")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty"):
        SelectionRules(modalities=())


def test_load_rules_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[selection]\nmodalities = ["dx"]\nbody_parts = ["CHEST", "THORAX", ""]\nviews = ["PA"]\n'
                    "allow_for_processing = true\n")
    rules = load_rules(path)
    assert rules == SelectionRules(modalities=("DX",), body_parts=("CHEST", "THORAX", ""), views=("PA",),
                                   allow_for_processing=True)
    assert decide(tmp_path, rules, modality="DX", body_part="THORAX", view="PA").status == "scored"
    top = tmp_path / "top.toml"
    top.write_text('modalities = ["CR"]\n')
    assert load_rules(top).modalities == ("CR",)


@pytest.mark.parametrize(("text", "match"), [
    ('[selection]\nmodality = ["CR"]\n', "unknown selection key\\(s\\) modality; valid keys: allow_for_processing"),
    ('[selection]\nviews = "PA"\n', "'views' must be a list of strings"),
    ('[selection]\nallow_for_processing = "yes"\n', "must be true or false"),
    ("[selection\n", "invalid TOML"),
    ('selection = 3\n', "must be a table"),
])
def test_load_rules_errors_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_rules(path)


def test_load_rules_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read selection rules"):
        load_rules(tmp_path / "none.toml")
