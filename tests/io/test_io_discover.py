"""Input discovery, content-based recognition, probing and grouping by study/series."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_cxr_dataset, write_dicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrtriage.errors import InputError
from cxrtriage.io import Selection, assess, discover, group_by_series, group_by_study, probe, read_image, select, study_key
from cxrtriage.types import InputKind


def test_discover_recursive_sorted_deduplicated_and_skips_hidden(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for rel in ["b/2.dcm", "b/10.dcm", "a/z/1.png", "a/y.txt", "c.dcm", ".DS_Store", "a/.hidden", ".git/x"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="cxrtriage.io.discover"):
        found = [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path, tmp_path / "c.dcm"])]
    assert found == ["a/y.txt", "a/z/1.png", "b/10.dcm", "b/2.dcm", "c.dcm"]
    assert "skipped 3 hidden" in caplog.text
    # deterministic, and an explicitly named hidden file is kept
    assert [p.name for p in discover([tmp_path / ".DS_Store", tmp_path / "c.dcm"])] == [".DS_Store", "c.dcm"]
    assert len(list(discover([tmp_path], include_hidden=True))) == 8


def test_the_same_file_by_a_link_or_a_hard_link_is_listed_once_and_dangling_links_each_get_a_row(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"x")
    (tmp_path / "b.dcm").write_bytes(b"x")  # same bytes, another file: kept
    os.link(tmp_path / "a.dcm", tmp_path / "c_hard.dcm")
    (tmp_path / "d_soft.dcm").symlink_to(tmp_path / "a.dcm")
    (tmp_path / "e_dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "f_dangling").symlink_to(tmp_path / "gone")  # both dangle to one target: one row (same resolved path)
    (tmp_path / "g_loop").symlink_to(tmp_path / "g_loop")
    found = [p.name for p in discover([tmp_path])]
    assert found == ["a.dcm", "b.dcm", "e_dangling", "g_loop"]


def test_discover_missing_input_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input not found: .*nope"):
        list(discover([tmp_path, tmp_path / "nope"]))


def test_dicom_named_png_and_png_named_dcm_are_recognised_by_content(tmp_path: Path) -> None:
    dcm_as_png = write_dicom(tmp_path / "scan.png", rows=8, cols=8)
    png_as_dcm = tmp_path / "image.dcm"
    ok, buf = cv2.imencode(".png", np.full((6, 5), 77, np.uint8))
    png_as_dcm.write_bytes(buf.tobytes())
    a, b = probe(dcm_as_png), probe(png_as_dcm)
    assert (a.kind, a.fmt) == (InputKind.DICOM, "dicom")
    assert (b.kind, b.fmt, b.rows, b.columns) == (InputKind.RASTER, "png", 6, 5)
    assert read_image(dcm_as_png).dicom is not None
    assert read_image(png_as_dcm).pixels.shape == (6, 5)


def test_every_file_gets_a_decision_with_a_reason(tmp_path: Path) -> None:
    write_dicom(tmp_path / "cxr.dcm", rows=8, cols=8)
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.dcm").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "bmp.bmp"), np.zeros((4, 4), np.uint8))
    decisions = {p.name: select(probe(p)) for p in discover([tmp_path])}
    assert decisions["cxr.dcm"].status == "scored"
    assert decisions["notes.txt"].status == "excluded" and "text file" in decisions["notes.txt"].reason
    assert decisions["junk.bin"].status == "failed" and "not a recognised image" in decisions["junk.bin"].reason
    assert decisions["empty.dcm"].status == "failed" and "empty" in decisions["empty.dcm"].reason
    assert "named '.dcm'" in decisions["empty.dcm"].reason
    assert decisions["bmp.bmp"].status == "failed" and "BMP" in decisions["bmp.bmp"].reason
    assert all(d.reason for d in decisions.values())


@pytest.mark.parametrize(("name", "expected"), [("x.dcm", "DICOM"), ("x.PNG", "PNG"), ("x.jpg", "JPEG"),
                                              ("x.nii", "NIfTI"), ("x.mhd", "MetaImage")])
def test_text_named_as_an_image_fails_and_names_the_mismatch(tmp_path: Path, name: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text("hello\n")  # e.g. an error page saved under the image's name
    sel = select(probe(path))
    assert sel.status == "failed"  # as an empty or binary file under an image's name: the image went wrong
    assert f"it is named '{path.suffix}' but its content is not {expected} (text" in sel.reason
    assert "re-send or re-export the original image" in sel.reason
    (tmp_path / "notes.txt").write_text("hello\n")  # text under a text name is simply not an image
    assert select(probe(tmp_path / "notes.txt")) == Selection("excluded", "text file (e.g. README, CSV, JSON), not an image",
                                                           not_an_image=True)


def test_empty_file_named_as_an_image_names_the_format_it_is_not(tmp_path: Path) -> None:
    (tmp_path / "zero.png").write_bytes(b"")
    sel = select(probe(tmp_path / "zero.png"))
    assert sel.status == "failed" and "(the file is empty)" in sel.reason
    assert sel.reason.endswith("it is named '.png' but its content is not PNG")


def test_dicomdir_is_excluded_not_failed(tmp_path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "TEST"
    ds.DirectoryRecordSequence = []
    path = tmp_path / "DICOMDIR"
    ds.save_as(path, enforce_file_format=True)
    sel = select(probe(path))
    assert (sel.status, sel.reason) == ("excluded", "DICOMDIR (media directory index), not an image")


def test_unreadable_file_is_failed_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "locked.dcm", rows=8, cols=8)

    def denied(_: object) -> None:
        raise PermissionError(13, "Permission denied")

    # chmod does not stop root, which CI may be; (the package exports a function named like the module: use sys.modules)
    monkeypatch.setattr(sys.modules["cxrtriage.io.discover"], "sniff", denied)
    a = assess(path)
    assert a.selection == Selection("failed", "cannot read the file (Permission denied)")
    monkeypatch.setattr(sys.modules["cxrtriage.io.read"], "sniff", denied)
    with pytest.raises(InputError, match="locked.dcm: cannot read the file \\(Permission denied\\)"):
        read_image(path)


def test_a_folder_that_cannot_be_listed_gets_a_failed_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dicom(tmp_path / "ok.dcm", rows=8, cols=8)
    write_dicom(tmp_path / "locked" / "hidden_by_permissions.dcm", rows=8, cols=8)
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str] = ".") -> Iterator[os.DirEntry[str]]:
        if Path(path).name == "locked":  # chmod does not stop root: deny the listing here
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = list(discover([tmp_path]))
    assert [p.name for p in found] == ["locked", "ok.dcm"]
    assert select(probe(tmp_path / "locked")) == Selection(
        "failed", "cannot list this folder (Permission denied); its files were not read")


def test_discovery_never_walks_the_excluded_or_cxrtriage_output_folders(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    write_dicom(tmp_path / "scan.dcm", rows=8, cols=8)
    write_dicom(tmp_path / "out" / "masks" / "scan.dcm", rows=8, cols=8)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.csv").write_text("path,status,reason\n")
    write_dicom(tmp_path / "old" / "masks" / "scan.dcm", rows=8, cols=8)
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in discover([tmp_path], exclude=[tmp_path / "out"])] == ["scan.dcm"]
    assert sum("not read as input" in r.getMessage() for r in caplog.records) == 2
    # a cxrtriage output folder named explicitly is read (the user asked for it); the run's own --out never is
    assert [p.name for p in discover([tmp_path / "old"])] == ["scan.dcm", "results.csv"]
    assert list(discover([tmp_path / "out"], exclude=[tmp_path / "out"])) == []


def test_probe_reads_only_the_header(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", rows=64, cols=32, photometric="MONOCHROME1", view="AP SUPINE")
    pr = probe(path)
    assert pr.dicom is not None
    assert (pr.rows, pr.columns, pr.frames, pr.bits, pr.has_pixel_data) == (64, 32, 1, 16, True)
    assert pr.dicom.photometric_interpretation == "MONOCHROME1" and pr.dicom.view_position == "AP SUPINE"
    assert pr.size_text == "32x64"


def test_study_key_and_grouping(tmp_path: Path) -> None:
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    write_dicom(tmp_path / "s/b.dcm", rows=4, cols=4, study_uid=study, series_uid=s2)
    write_dicom(tmp_path / "s/a.dcm", rows=4, cols=4, study_uid=study, series_uid=s1)
    write_dicom(tmp_path / "other/c.dcm", rows=4, cols=4)
    (tmp_path / "pngs").mkdir()
    cv2.imwrite(str(tmp_path / "pngs" / "p.png"), np.zeros((4, 4), np.uint8))
    probes = [probe(p) for p in discover([tmp_path])]
    groups = group_by_study(probes)
    assert len(groups) == 3
    # inside a study: by series UID, then path
    assert [p.path.name for p in groups[study]] == sorted(["a.dcm", "b.dcm"], key=lambda n: s1 if n == "a.dcm" else s2)
    assert f"folder:{tmp_path / 'pngs'}" in groups
    assert study_key(probe(tmp_path / "pngs" / "p.png")) == f"folder:{tmp_path / 'pngs'}"
    series = group_by_series(probes)[study]
    assert set(series) == {s1, s2}


def test_dicom_without_study_uid_groups_by_folder(tmp_path: Path) -> None:
    ds = make_cxr_dataset(4, 4)
    del ds.StudyInstanceUID
    path = tmp_path / "nostudy.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert study_key(probe(path)) == f"folder:{tmp_path}"


def test_metaimage_data_file_is_excluded_as_companion(tmp_path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((8, 6), np.uint16))
    sitk.WriteImage(img, str(tmp_path / "img.mhd"))
    names = {p.name: select(probe(p)) for p in discover([tmp_path])}
    raw = next(n for n in names if n != "img.mhd")
    assert names["img.mhd"].status == "scored"
    assert names[raw].status == "excluded" and "img.mhd" in names[raw].reason
