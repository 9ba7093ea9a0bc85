"""Tiny inputs built in code: DICOM datasets and one-layer ONNX models with manifests.

These keep most tests in the millisecond range and independent of real weights or data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrtriage.model import Classifier
from cxrtriage.model.manifest import SCHEMA_VERSION, sha256_file, write_sealed_manifest
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def make_cxr_dataset(
    rows: int = 32,
    cols: int = 32,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    modality: str = "CR",
    view: str | None = "PA",
    body_part: str | None = "CHEST",
    pixels: np.ndarray | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **attrs: object,
) -> Dataset:
    """A minimal, valid single-frame CR/DX dataset with file meta, ready for ``save_as``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = DX_STORAGE if modality == "DX" else CR_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "Test^Factory"
    ds.PatientID = "FACTORY-1"
    ds.Modality = modality
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if pixels is None:
        yy, xx = np.mgrid[0:rows, 0:cols]
        pixels = ((yy * cols + xx) % (1 << bits_stored)).astype(np.uint16)
    ds.set_pixel_data(pixels.astype(np.uint16 if bits_stored > 8 else np.uint8), photometric, bits_stored)
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def save_encapsulated(ds: Dataset, frame: bytes, transfer_syntax: str, path: Path) -> Path:
    """``ds`` saved at ``path`` with ``frame`` (a compressed stream made elsewhere: OpenCV, OpenJPH...) as its one
    fragment of encapsulated pixel data, under ``transfer_syntax``."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom(path: Path, **kwargs: object) -> Path:
    ds = make_cxr_dataset(**kwargs)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_manifest(folder: Path, onnx_name: str, data: dict[str, object]) -> Path:
    data = {"schema_version": SCHEMA_VERSION, "onnx_file": onnx_name,
            "sha256": sha256_file(folder / onnx_name), **data}
    return write_sealed_manifest(folder / "manifest.json", data)


def edit_manifest(path: Path, data: dict[str, object], *, seal: bool = True) -> Path:
    """Write ``data`` as the manifest ``path``: re-sealed, as its owner would (``models seal``), unless ``seal`` is
    False (a tampering: the old integrity stays and no longer matches)."""
    if seal:
        return write_sealed_manifest(path, data)
    path.write_text(json.dumps(data, indent=2))
    return path


def make_tiny_classifier(
    folder: Path,
    *,
    labels: tuple[str, ...] = ("abnormal", "pneumonia", "effusion"),
    size: int = 16,
    channels: int = 4,
    seed: int = 0,
    name: str = "tiny-classifier",
) -> Path:
    """One conv + ReLU (the exported feature map) → GAP → Gemm head. Returns the manifest path.

    The head is exactly the GAP + linear form that makes analytic Grad-CAM exact.
    """
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, (channels, 1, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (channels,)).astype(np.float32)
    head_w = rng.normal(0, 1.0, (len(labels), channels)).astype(np.float32)
    head_b = rng.normal(0, 0.1, (len(labels),)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["pre"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["pre"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(labels)]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels, size, size]),
        ],
        [numpy_helper.from_array(a, n) for a, n in
         ((conv_w, "conv.weight"), (conv_b, "conv.bias"), (head_w, "head.weight"), (head_b, "head.bias"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return _write_manifest(folder, "model.onnx", {
        "name": name,
        "version": "0.0.1-test",
        "task": "classification",
        "input": {"name": "image", "shape": [None, 1, size, size]},
        "labels": list(labels),
        "outputs": {"logits": "logits", "features": "features"},
        "head": {"pooling": "gap", "weight": "head.weight", "bias": "head.bias"},
        "preprocessing": {"size": size, "geometry": "letterbox", "voi": "ignore", "intensity": "percentile"},
        "thresholds": {lab: {"rule_out": {"threshold": 0.2, "sensitivity": 0.95, "specificity": 0.5},
                             "balanced": {"threshold": 0.5, "sensitivity": 0.8, "specificity": 0.8}}
                       for lab in labels},
        "calibration": {"method": "platt", "a": dict.fromkeys(labels, 1.0), "b": dict.fromkeys(labels, 0.0)},
        "intended_use": "unit tests only",
        "training_data": "none (random weights)",
    })


def make_tiny_segmenter(folder: Path, *, size: int = 16, seed: int = 0) -> Path:
    """A 1x1 conv producing 3-class logits (background, right_lung, left_lung). Returns the manifest path."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.0, (3, 1, 1, 1)).astype(np.float32)
    b = np.array([0.5, 0.0, -0.5], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["masks"])],
        "tiny_segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["N", 3, size, size])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return _write_manifest(folder, "model.onnx", {
        "name": "tiny-segmenter",
        "version": "0.0.1-test",
        "task": "segmentation",
        "input": {"name": "image", "shape": [None, 1, size, size]},
        "labels": ["background", "right_lung", "left_lung"],
        "outputs": {"masks": "masks"},
        "preprocessing": {"size": size, "geometry": "letterbox", "voi": "ignore", "intensity": "percentile"},
        "intended_use": "unit tests only",
        "training_data": "none (random weights)",
    })


