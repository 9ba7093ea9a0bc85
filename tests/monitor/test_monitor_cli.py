"""``cxrtriage monitor`` from the command line with a tiny model: outputs, exit codes, references and their errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import edit_manifest, make_tiny_classifier, require_tool, write_dicom
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.errors import ModelError
from cxrtriage.model import load_classifier
from cxrtriage.model.integrity import canonical_json
from cxrtriage.monitor.reference import model_reference
from cxrtriage.monitor.run import MonitorConfig, run_monitor
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict

pytestmark = pytest.mark.slow  # three small predict runs shared by the module (about 10 s in all)
runner = CliRunner()


def _images(folder: Path, n: int, *, noisy: bool, seed: int, month: str) -> Path:
    """``n`` 48 x 48 radiograph-like DICOMs: smooth blobs, or (``noisy``) the same with strong fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    for i in range(n):
        cy, cx = rng.uniform(12, 36, 2)
        img = 1500 + 1200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(60, 200))
        if noisy:
            img = img + rng.normal(0, 600, img.shape)
        write_dicom(folder / f"{seed}_{i:03d}.dcm", rows=48, cols=48, pixels=np.clip(img, 0, 4095).astype(np.uint16),
                    StudyDate=f"{month}15", Manufacturer="NoisyCo" if noisy else "SmoothCo")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mon")
    manifest = make_tiny_classifier(root / "model", size=16)
    model = load_classifier(manifest, device="cpu")
    out = {"model": manifest.parent}
    for name, noisy, seed, month in (("ref", False, 1, "202401"), ("same", False, 2, "202402"),
                                     ("noisy", True, 3, "202403")):
        out[name] = root / f"out_{name}"
        run_predict(PredictConfig(inputs=(_images(root / f"in_{name}", 60, noisy=noisy, seed=seed, month=month),),
                                  out_dir=out[name], workers=0), model=model)
    return out


