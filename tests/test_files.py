"""Output files: atomic writes (whole or streamed) and unique, file-name-safe artefact stems."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxrtriage.errors import OutputError
from cxrtriage.files import StemRegistry, atomic_output, atomic_write, input_stem, safe_name


def test_atomic_write_replaces_whole_files_and_creates_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    assert atomic_write(target, "hé") == target and target.read_text(encoding="utf-8") == "hé"
    atomic_write(target, b"\x00\x01", fsync=True)
    assert target.read_bytes() == b"\x00\x01" and sorted(p.name for p in target.parent.iterdir()) == ["b.txt"]


def test_atomic_write_names_the_file_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file/out.json: cannot write"):
        atomic_write(tmp_path / "file" / "out.json", "{}")


def test_atomic_output_commits_on_success_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    with atomic_output(tmp_path / "x.csv") as f:
        csv.writer(f).writerow(["a", "b"])
        assert not (tmp_path / "x.csv").exists() and (tmp_path / "x.csv.partial").exists()
    assert (tmp_path / "x.csv").read_bytes() == b"a,b\r\n"
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "x.csv") as f:
        f.write("half")
        raise RuntimeError("crash")
    assert (tmp_path / "x.csv").read_bytes() == b"a,b\r\n" and not (tmp_path / "x.csv.partial").exists()
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "y.bin", "wb", keep_on_error=True) as g:
        g.write(b"rows so far")
        raise RuntimeError("crash")
    assert not (tmp_path / "y.bin").exists() and (tmp_path / "y.bin.partial").read_bytes() == b"rows so far"


def test_stems_are_safe_unique_and_stable() -> None:
    stems = StemRegistry()
    assert stems.stem_for("/a/x.dcm") == "x"
    assert stems.stem_for("/b/x.dcm") == "x_2"
    assert stems.stem_for("/c/X.png") == "X_3"  # unique ignoring case (case-insensitive file systems)
    assert stems.stem_for("/a/x.dcm") == "x"
    assert stems.stem_for("/d/we ird?.dcm") == "we_ird"
    # a stem is already in safe_name form, so names derived from it (heat maps) cannot collide either
    assert stems.stem_for("/e/_x.png") == "x_4" and safe_name(stems.stem_for("/e/_x.png")) == "x_4"
    assert input_stem("scan.nii.gz") == "scan" and input_stem("....png") == "x"


def test_names_from_data_fit_the_file_system_and_stay_unique() -> None:
    """Row 12 at the root: a 244-character input name gives a stem, and heat-map and mask names, well under the
    255-byte limit (with room for ".partial"); two long names differing only at the end stay distinct."""
    from cxrtriage.explain.overlay import heatmap_filename
    from cxrtriage.files import MAX_NAME, MAX_PART, fit_name

    long_a, long_b = "x" * 240 + "a.png", "x" * 240 + "b.png"
    a, b = input_stem(long_a), input_stem(long_b)
    assert len(a) <= MAX_PART and a != b and a.startswith("x" * 40)
    for name in (heatmap_filename(a, "pleural_thickening", "gradcampp"), fit_name(a, ".png"),
                 heatmap_filename("y" * 300, "z" * 300, "w" * 300)):
        assert len((name + ".partial").encode()) <= 255 and len(name) <= MAX_NAME + 10
    assert heatmap_filename("scan", "effusion", "gradcam") == "scan__effusion__gradcam.png"  # short names unchanged
    reg = StemRegistry()
    assert len({reg.stem_for(f"/d{i}/{long_a}") for i in range(3)}) == 3


def test_study_slugs_are_never_dot_dot_empty_or_paths() -> None:
    """Row 14: a StudyInstanceUID '..' named reports '...html' and put DICOM results straight into OUT/."""
    from cxrtriage.files import safe_component
    from cxrtriage.report.header import study_slug

    for key in ("..", ".", "...", "", "/", "../../etc", "a/../../b", "1.2.3.", "=HYPERLINK(\"x\")", "\x00"):
        slug = study_slug(key, deidentified=False)
        assert slug not in (".", "..", "") and "/" not in slug and "\\" not in slug and "\x00" not in slug, key
        assert not slug.startswith(".") and len(slug) <= 64, key
    assert study_slug("1.2.840.10008.1", deidentified=False) == "1.2.840.10008.1"
    assert [safe_component(x) for x in ("..", ".", "", "a/b")] == ["x", "x", "x", "a_b"]
    assert safe_component("1.2.3") == "1.2.3"
