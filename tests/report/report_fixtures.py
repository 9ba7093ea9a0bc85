"""Build a results directory like `cxrtriage predict --out` writes, from tiny real files made in code.

The overlay PNGs and lung masks are derived from each image with OpenCV (test inputs standing in for the
explain and segment steps); the scores are test inputs to the report, not model outputs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
from factories import edit_manifest, make_tiny_classifier, require_tool, write_dicom

from cxrtriage.model.manifest import load_manifest
from cxrtriage.results import (
    PRIORITY_LEVELS,
    ImageRecord,
    ModelRef,
    Priority,
    ResultsWriter,
    RunRecord,
    Status,
    result_columns,
    write_run_json,
)

LABELS = ("pneumothorax", "effusion", "strange_new_finding")
SEGMENTER_SEAL = "5e" * 32  # the segmenter's manifest integrity as run.json records it (no segmenter model here)


def chest_like(rows: int = 120, cols: int = 100, seed: int = 0) -> np.ndarray:
    """A 12-bit picture with two dark 'lungs' in a bright body, plus noise: enough to segment by threshold."""
    rng = np.random.default_rng(seed)
    img = np.full((rows, cols), 2600.0)
    yy, xx = np.mgrid[0:rows, 0:cols]
    for cx in (0.3 * cols, 0.7 * cols):
        inside = ((xx - cx) / (0.16 * cols)) ** 2 + ((yy - 0.5 * rows) / (0.33 * rows)) ** 2 <= 1
        img[inside] = 900.0
    img += rng.normal(0, 40, img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def lung_mask_from(img: np.ndarray) -> np.ndarray:
    """Label map from dark regions not touching the border (Otsu): 1 = the component on the image's left
    (patient's right), 2 = the one on the right; at most the two largest components are kept."""
    grey = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    _, dark = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    k = max(3, img.shape[1] // 60) | 1
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    n, comp, stats, cents = cv2.connectedComponentsWithStats(dark)
    h, w = img.shape
    keep = [i for i in range(1, n) if stats[i, 0] > 0 and stats[i, 1] > 0 and stats[i, 0] + stats[i, 2] < w
            and stats[i, 1] + stats[i, 3] < h]
    keep = sorted(keep, key=lambda i: -stats[i, 4])[:2]
    labels = np.zeros((h, w), np.uint8)
    for i in keep:
        labels[comp == i] = 1 if cents[i][0] < w / 2 else 2
    return labels


def map_from(img: np.ndarray) -> np.ndarray:
    """A smooth map in [0, 1] on the image grid (high where the image is dark), computed at low resolution."""
    grey = cv2.normalize(img.astype(np.float32), None, 0, 1, cv2.NORM_MINMAX)
    h, w = grey.shape
    f = min(1.0, 128 / max(h, w))
    small = cv2.resize(1.0 - grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), sigmaX=max(2.0, small.shape[1] / 12))
    values = cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.normalize(values, None, 0, 1, cv2.NORM_MINMAX).astype(np.float32)


def composite_overlay(img: np.ndarray, values: np.ndarray, label: str) -> np.ndarray:
    """An overlay PNG laid out like the explain step's (BGR): a text band over the image and the image with the
    map, side by side: a picture NOT aligned with the source image."""
    grey = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    left = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap((values * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    right = cv2.addWeighted(left, 0.5, colour, 0.5, 0)
    h, w = grey.shape
    band = np.zeros((max(20, h // 6), 2 * w + 4, 3), np.uint8)
    cv2.putText(band, f"Finding: {label}", (4, band.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, h / 600),
                (255, 255, 255), 1)
    panels = np.hstack([left, np.zeros((h, 4, 3), np.uint8), right])
    return np.vstack([band, panels])


def make_results(
    root: Path,
    *,
    source_image: Path | None = None,
    with_run_json: bool = True,
    patient_name: str = "Doe^Jane",
) -> Path:
    """A results dir with two DICOM studies (one with an excluded lateral), a PNG input and a failed file.

    ``source_image`` replaces the first study's synthetic DICOM by a real one (read by path).
    Returns the results directory.
    """
    out = root / "results"
    (out / "overlays").mkdir(parents=True)
    (out / "masks").mkdir()
    models = root / "models"
    manifest = make_tiny_classifier(models / "tiny", labels=LABELS)
    mdata = json.loads(manifest.read_text())
    mdata["metrics"] = {"auroc": {"pneumothorax": 0.91, "effusion": 0.88}, "n_validation": 123}
    mdata["model_card"] = "MODEL_CARD.md"
    edit_manifest(manifest, mdata)
    (models / "tiny" / "MODEL_CARD.md").write_text("# tiny\n")
    sha = mdata["sha256"]
    seal = load_manifest(manifest).integrity  # recorded with every result, as predict does

    rows: list[ImageRecord] = []
    study_a, study_b = "1.2.826.0.1.3680043.8.498.1001", "1.2.826.0.1.3680043.8.498.2002"
    src = root / "inputs"
    if source_image is None:
        pix = chest_like()
        a1 = write_dicom(src / "a" / "pa.dcm", rows=pix.shape[0], cols=pix.shape[1], pixels=pix, study_uid=study_a,
                         PatientName=patient_name, PatientID="PID-123", PatientBirthDate="19600102", PatientSex="F",
                         StudyDate="20250310", StudyTime="101500", AccessionNumber="ACC-9", StudyDescription="XR CHEST PA",
                         ReferringPhysicianName="", StudyID="1", SeriesNumber=1, InstanceNumber=1,
                         PatientOrientation=["L", "F"], WindowCenter=1800, WindowWidth=3000)
    else:
        import pydicom

        a1 = source_image
        ds = pydicom.dcmread(a1, stop_before_pixels=True)
        study_a = str(ds.StudyInstanceUID)
        pix = pydicom.dcmread(a1).pixel_array
        if str(ds.PhotometricInterpretation) == "MONOCHROME1":
            pix = pix.max() - pix
    a2 = write_dicom(src / "a" / "lat.dcm", rows=40, cols=40, study_uid=study_a, view="LL", PatientName=patient_name,
                     PatientID="PID-123")
    pix_b = chest_like(90, 110, seed=1)
    b1 = write_dicom(src / "b" / "ap.dcm", rows=pix_b.shape[0], cols=pix_b.shape[1], pixels=pix_b, study_uid=study_b,
                     view="AP", PatientName="Müller^Jürgen^^Dr.", PatientID="PID-456", SpecificCharacterSet="ISO_IR 192",
                     PatientSex="M", StudyDate="20250311")
    png_dir = src / "png_case"
    png_dir.mkdir(parents=True)
    png = png_dir / "frontal.png"
    cv2.imwrite(str(png), (chest_like(64, 64, seed=2) // 16).astype(np.uint8))
    broken = src / "broken.dcm"
    broken.write_bytes(b"\x00" * 10)

    def scored(path: Path, study: str, pixels: np.ndarray, tag: str, scores: tuple[float, ...], prio: str, why: str,
               spacing: float | None, *, save_maps: bool = True) -> ImageRecord:
        heatmaps = []
        values = map_from(pixels)
        for label, vals in (("pneumothorax", values), ("effusion", np.ascontiguousarray(values[:, ::-1]))):
            name = f"overlays/{tag}__{label}__gradcam"
            cv2.imwrite(str(out / f"{name}.png"), composite_overlay(pixels, vals, label))
            if save_maps:
                np.save(out / f"{name}.npy", vals)
            heatmaps.append(f"{name}.png")
        mask = lung_mask_from(pixels)
        mp = out / "masks" / f"{tag}.png"
        cv2.imwrite(str(mp), mask)
        area_px = int((mask > 0).sum())
        return ImageRecord(
            path=str(path), status=Status.SCORED, reason="image is slightly rotated" if tag == "a1" else None,
            input_kind="dicom" if path.suffix == ".dcm" else "raster", study_key=study,
            study_instance_uid=study if path.suffix == ".dcm" else None, view="PA", rows=int(pixels.shape[0]),
            columns=int(pixels.shape[1]), pixel_spacing_mm=(spacing, spacing) if spacing else None,
            scores=dict(zip(LABELS, scores, strict=True)), model_name="tiny-classifier", model_version="0.0.1-test",
            model_sha256=sha, model_integrity=seal, priority=Priority(prio), priority_reason=why, site_file="",
            heatmaps=tuple(heatmaps),
            mask_path=f"masks/{tag}.png", lung_area_px=area_px,
            lung_area_mm2=area_px * spacing * spacing if spacing else None,
        )

    rows.append(scored(a1, study_a, pix, "a1", (0.81, 0.12, 0.55), "urgent", "pneumothorax 0.81 >= 0.50", 0.2))
    rows.append(ImageRecord(path=str(a2), status=Status.EXCLUDED, reason="lateral view (ViewPosition LL): not a frontal chest",
                            input_kind="dicom", study_key=study_a, study_instance_uid=study_a, view="LL", heatmaps=()))
    rows.append(scored(b1, study_b, pix_b, "b1", (0.05, 0.3, 0.1), "routine", "no finding above threshold", None,
                       save_maps=False))  # only the overlay PNGs: the SC falls back to the composite picture
    rows.append(scored(png, str(png_dir), chest_like(64, 64, seed=2), "p1", (0.2, 0.7, 0.4), "urgent",
                       "effusion 0.70 >= 0.50", None))
    rows.append(ImageRecord(path=str(broken), status=Status.FAILED, reason="not a readable DICOM or image file (10 bytes)",
                            input_kind="unknown", study_key=str(src), heatmaps=()))
    with ResultsWriter(out, result_columns(LABELS, ["heatmaps", "mask_path", "lung_area_mm2", "lung_area_px"])) as w:
        for r in rows:
            w.write(r)
    (out / "results.csv").unlink()  # the reports read results.jsonl; a test writes its own CSV
    with open(out / "worklist.csv", "w", newline="", encoding="utf-8") as f:  # the triage's columns
        w = csv.writer(f)
        w.writerow(["rank", "priority", "study_key", "study_instance_uid", "priority_reason", "top_finding", "top_score",
                    "n_images", "n_scored", "paths"])
        w.writerow([1, "urgent", study_a, study_a, "pneumothorax 0.81 >= 0.50 [pa.dcm]; 1 of 2 images not assessed",
                    "pneumothorax", 0.81, 2, 1, f"{a1};{a2}"])
        w.writerow([2, "urgent", str(png_dir), "", "effusion 0.70 >= 0.50", "effusion", 0.7, 1, 1, str(png)])
        w.writerow([3, "routine", study_b, study_b, "no finding above threshold", "effusion", 0.3, 1, 1, str(b1)])
        w.writerow([4, "not_assessed", str(src), "", "failed: not a readable DICOM or image file", "", "", 1, 0,
                    str(broken)])
    if with_run_json:
        write_run_json(out, RunRecord(
            tool_version="0.1.0",
            model=ModelRef("tiny-classifier", "0.0.1-test", sha, str(manifest), seal),
            operating_point="balanced",
            policy={"name": "default"},
            priority_levels=tuple(p.value for p in PRIORITY_LEVELS),
            started_at="2025-03-12T10:00:00Z",
            finished_at="2025-03-12T10:00:05Z",
            sections={"segmenter": {"name": "tiny-segmenter", "version": "0.0.1-test", "integrity": SEGMENTER_SEAL,
                                    "labels": ["background", "right_lung", "left_lung"]}},
        ))
    return out




def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for one file."""
    import subprocess

    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]
