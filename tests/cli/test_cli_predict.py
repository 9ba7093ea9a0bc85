"""`cxrtriage predict` end to end through the CLI: rows, statuses, exit codes, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_tiny_classifier, make_tiny_segmenter, write_dicom
from typer.testing import CliRunner

from cxrtriage.cli.app import app

LABELS = ("abnormal", "pneumonia", "effusion")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    write_dicom(root / "p1" / "pa.dcm", rows=48, cols=40, PixelSpacing=[0.15, 0.15])
    write_dicom(root / "p1" / "lateral.dcm", view="LL")
    write_dicom(root / "p2" / "ap.dcm", rows=30, cols=30, view="AP", photometric="MONOCHROME1", modality="DX")
    cv2.imwrite(str(root / "p3.png"), (np.random.default_rng(1).random((64, 50)) * 255).astype(np.uint8))
    (root / "junk.bin").write_bytes(b"\xde\xad\xbe\xef" + np.random.default_rng(2).bytes(600))
    return root


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_tiny_classifier(tmp_path / "models" / "cxr-classifier")


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


def test_predict_end_to_end(folder: Path, model: Path, tmp_path: Path) -> None:
    code, output = _invoke("predict", str(folder), "--out", str(tmp_path / "out"), "--model", str(model),
                           "--workers", "0", "--batch-size", "2")
    assert code == 0, output
    assert "predict summary" in output and "scored" in output
    rows = _rows(tmp_path / "out")
    assert set(rows) == {"pa.dcm", "lateral.dcm", "ap.dcm", "p3.png", "junk.bin"}
    status = {k: v["status"] for k, v in rows.items()}
    assert status == {"pa.dcm": "scored", "ap.dcm": "scored", "p3.png": "scored", "lateral.dcm": "excluded",
                      "junk.bin": "failed"}
    assert "lateral view" in rows["lateral.dcm"]["reason"]
    assert rows["junk.bin"]["reason"]
    assert rows["pa.dcm"]["pixel_spacing_mm"] == "0.15;0.15" and rows["pa.dcm"]["rows"] == "48"
    for name, r in rows.items():
        filled = [r[f"score_{lab}"] != "" for lab in LABELS]
        assert all(filled) if r["status"] == "scored" else not any(filled), name
    jsonl = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(jsonl) == 5 and list(jsonl[0]) == list(next(iter(rows.values())))
    assert not list((tmp_path / "out").glob("*.partial"))


def test_predict_with_worker_processes_matches_serial(folder: Path, model: Path, tmp_path: Path) -> None:
    assert _invoke("predict", str(folder), "-o", str(tmp_path / "a"), "-m", str(model), "-w", "0")[0] == 0
    assert _invoke("predict", str(folder), "-o", str(tmp_path / "b"), "-m", str(model), "-w", "2")[0] == 0
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert a == b


def test_fail_on_error_exit_code(folder: Path, model: Path, tmp_path: Path) -> None:
    code, output = _invoke("predict", str(folder), "-o", str(tmp_path / "out"), "-m", str(model), "-w", "0",
                           "--fail-on-error")
    assert code == 1
    assert "1 of 5 input(s) failed" in output
    assert (tmp_path / "out" / "results.csv").is_file()  # the results are still written
    code, _ = _invoke("predict", str(folder / "p1" / "pa.dcm"), "-o", str(tmp_path / "ok"), "-m", str(model),
                      "-w", "0", "--fail-on-error")
    assert code == 0


def test_model_by_name_from_models_dir(folder: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(model.parent.parent))
    code, output = _invoke("predict", str(folder / "p2"), "-o", str(tmp_path / "out"), "-w", "0")
    assert code == 0, output
    assert _rows(tmp_path / "out")["ap.dcm"]["model_name"] == "tiny-classifier"


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:")
    return lines[0]


def test_missing_default_model_is_one_clear_line(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(tmp_path / "nomodels"))
    code, output = _invoke("predict", str(folder), "-o", str(tmp_path / "out"))
    assert code == 3
    assert "model 'cxr-classifier' not found" in _one_error_line(output)


def test_run_level_errors_exit_non_zero_with_one_line(folder: Path, model: Path, tmp_path: Path) -> None:
    code, output = _invoke("predict", str(tmp_path / "missing"), "-o", str(tmp_path / "out"), "-m", str(model))
    assert code == 2 and "input not found" in _one_error_line(output)
    (tmp_path / "empty").mkdir()
    code, output = _invoke("predict", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "-m", str(model))
    assert code == 2 and "no input files found" in _one_error_line(output)
    (tmp_path / "afile").write_text("x")
    code, output = _invoke("predict", str(folder), "-o", str(tmp_path / "afile" / "out"), "-m", str(model))
    assert code == 5 and "cannot create the output folder" in _one_error_line(output)
    seg = make_tiny_segmenter(tmp_path / "seg")
    code, output = _invoke("predict", str(folder), "-o", str(tmp_path / "out"), "-m", str(seg))
    assert code == 3 and "segmentation model" in _one_error_line(output)
    code, output = _invoke("predict", str(folder), "-o", str(tmp_path / "out"), "-m", str(model), "--device", "tpu")
    assert code == 4 and "choose one of" in _one_error_line(output)


def test_tampered_model_is_refused(folder: Path, model: Path, tmp_path: Path) -> None:
    onnx_path = model.parent / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[-3] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    code, output = _invoke("predict", str(folder), "-o", str(tmp_path / "out"), "-m", str(model))
    assert code == 3 and "does not match the manifest" in _one_error_line(output)
    assert not (tmp_path / "out").exists()


def test_device_fallback_and_strict(folder: Path, model: Path, tmp_path: Path) -> None:
    from cxrtriage.model.session import Device, available_devices

    if Device.OPENVINO in available_devices():
        pytest.skip("OpenVINO is installed here")
    code, output = _invoke("predict", str(folder / "p2"), "-o", str(tmp_path / "a"), "-m", str(model), "-w", "0",
                           "--device", "openvino")
    assert code == 0 and "on cpu" in output
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["device"] == "cpu" and run["options"]["device_requested"] == "openvino"
    # the fallback is in the run's own record: the device asked for, the one used and why
    assert [n for n in run["notes"] if n.startswith("--device openvino was asked for, but the model ran on cpu: "
                                                    "device 'openvino' is not available")], run["notes"]
    code, output = _invoke("predict", str(folder / "p2"), "-o", str(tmp_path / "b"), "-m", str(model), "-w", "0",
                           "--device", "openvino", "--strict-device")
    # exit 4, configuration (the README's table): the model is fine, this machine does not fit the options
    assert code == 4 and "device 'openvino' is not available" in _one_error_line(output)
    code, output = _invoke("predict", str(folder / "p2"), "-o", str(tmp_path / "c"), "-m", str(model), "-w", "0",
                           "--device", "cpu")
    assert code == 0 and not any("--device" in n for n in json.loads((tmp_path / "c" / "run.json").read_text())["notes"])


def test_inputs_are_not_modified(folder: Path, model: Path, tmp_path: Path) -> None:
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    assert _invoke("predict", str(folder), "-o", str(tmp_path / "out"), "-m", str(model), "-w", "0")[0] == 0
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    assert before == after


def test_predict_starts_the_decode_forkserver_before_it_imports_the_pipeline(tmp_path: Path) -> None:
    """The forkserver's imports run beside the command's own (pipeline, model, onnxruntime), not after them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import cxrtriage.pipeline.startup as s\n"
        "seen = []\n"
        "s.prestart = lambda w: seen.append(('cxrtriage.pipeline.predict' in sys.modules, 'onnxruntime' in sys.modules))\n"
        "from cxrtriage.cli.app import app\n"
        "try:\n"
        f"    app(['predict', {str(tmp_path / 'missing')!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('SEEN', seen)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert "SEEN [(False, False)]" in out.stdout, out.stdout + out.stderr
