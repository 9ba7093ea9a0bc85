"""`run_explain` called directly: stems, explain.csv (columns, formatting, atomic write), failures and config checks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from factories import edit_manifest, make_study_classifier, make_tiny_classifier, write_dicom, write_textured_png

import cxrtriage.explain.batch as batch_module
from cxrtriage.errors import ConfigError, InputError
from cxrtriage.explain.base import Heatmap
from cxrtriage.explain.batch import (
    CSV_FIELDS,
    CSV_NAME,
    ExplainConfig,
    ExplainedFile,
    ExplainRow,
    Faithfulness,
    faithfulness_means,
    run_explain,
    write_explain_csv,
)

# explain.csv columns, in the order users' scripts read them; changing them is a breaking change.
EXPECTED_COLUMNS = (
    "path", "label", "method", "status", "reason", "score", "threshold", "operating_point", "flagged",
    "png", "npy", "outside_lungs", "shortcut", "deletion_auc", "insertion_auc", "deletion_auc_reversed", "insertion_auc_reversed",
    "deletion_auc_random", "insertion_auc_random", "model_name", "model_version", "model_sha256", "model_integrity",
    "population", "decides",
)


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_tiny_classifier(tmp_path / "models" / "tiny", size=32).parent


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_same_names_get_unique_stems_and_the_csv_matches_the_rows(tmp_path: Path, model: Path) -> None:
    write_textured_png(tmp_path / "in" / "a" / "scan.png", 40, 50, 1)
    write_textured_png(tmp_path / "in" / "b" / "scan.png", 50, 40, 2)
    (tmp_path / "in" / "b" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a PNG")
    seen: list[ExplainedFile] = []
    summary = run_explain(ExplainConfig(inputs=(tmp_path / "in",), out=tmp_path / "out", model=model,
                                        labels=("Pneumonia",), methods=("gradcam", "eigencam", "GradCAM")),
                          on_file=seen.append)
    assert [(f.path.name, f.stem) for f in seen] == [("scan.png", "scan"), ("scan.png", "scan_2"),
                                                     ("zz_broken.png", "zz_broken")]
    assert summary.methods == ("gradcam", "eigencam") and summary.n_files == 3 and summary.n_failed == 1
    assert not summary.all_failed and summary.notes == ()
    assert seen[2].warning.startswith(f"{tmp_path / 'in' / 'b' / 'zz_broken.png'}: ") and seen[2].warning in summary.file_warnings
    assert [r.status for r in seen[2].rows] == ["failed"] and seen[2].rows[0].model_name == ""
    maps = [r for r in summary.rows if r.status == "map"]
    assert {r.png for r in maps} <= {f"scan{s}__pneumonia__{m}.png" for s in ("", "_2") for m in ("gradcam", "eigencam")}
    for r in maps:
        assert (tmp_path / "out" / r.png).is_file() and (tmp_path / "out" / r.npy).is_file()
        assert r.label == "pneumonia" and r.threshold == 0.5 and r.flagged == (r.score is not None and r.score >= 0.5)
    header, rows = _csv(summary.csv_path)
    assert summary.csv_path == tmp_path / "out" / CSV_NAME
    assert tuple(header) == CSV_FIELDS == EXPECTED_COLUMNS
    assert rows == [r.csv_row() for r in summary.rows]
    assert not list((tmp_path / "out").glob("*.partial"))


def test_nothing_flagged_all_failed_and_no_files(tmp_path: Path, model: Path) -> None:
    manifest = json.loads((model / "manifest.json").read_text())
    for t in manifest["thresholds"].values():
        t["balanced"]["threshold"] = 1.0  # no score reaches it
    edit_manifest(model / "manifest.json", manifest)
    write_textured_png(tmp_path / "in" / "ok.png", 40, 40, 3)
    summary = run_explain(ExplainConfig(inputs=(tmp_path / "in",), out=tmp_path / "out", model=model, flagged=True))
    (row,) = summary.rows
    assert (row.status, row.reason, row.model_name) == ("nothing_flagged", "no finding reached its balanced threshold",
                                                        "tiny-classifier")
    (tmp_path / "in" / "ok.png").write_bytes(b"nope")
    summary = run_explain(ExplainConfig(inputs=(tmp_path / "in",), out=tmp_path / "out", model=model, flagged=True))
    assert summary.all_failed and summary.n_maps == 0 and (tmp_path / "out" / CSV_NAME).is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no files found under"):
        run_explain(ExplainConfig(inputs=(tmp_path / "empty",), out=tmp_path / "out", model=model, flagged=True))


def test_csv_row_formatting() -> None:
    f = Faithfulness(0.1, 0.2, 0.3, 0.4, 0.5, 0.123456)
    row = ExplainRow(path="/x.png", status="map", label="effusion", method="gradcam", score=0.71234, threshold=0.5,
                     operating_point="balanced", flagged=True, png="x.png", npy="x.npy", faithfulness=f, model_name="m")
    out = row.csv_row()
    assert list(out) == list(CSV_FIELDS)
    assert (out["score"], out["threshold"], out["flagged"], out["insertion_auc_random"]) == ("0.7123", "0.5000", "true",
                                                                                             "0.1235")
    blank = ExplainRow(path="/y.png", status="failed", reason="unreadable").csv_row()
    assert blank["flagged"] == blank["score"] == blank["deletion_auc"] == blank["model_sha256"] == ""


def test_faithfulness_means_per_method() -> None:
    def row(method: str, d: float | None) -> ExplainRow:
        f = None if d is None else Faithfulness(d, 1 - d, 0.5, 0.5, 0.4, 0.6)
        return ExplainRow(path="p", status="map" if f else "no_map", method=method, faithfulness=f)

    means = faithfulness_means([row("gradcam", 0.2), row("gradcam", 0.4), row("gradcam", None), row("eigencam", 0.1)])
    assert means["gradcam"][0] == 2 and means["gradcam"][1].deletion_auc == pytest.approx(0.3)
    assert means["gradcam"][1].insertion_auc == pytest.approx(0.7) and means["eigencam"][0] == 1


def test_explain_csv_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / CSV_NAME
    path.write_text("previous run\n")

    class Boom:
        def csv_row(self) -> dict[str, str]:
            raise RuntimeError("disk vanished")

    with pytest.raises(RuntimeError):
        write_explain_csv(path, [ExplainRow(path="a", status="map"), Boom()])  # type: ignore[list-item]
    assert path.read_text() == "previous run\n" and sorted(p.name for p in tmp_path.iterdir()) == [CSV_NAME]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, "either --label"),
    ({"labels": ("a",), "flagged": True}, "either --label"),
    ({"flagged": True, "operating_point": "strict"}, "'balanced' or 'rule_out', got 'strict'"),
    ({"flagged": True, "methods": ()}, "at least one --method"),
    ({"flagged": True, "steps": 1}, "--steps must be at least 2"),
])
def test_config_is_checked_when_built(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExplainConfig(inputs=(tmp_path,), out=tmp_path / "out", **kwargs)  # type: ignore[arg-type]


def test_method_options_keep_only_what_is_set(tmp_path: Path) -> None:
    config = ExplainConfig(inputs=(tmp_path,), out=tmp_path, flagged=True, occlusion_patch=8)
    assert config.method_options == {"occlusion": {"patch": 8}}
    assert ExplainConfig(inputs=(tmp_path,), out=tmp_path, flagged=True).method_options == {}


def test_explain_applies_the_selection_rules_and_the_population_as_predict_does(tmp_path: Path) -> None:
    """A lateral view and a text file are excluded (no map), and on a 40-year-old the map of nodule (validated for no
    population) says "reported only" where effusion's (validated for adults) is flagged."""
    manifest = make_study_classifier(tmp_path / "model")
    data = json.loads(manifest.read_text())
    for t in data["thresholds"].values():
        t["balanced"]["threshold"] = 0.0
    edit_manifest(manifest, data)
    yy, xx = np.mgrid[0:64, 0:60]
    pixels = (((yy - 32) ** 2 + (xx - 20) ** 2) < 200).astype(np.uint16) * 3000 + 200
    write_dicom(tmp_path / "in" / "pa.dcm", rows=64, cols=60, PatientAge="040Y", pixels=pixels)
    write_dicom(tmp_path / "in" / "lat.dcm", rows=64, cols=60, PatientAge="040Y", pixels=pixels, view="LL")
    (tmp_path / "in" / "notes.txt").write_text("not an image\n")
    drawn: dict[str, tuple[str, ...]] = {}
    original = batch_module.save_heatmap

    def spy(png: Path, image: object, h: Heatmap, *args: object, **kwargs: object) -> tuple[Path, Path | None]:
        drawn[h.label] = h.notes
        return original(png, image, h, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_module, "save_heatmap", spy)
        summary = run_explain(ExplainConfig(inputs=(tmp_path / "in",), out=tmp_path / "out", model=manifest,
                                            labels=("nodule", "effusion")))
    by_file: dict[str, list[ExplainRow]] = {}
    for r in summary.rows:
        by_file.setdefault(Path(r.path).name, []).append(r)
    (lat,) = by_file["lat.dcm"]
    assert lat.status == "excluded" and "lateral view" in lat.reason and not lat.png
    (txt,) = by_file["notes.txt"]
    assert txt.status == "excluded" and "not an image" in txt.reason
    assert summary.n_failed == 0 and summary.file_warnings == ()
    rows = {r.label: r for r in by_file["pa.dcm"]}
    assert {r.population for r in rows.values()} == {"adult"}
    assert (rows["nodule"].decides, rows["effusion"].decides) == (False, True)
    assert any(n.startswith("reported only: not validated for the adult population") for n in drawn["nodule"])
    assert not any(n.startswith("reported only") for n in drawn["effusion"])
    header, csv_rows = _csv(summary.csv_path)
    nodule = next(r for r in csv_rows if r["label"] == "nodule")
    assert (nodule["population"], nodule["decides"]) == ("adult", "false")

    # --population says whose findings decide where no age is told; an explicit rules file can take laterals in
    (tmp_path / "rules.toml").write_text('views = ["PA", "AP", "LL"]\n')
    summary = run_explain(ExplainConfig(inputs=(tmp_path / "in" / "lat.dcm",), out=tmp_path / "out2", model=manifest,
                                        labels=("nodule",), rules=tmp_path / "rules.toml"))
    assert [r.status for r in summary.rows] in (["map"], ["no_map"])