def test_cli_writes_json_and_html_and_fails_on_alert_only_when_asked(setup: dict[str, Path], tmp_path: Path) -> None:
    args = ["monitor", str(setup["same"]), str(setup["noisy"]), "--reference", str(setup["ref"]), "--model",
            str(setup["model"]), "--json", str(tmp_path / "m.json"), "--html", str(tmp_path / "m.html")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "alert(s)" in res.output and "month=2024-03" in res.output
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["levels"] == {"psi_warn": 0.1, "psi_alert": 0.25, "q_warn": 0.05, "q_alert": 0.01, "min_n": 30}
    alerted = {(a["slice"], a["metric"]) for a in data["alerts"]}
    assert any(s == "month=2024-03" for s, _ in alerted)  # the noisy images' month
    assert not any(s == "month=2024-02" for s, _ in alerted)  # the same kind of images as the reference
    assert {s["slice"] for s in data["slices"]} >= {"all", "month=2024-02", "month=2024-03", "manufacturer=NoisyCo"}
    html = (tmp_path / "m.html").read_text()
    assert "<img" in html and 'src="http' not in html and "data:image/png;base64," in html  # self-contained
    res = runner.invoke(app, [*args, "--fail-on-alert"])
    assert res.exit_code == 1, res.output
    res = runner.invoke(app, ["monitor", str(setup["same"]), "--reference", str(setup["ref"]), "--model",
                              str(setup["model"]), "--fail-on-alert"])
    assert res.exit_code == 0 and "no alert" in res.output, res.output


def test_slices_too_small_to_judge_are_named_in_one_line_not_rows(setup: dict[str, Path], tmp_path: Path) -> None:
    res = runner.invoke(app, ["monitor", str(setup["same"]), str(setup["noisy"]), "--reference", str(setup["ref"]),
                              "--model", str(setup["model"]), "--min-n", "61", "--json", str(tmp_path / "m.json")],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "4 slice(s) with fewer than 61 values for every metric, not judged (rows): month=2024-02 (60)" in res.output
    assert "│ month=2024-02" not in res.output and "│ all" in res.output
    data = json.loads((tmp_path / "m.json").read_text())
    assert {s["slice"]: s["level"] for s in data["slices"]}["month=2024-02"] == "too few"  # JSON keeps every slice


def test_a_growing_results_file_is_read_up_to_its_last_complete_line(setup: dict[str, Path], tmp_path: Path) -> None:
    lines = (setup["same"] / "results.jsonl").read_text().splitlines(keepends=True)
    growing = tmp_path / "results.jsonl.partial"
    growing.write_text("".join(lines[:-1]) + lines[-1][:40])  # a run still writing its last row
    report = run_monitor(MonitorConfig(results=(growing,), reference=(str(setup["ref"]),), model=str(setup["model"])))
    assert report.slices[0].rows == len(lines) - 1
    assert any("last line incomplete" in w for w in report.warnings)
    twice = run_monitor(MonitorConfig(results=(setup["same"], setup["same"] / "results.csv"),
                                      reference=(str(setup["ref"]),), model=str(setup["model"])))
    assert twice.duplicates == len(lines) and twice.slices[0].rows == len(lines)


def test_one_instance_in_two_files_of_one_run_is_kept_and_across_inputs_dropped(setup: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (setup["same"] / "results.jsonl").read_text().splitlines()]
    uid = rows[0]["sop_instance_uid"]
    assert uid
    rows[1]["sop_instance_uid"] = uid  # two files of one instance (e.g. a copy in another transfer syntax)
    one = tmp_path / "one" / "results.jsonl"
    one.parent.mkdir()
    one.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"reference": (str(setup["ref"]),), "model": str(setup["model"])}
    report = run_monitor(MonitorConfig(results=(one,), **config))  # type: ignore[arg-type]
    assert report.duplicates == 0 and report.slices[0].rows == len(rows)
    assert not any("counted once" in w for w in report.warnings)
    both = run_monitor(MonitorConfig(results=(one, setup["same"]), **config))  # type: ignore[arg-type]
    # the run's own second row (its UID replaced in the first input) is the only one not read before
    assert both.duplicates == len(rows) - 1 and both.slices[0].rows == len(rows) + 1
    assert any(f"{len(rows) - 1} row(s) seen in more than one input" in w for w in both.warnings)


def test_model_reference_errors_say_how_to_fix(setup: dict[str, Path], tmp_path: Path) -> None:
    res = runner.invoke(app, ["monitor", str(setup["same"]), "--model", str(setup["model"])])
    assert res.exit_code == 3 and "has no validation reference" in res.output and "train reference" in res.output
    shutil.copytree(setup["model"], tmp_path / "model")
    manifest_path = tmp_path / "model" / "manifest.json"
    data = json.loads(manifest_path.read_text())
    calibration = hashlib.sha256(canonical_json(data["calibration"])).hexdigest()
    q = list(np.linspace(0, 1, 101))
    pop = {"n": 100, "sources": {"x": 100}, "scores": dict.fromkeys(data["labels"], q), "age_band": {"40-59": 100},
           "sex": {"F": 50, "M": 50}, "view": {"PA": 100}}
    data["reference"] = {"quantiles": 101, "calibration_sha256": calibration, "onnx_sha256": data["sha256"],
                         "populations": {"all": pop}}
    edit_manifest(manifest_path, {k: v for k, v in data.items() if k != "integrity"})
    ref = model_reference(load_classifier(manifest_path, device="cpu").manifest)
    assert ref.scored == 100 and ref.scores["abnormal"].cdf(np.array([0.5]))[0] == pytest.approx(0.5)
    with pytest.raises(ModelError, match="no reference population 'adult'"):
        model_reference(load_classifier(manifest_path, device="cpu").manifest, "adult")
    data["calibration"]["b"]["abnormal"] = 0.5  # re-calibrated after the reference was computed
    edit_manifest(manifest_path, {k: v for k, v in data.items() if k != "integrity"})
    with pytest.raises(ModelError, match="another calibration"):
        model_reference(load_classifier(manifest_path, device="cpu").manifest)


def test_options_are_checked() -> None:
    from cxrtriage.errors import ConfigError

    with pytest.raises(ConfigError, match="--population"):
        MonitorConfig(results=(Path("x"),), population="elderly")
    with pytest.raises(ConfigError, match="unknown subgroup"):
        MonitorConfig(results=(Path("x"),), subgroups=("scanner",))
    with pytest.raises(ConfigError, match="'model' stands alone"):
        MonitorConfig(results=(Path("x"),), reference=("model", "y"))
    res = runner.invoke(app, ["monitor", "/nonexistent/results"])
    assert res.exit_code == 2 and "results file not found" in res.output


def test_the_drift_table_is_readable_in_80_columns(setup: dict[str, Path]) -> None:
    """Ten columns with long headers left every cell of an 80-column terminal as 'scor…', 'prio…'."""
    res = runner.invoke(app, ["monitor", str(setup["same"]), str(setup["noisy"]), "--reference", str(setup["ref"]),
                              "--model", str(setup["model"])], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    header = next(line for line in res.output.splitlines() if "slice" in line and "rows" in line)
    for name in ("scored", "score PSI", "prio", "qual", "status", "excl", "who", "level"):
        assert name in header, header
    assert "who: the largest of the composition metrics" in " ".join(res.output.split())


@pytest.mark.slow
def test_the_html_page_fits_a_narrow_window(setup: dict[str, Path], tmp_path: Path) -> None:
    """The PSI-per-slice table (one column per label and category metric) scrolls in its own box; the page does not."""
    import subprocess

    page = tmp_path / "m.html"
    res = runner.invoke(app, ["monitor", str(setup["same"]), str(setup["noisy"]), "--reference", str(setup["ref"]),
                              "--model", str(setup["model"]), "--html", str(page)])
    assert res.exit_code == 0, res.output
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", (
        "<script>window.addEventListener('load',()=>{const d=document.documentElement,w=document.querySelector('.wide');"
        "document.body.setAttribute('data-fit',(d.scrollWidth<=window.innerWidth)+'/'+(w.scrollWidth>w.clientWidth));"
        "});</script></body>")))
    cmd = [require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=700,900", "--virtual-time-budget=3000",
           "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'data-fit="true/true"' in dom, dom[-300:]  # the page fits; the wide table scrolls inside its box
