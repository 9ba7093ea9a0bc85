"""inspect_file() facts and the `cxrtriage inspect` command (rendered in-process; no patient data printed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from factories import make_cxr_dataset
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.io.inspect import inspect_file


def _cr(tmp_path: Path, name: str = "cr.dcm", **attrs: object) -> Path:
    px = (np.arange(64).reshape(8, 8) * 50).astype(np.uint16)
    ds = make_cxr_dataset(8, 8, pixels=px, photometric="MONOCHROME1", RescaleSlope="2", RescaleIntercept="-5",
                          WindowCenter="1000", WindowWidth="2000", ImagerPixelSpacing=["0.15", "0.15"], **attrs)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_inspect_file_reports_what_was_read(tmp_path: Path) -> None:
    r = inspect_file(_cr(tmp_path))
    assert (r.status, r.reason, r.kind, r.size) == ("scored", "CR CHEST PA", "dicom", "8x8")
    assert (r.photometric, r.bits_stored, r.bits_allocated) == ("MONOCHROME1", 12, 16)
    assert r.transfer_syntax == "Explicit VR Little Endian" and r.decoder == "numpy (uncompressed 16-bit little endian)"
    assert r.modality_lut == "RescaleSlope 2 / RescaleIntercept -5"
    assert r.monochrome1_inverted
    assert r.voi.startswith("WindowCenter 1000 / WindowWidth 2000 LINEAR")
    assert (r.pixel_spacing_mm, r.spacing_source) == ((0.15, 0.15), "ImagerPixelSpacing")
    assert r.value_range == (-5.0, 4095 * 2 - 5.0)
    assert r.read_error is None


def test_inspect_file_on_excluded_and_broken_files(tmp_path: Path) -> None:
    r = inspect_file(_cr(tmp_path, "lat.dcm", ViewPosition="LL"))
    assert r.status == "excluded" and "lateral" in r.reason and r.value_range is not None  # still read and shown
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x01\x02" * 300)
    r = inspect_file(junk)
    assert (r.status, r.kind) == ("failed", "unknown") and "not a recognised image file" in r.reason
    assert r.study_key == f"folder:{tmp_path}"  # it may be a damaged image of the folder's study


def test_inspect_file_gives_a_file_that_is_no_image_no_study_key(tmp_path: Path) -> None:
    lateral = inspect_file(_cr(tmp_path, "lat.dcm", ViewPosition="LL"))
    assert lateral.study_key and lateral.study_key != f"folder:{tmp_path}"  # its StudyInstanceUID
    (tmp_path / "README.md").write_text("notes\n")
    r = inspect_file(tmp_path / "README.md")
    assert (r.status, r.study_key) == ("excluded", "")  # as predict's results say: in no study


def test_cli_inspect_renders_and_never_prints_patient_data(tmp_path: Path) -> None:
    _cr(tmp_path)
    _cr(tmp_path, "lat.dcm", ViewPosition="LL")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("scored", "CR CHEST PA", "excluded", "lateral view", "MONOCHROME1 inverted", "RescaleSlope 2",
                 "0.15 x 0.15 mm (row x column) from ImagerPixelSpacing", "WindowCenter 1000", "Explicit VR Little Endian"):
        assert text in out, text
    assert "Test^Factory" not in out and "FACTORY-1" not in out


def test_cli_inspect_json_and_rules(tmp_path: Path) -> None:
    path = _cr(tmp_path, "lat.dcm", ViewPosition="LL")
    rules = tmp_path / "rules.toml"
    rules.write_text('[selection]\nviews = ["LL"]\n')
    result = CliRunner().invoke(app, ["inspect", "--json", "--rules", str(rules), str(path)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip())
    assert (row["status"], row["reason"], row["path"]) == ("scored", "CR CHEST LL", str(path))
    assert "Test^Factory" not in result.output


def test_inspect_runs_the_callers_image_checks_on_the_image_as_predict_reads_it(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def checks(image: object) -> list[str]:
        seen.append(image.pixels.shape)  # type: ignore[attr-defined]
        return ["one: ok"]

    path = _cr(tmp_path)
    assert inspect_file(path).quality == ()
    assert inspect_file(path, image_checks=checks).quality == ("one: ok",) and seen == [(8, 8)]
    big = tmp_path / "big.dcm"
    make_cxr_dataset(64, 64, pixels=np.tile(np.arange(64, dtype=np.uint16) * 60, (64, 1))).save_as(
        big, enforce_file_format=True)
    inspect_file(big, max_scale=lambda shape: 4.0, image_checks=checks)
    assert seen[-1] == (16, 16)  # the block-averaged read, as predict checks it


def test_inspect_says_predict_never_decodes_a_file_it_leaves_out(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(64, dtype=np.uint16) * 60, (64, 1))
    lateral, frontal = tmp_path / "lat.dcm", tmp_path / "pa.dcm"
    make_cxr_dataset(64, 64, pixels=pixels, view="LL").save_as(lateral, enforce_file_format=True)
    make_cxr_dataset(64, 64, pixels=pixels).save_as(frontal, enforce_file_format=True)
    report = inspect_file(lateral, max_scale=lambda shape: 4.0)
    assert report.status.value == "excluded"
    assert report.reduced_decode == "not decoded: predict leaves this file out (excluded, see decision)"
    assert inspect_file(frontal, max_scale=lambda shape: 4.0).reduced_decode.startswith("1/4: 16x16 block-averaged")


def test_cli_inspect_shows_which_quality_check_fails(tmp_path: Path) -> None:
    from hostile import jpeg_damaged

    jpeg_damaged(tmp_path / "zeroed.dcm", "zeroed")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "decoding: FAILED (damaged pixel data: " in result.output and "size: ok" in result.output
    result = CliRunner().invoke(app, ["inspect", "--json", str(tmp_path)])
    row = json.loads(result.output.strip())
    assert row["quality"][0].startswith("decoding: FAILED (damaged pixel data: ")
    assert row["quality"][1:] == ["size: ok", "dynamic_range: ok"]


def test_a_file_predict_would_fail_reading_is_decided_failed_with_predicts_reason(tmp_path: Path) -> None:
    """A truncated PNG: inspect said 'scored' beside its own read error, where predict gives the file a failed row."""
    import cv2

    ok, png = cv2.imencode(".png", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    assert ok
    path = tmp_path / "cut.png"
    path.write_bytes(png.tobytes()[: len(png) // 2])
    report = inspect_file(path)
    assert report.status == "failed" and report.read_error and report.reason == report.read_error
    assert "without its IEND chunk" in report.reason


def test_cli_inspect_of_a_folder_with_no_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(app, ["inspect", *extra, str(tmp_path / "empty")])
        assert result.exit_code == 2 and f"no input files found in {tmp_path / 'empty'}" in result.output, result.output