def read_jsonl(path: Path) -> list[dict[str, object]]:
    """The rows of a results.jsonl exactly as written (tests of the file format read it raw)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_textured_png(path: Path, h: int, w: int, seed: int) -> Path:
    """An 8-bit grey PNG with smooth texture and noise (a stand-in radiograph for the explain tests)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 120 + 80 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + rng.normal(0, 10, (h, w))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
    return path


STUDY_LABELS = ("abnormal", "pneumonia", "effusion", "nodule", "no_finding")


def make_study_classifier(
    folder: Path,
    *,
    labels: tuple[str, ...] = STUDY_LABELS,
    validated: dict[str, tuple[str, ...]] | None = None,
    urgent: dict[str, float] | None = None,
    normal: dict[str, float] | None = None,
) -> Path:
    """A tiny classifier whose manifest has populations (child 1-5 years, adult 18+), per-population label validation
    and study-level thresholds, as the training recipe writes them. Returns the manifest path.

    Default validation: ``abnormal`` and ``pneumonia`` for both populations, ``effusion`` for adults only, ``nodule``
    for none (``no_finding`` is ignored by the default policy). Thresholds differ per population and tier, so that a
    wrong lookup cannot pass by accident.
    """
    path = make_tiny_classifier(folder, labels=labels, name="tiny-study-classifier")
    data = json.loads(path.read_text())
    validated = validated if validated is not None else {
        "abnormal": ("child", "adult"), "pneumonia": ("child", "adult"), "effusion": ("adult",)}
    data["populations"] = {"child": {"age_years": [1, 6], "description": "children 1-5"},
                           "adult": {"age_years": [18, None], "description": "adults"}}
    data["label_validation"] = {"labels": {lab: {pop: {"validated": pop in validated.get(lab, ()), "auroc": 0.7,
                                                       "ci95": [0.6, 0.8] if pop in validated.get(lab, ()) else [0.4, 0.8],
                                                       "n_pos": 10, "n_neg": 10} for pop in ("child", "adult")}
                                           for lab in labels}}
    data["study_operating_points"] = {"score": "max", "fitted_on": "test fixture", "tiers": {
        "urgent": {"labels": [lab for lab in ("pneumonia", "effusion") if lab in labels],
                   "thresholds": urgent or {"child": 0.6, "adult": 0.4},
                   "test": {"adult": {"n_pos": 5, "n_neg": 5, "sensitivity": 0.8, "sensitivity_ci95": [0.4, 0.96],
                                      "specificity": 0.6, "specificity_ci95": [0.2, 0.9]}}},
        "normal": {"labels": [lab for lab in labels if lab != "no_finding"],
                   "thresholds": normal or {"child": 0.8, "adult": 0.5}},
    }}
    return write_sealed_manifest(path, data)


def make_estimating_classifier(folder: Path, *, weights: tuple[float, ...] = (1.0, -1.0, 0.5, 0.0), bias: float = 0.0,
                               threshold: float = 0.5) -> Path:
    """``make_study_classifier`` with a population estimate from the image, as `cxrtriage train population-estimate`
    writes it: P(child) = sigmoid(mean-pooled ``features`` @ ``weights`` + ``bias``), child at or above ``threshold``.
    Returns the manifest path."""
    path = make_study_classifier(folder)
    data = json.loads(path.read_text())
    data["population_estimate"] = {"estimates": "child", "versus": "adult", "features_output": "features",
                                   "pooling": "global_average", "weights": list(weights), "bias": bias,
                                   "threshold": threshold, "fitted_on": "test fixture"}
    return write_sealed_manifest(path, data)


def link_files(paths: list[Path], folder: Path) -> Path:
    """``folder`` holding a symbolic link to each of ``paths`` (real images read by path, never copied)."""
    folder.mkdir(parents=True)
    for p in paths:
        os.symlink(p, folder / p.name)
    return folder


def predict_rows(model: Classifier, folder: Path, out: Path, **options: object) -> dict[str, dict[str, object]]:
    """``predict`` on ``folder`` in this process (``workers=0``); its results rows by file name."""
    run_predict(PredictConfig(inputs=(folder,), out_dir=out, workers=0, **options), model=model)  # type: ignore[arg-type]
    return {Path(str(r["path"])).name: r for r in read_jsonl(out / "results.jsonl")}


def block_means(a: np.ndarray, scale: int) -> np.ndarray:
    """The reference for reduced images: each pixel the mean of the ``scale`` x ``scale`` block of ``a`` it covers
    (fewer pixels at the bottom and right edges), in float64."""
    r, c = np.arange(0, a.shape[0], scale), np.arange(0, a.shape[1], scale)
    sums = np.add.reduceat(np.add.reduceat(a.astype(np.float64), r, axis=0), c, axis=1)
    return sums / np.outer(np.diff(np.append(r, a.shape[0])), np.diff(np.append(c, a.shape[1])))


def require_tool(name: str) -> str:
    """Path of an external validator; skips the test when absent, fails under CXRTRIAGE_REQUIRE_DATA=1."""
    import os
    import shutil

    import pytest

    found = shutil.which(name)
    if found:
        return found
    msg = f"{name} is not installed (Debian: dicom3tools / chromium / poppler-utils; scripts/dev-setup.sh installs them)"
    if os.environ.get("CXRTRIAGE_REQUIRE_DATA", "") == "1":
        pytest.fail(msg + " and CXRTRIAGE_REQUIRE_DATA=1 is set")
    pytest.skip(msg)
