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
