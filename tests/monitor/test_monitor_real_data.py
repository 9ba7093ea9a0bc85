"""``cxrtriage monitor`` on real radiographs scored by the shipped model: a real shift it must flag, and where it is
(adult NIH films from one vendor vs pediatric Kermany films from another, a later month, partly PNG/JPEG instead of
DICOM), a no-shift split it must not flag (two random halves of the same NIH images), and the manifest's validation
reference against the very images it was computed on."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import cv2
import pytest
from factories import write_dicom

from cxrtriage.model import load_classifier
from cxrtriage.monitor.run import MonitorConfig, run_monitor
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _dicom(src: Path, dst: Path, day: str, **tags: object) -> Path:
    """The real image's pixels in a DX DICOM (8 bits, as the shared copies are) with the given header facts."""
    pixels = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    assert pixels is not None, src
    return write_dicom(dst, pixels=pixels, bits_stored=8, modality="DX", StudyDate=day, **tags)


@pytest.fixture(scope="module")
def runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("monitor")
    with open(shared_data / "nih14" / "labels.csv", newline="") as fh:
        nih = sorted(csv.DictReader(fh), key=lambda r: r["image"])
    random.Random(0).shuffle(nih)
    kids = sorted((shared_data / "kermany224" / "test").glob("*/*.jpeg"))
    random.Random(1).shuffle(kids)
    adult = {"Manufacturer": "VendorA", "ManufacturerModelName": "DR-A", "InstitutionName": "Adult hospital"}
    folders = {"reference": root / "in_ref", "nih": root / "in_nih", "kids": root / "in_kids"}
    for i, r in enumerate(nih[:160]):
        folder = folders["reference"] if i < 80 else folders["nih"]
        _dicom(shared_data / "nih14" / r["image"], folder / f"nih{i:03d}.dcm", f"20240{1 + i % 2}{10 + i % 15:02d}",
               view=r["view"], PatientAge=f"{int(float(r['age'])):03d}Y", PatientSex=r["sex"], **adult)
    for i, p in enumerate(kids[:40]):
        _dicom(p, folders["kids"] / f"kid{i:03d}.dcm", f"202403{10 + i % 15:02d}", view=None, PatientAge="003Y",
               Manufacturer="VendorB", ManufacturerModelName="DR-B", InstitutionName="Children's hospital")
    model = load_classifier(None, device="cpu")
    out: dict[str, Path] = {}
    for name, inputs in {"reference": (folders["reference"],), "nih": (folders["nih"],),
                         "kids": (folders["kids"], *kids[40:80])}.items():  # 40 more children as plain JPEG files
        out[name] = root / f"out_{name}"
        run_predict(PredictConfig(inputs=inputs, out_dir=out[name], workers=0), model=model)
    splits = Path(__file__).resolve().parents[2] / "models" / "cxr-classifier" / "splits" / "splits.csv"
    with open(splits, newline="") as fh:
        kval = [shared_data / r["path"] for r in csv.DictReader(fh) if r["source"] == "kermany224" and r["split"] == "val"]
    out["kval"] = root / "out_kval"
    run_predict(PredictConfig(inputs=tuple(kval), out_dir=out["kval"], workers=0), model=model)
    return out


def _levels(report: object) -> dict[str, str]:
    return {s.label: s.level for s in report.slices}  # type: ignore[attr-defined]


def test_a_real_shift_is_flagged_where_it_is(runs: dict[str, Path], tmp_path: Path) -> None:
    report = run_monitor(MonitorConfig(results=(runs["nih"], runs["kids"]), reference=(str(runs["reference"]),),
                                       json_out=tmp_path / "m.json", html_out=tmp_path / "m.html"))
    levels = _levels(report)
    overall = report.slices[0]
    assert overall.rows == 160 and overall.level == "alert"
    assert overall.metric("score:pneumonia").level == "alert"  # type: ignore[union-attr]
    assert overall.metric("age_band").level == "alert"  # type: ignore[union-attr]  # children among adults
    # over time: the month the children came in, and the JPEG files without a study date
    assert levels["month=2024-03"] == "alert" and levels["month=unknown"] == "alert"
    assert levels["month=2024-01"] != "alert" and levels["month=2024-02"] != "alert"
    # by subgroup: the children's vendor, device and hospital, and the PNG/JPEG source; not the adults' vendor
    assert levels["manufacturer=VendorB"] == "alert" and levels["manufacturer=VendorA"] != "alert"
    assert levels["device_model=DR-B"] == "alert" and levels["institution=Children's hospital"] == "alert"
    assert levels["input_kind=raster"] == "alert"
    assert levels["age_band=1-5"] == "alert" and levels["sex=M"] != "alert"
    assert (tmp_path / "m.json").is_file() and "data:image/png;base64," in (tmp_path / "m.html").read_text()


def test_no_shift_between_two_random_halves_of_the_same_images(runs: dict[str, Path]) -> None:
    report = run_monitor(MonitorConfig(results=(runs["nih"],), reference=(str(runs["reference"]),)))
    assert report.alerts == [], [(s.label, m.name, m.psi, m.p_value) for s, m in report.alerts]
    judged = [m for s in report.slices for m in s.metrics if m.level in ("alert", "warn", "ok")]
    assert len(judged) >= 30  # all, two months, the adults' sex and view groups: 11 labels and the category metrics each


def test_the_manifest_reference_is_what_predict_gives_on_the_validation_images(runs: dict[str, Path]) -> None:
    same = run_monitor(MonitorConfig(results=(runs["kval"],), population="pediatric"))
    assert same.alerts == []
    ks = [m.ks for m in same.slices[0].metrics if m.is_score]
    # the 494 reference images themselves: the reference was computed from 16-bit float inputs in training, predict
    # reads the files, so the two differ a little (KS D 0.022 for 'abnormal', < 0.01 for the others)
    assert len(ks) == 11 and max(k for k in ks if k is not None) < 0.03
    other = run_monitor(MonitorConfig(results=(runs["kval"],), population="adult"))
    flagged = {m.name for s, m in other.alerts}
    assert {"score:pneumonia", "score:abnormal"} <= flagged  # children against the adult validation population


def test_each_triage_population_is_compared_with_its_own_validation_split(runs: dict[str, Path]) -> None:
    # adult NIH films and children (DICOM age 3) against the adult validation population: the children flag as a
    # whole, but the children's population slice is compared with the pediatric validation split and holds
    report = run_monitor(MonitorConfig(results=(runs["nih"], runs["kids"]), population="adult"))
    by = {s.label: s for s in report.slices}
    assert report.slices[0].metric("score:pneumonia").level == "alert"  # type: ignore[union-attr]
    kids = by["population=pediatric"]
    assert kids.scored >= 40 and "pediatric population" in kids.against
    assert kids.metric("score:pneumonia").level not in ("alert", "warn")  # type: ignore[union-attr]
    assert "adult population" in by["population=adult"].against
