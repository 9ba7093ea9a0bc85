"""Recognising files by content: a damaged gzip stream is a reason, not an unexpected error."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cxrtriage.io import probe, select
from cxrtriage.io.sniff import sniff
from cxrtriage.results import Status
from cxrtriage.types import InputKind


def test_gzip_with_damaged_deflate_data_fails_with_a_reason(tmp_path: Path) -> None:
    # Found by tests/fuzz (scripts/fuzz_predict.py, random byte flips of a .nii.gz): zlib.error is not an OSError,
    # so it escaped the sniffer and the row said "unexpected error while reading ...; please report this file".
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(600, dtype=np.uint16).reshape(20, 30)), str(tmp_path / "ok.nii.gz"))
    data = bytearray((tmp_path / "ok.nii.gz").read_bytes())
    assert sniff(tmp_path / "ok.nii.gz").fmt == "nifti"
    data[10:40] = b"\xff" * 30  # the start of the deflate stream, right after the 10-byte gzip header
    (tmp_path / "bad.nii.gz").write_bytes(bytes(data))
    with gzip.open(tmp_path / "bad.nii.gz") as gz, pytest.raises(zlib.error):  # the damage this test is about
        gz.read(1024)
    found = sniff(tmp_path / "bad.nii.gz")
    assert found.kind is InputKind.UNKNOWN and found.hint.startswith("gzip file whose compressed data are damaged")
    sel = select(probe(tmp_path / "bad.nii.gz"))
    assert sel.status is Status.FAILED and "gzip file whose compressed data are damaged" in sel.reason
    assert "unexpected" not in sel.reason
