"""The segment pipeline: files → decode workers → lung segmenter → mask PNGs + lung areas in segment.csv."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrtriage.errors import ConfigError, CxrTriageError, InputError, OutputError
from cxrtriage.measure.lungs import LungArea, lung_area
from cxrtriage.model import LungMask, Segmenter, load_segmenter
from cxrtriage.pipeline import (
    ProgressCounter,
    ProgressUpdate,
    auto_workers,
    discover_paths,
    in_flight_window,
    selection_rules,
    unique_stem,
    write_in_batches,
)
from cxrtriage.pipeline_decode import EXCLUDED, FAILED, OK, Decoded, DecodeTask, decode_stream, prestart
from cxrtriage.preprocess import ModelInput
from cxrtriage.report.results import ResultsWriter
from cxrtriage.types import InputKind, SourceRef

log = logging.getLogger(__name__)

SEGMENT_CSV = "segment.csv"
MASKS_DIR = "masks"


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """Every option of a segment run (``cxrtriage segment`` maps its options 1:1 onto these)."""

    inputs: tuple[Path, ...]
    out_dir: Path
    model: str | None = None  # None = the default lung segmenter
    batch_size: int = 8
    device: str = "auto"
    strict_device: bool = False
    workers: int | None = None
    intra_op_threads: int | None = None
    fail_on_error: bool = False
    rules: Path | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("no INPUT given; pass one or more files or folders")
        if not 1 <= self.batch_size <= 1024:
            raise ConfigError(f"--batch-size must be within 1..1024, got {self.batch_size}")
        if self.workers is not None and not 0 <= self.workers <= 64:
            raise ConfigError(f"--workers must be within 0..64, got {self.workers}")


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    total: int
    scored: int
    excluded: int
    failed: int
    seconds: float
    segment_csv: Path
    masks_dir: Path
    model_name: str
    model_version: str
    device: str

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def segment_columns(labels: Sequence[str]) -> list[str]:
    """Header of segment.csv: per-label pixel and mm² columns for each non-background label."""
    per_label = [c for lab in labels[1:] for c in (f"{lab}_px", f"{lab}_mm2")]
    return ["path", "status", "reason", "input_kind", "study_key", "sop_instance_uid", "rows", "columns",
            "pixel_spacing_mm", "mask_path", "lung_area_px", "lung_area_mm2", *per_label,
            "model_name", "model_version", "model_sha256"]


def write_mask_png(path: Path, labels: np.ndarray) -> None:
    """Write a uint8 label map as a PNG, atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".partial.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(tmp), labels):
            raise OSError("OpenCV could not write the PNG")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write the mask ({exc}); check the --out folder") from exc


def _row(d: Decoded, model: Segmenter) -> dict[str, Any]:
    m = model.manifest
    row: dict[str, Any] = {"path": d.path, "status": {OK: "scored", EXCLUDED: "excluded", FAILED: "failed"}[d.status],
                           "reason": d.reason or None, "model_name": m.name, "model_version": m.version,
                           "model_sha256": m.sha256}
    for k in ("input_kind", "study_key", "sop_instance_uid", "rows", "columns", "pixel_spacing_mm"):
        row[k] = d.meta.get(k)
    return row


def segment_inputs(
    model: Segmenter,
    inputs: Sequence[ModelInput],
    sources: Sequence[SourceRef],
    spacings: Sequence[tuple[float, float] | None],
) -> list[LungMask]:
    """Run the segmenter on preprocessed ``inputs`` (one batch) and map each mask back to its original grid."""
    logits = model.run(np.stack([mi.array for mi in inputs]))
    return [model.to_mask(logits[i], mi.geometry, source=src, pixel_spacing_mm=sp)
            for i, (mi, src, sp) in enumerate(zip(inputs, sources, spacings, strict=True))]


def save_mask(mask: LungMask, out_dir: Path, stem: str) -> tuple[dict[str, Any], LungArea]:
    """Write ``out_dir/masks/<stem>.png`` and return the row columns (``mask_path`` relative to ``out_dir``,
    ``lung_area_px``, ``lung_area_mm2``) and the area per label."""
    rel = Path(MASKS_DIR) / f"{stem}.png"
    write_mask_png(out_dir / rel, mask.labels)
    area = lung_area(mask)
    return {"mask_path": rel.as_posix(), "lung_area_px": area.total_px, "lung_area_mm2": area.total_mm2}, area


def _spacing(meta: dict[str, Any]) -> tuple[float, float] | None:
    spacing = meta.get("pixel_spacing_mm")
    return (float(spacing[0]), float(spacing[1])) if spacing else None


def _segment_batch(
    items: list[Decoded], model: Segmenter, out_dir: Path, stems: tuple[dict[str, str], set[str]]
) -> list[dict[str, Any]]:
    rows = [_row(d, model) for d in items]
    inputs = [d.model_input for d in items if d.model_input is not None]
    try:
        masks = segment_inputs(
            model, inputs, [SourceRef(d.path, InputKind(d.meta.get("input_kind") or "unknown")) for d in items],
            [_spacing(d.meta) for d in items])
    except CxrTriageError as exc:
        for row in rows:
            row.update(status="failed", reason=f"inference failed: {exc}")
        return rows
    for d, row, mask in zip(items, rows, masks, strict=True):
        cols, area = save_mask(mask, out_dir, unique_stem(d.path, *stems))
        row.update(cols)
        for lab, px in area.per_label_px.items():
            row[f"{lab}_px"] = px
            row[f"{lab}_mm2"] = None if area.per_label_mm2 is None else area.per_label_mm2[lab]
    return rows


def run_segment(
    config: SegmentConfig,
    *,
    model: Segmenter | None = None,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
) -> SegmentSummary:
    """Segment the lungs of every input file: ``DIR/masks/<stem>.png`` and ``DIR/segment.csv``."""
    t0 = time.perf_counter()
    missing = [str(p) for p in config.inputs if not Path(p).exists()]
    if missing:  # checked before anything is written (discover would raise the same later)
        raise InputError(f"input not found: {', '.join(missing)}; check the path(s)")
    workers = auto_workers() if config.workers is None else config.workers
    prestart(workers)
    if model is None:
        model = load_segmenter(config.model, device=config.device, strict_device=config.strict_device,
                               intra_op_threads=config.intra_op_threads, spinning=workers == 0)
    rules = selection_rules(config.rules)
    out_dir = Path(config.out_dir)
    writer = ResultsWriter(out_dir, segment_columns(model.labels), csv_name=SEGMENT_CSV, jsonl_name=None)
    recipe = model.manifest.preprocessing
    tasks = (DecodeTask(i, p, recipe, rules) for i, p in enumerate(discover_paths(config.inputs)))
    counter = ProgressCounter(on_progress)
    stems: tuple[dict[str, str], set[str]] = ({}, set())
    write_in_batches(
        decode_stream(tasks, workers=workers, window=in_flight_window(config.batch_size, workers, False)),
        writer, counter, batch_size=config.batch_size,
        process=lambda ok: _segment_batch(ok, model, out_dir, stems),
        unreadable=lambda d: _row(d, model),
        inputs=config.inputs,
    )
    c = counter.counts
    return SegmentSummary(
        total=writer.rows_written, scored=c["scored"], excluded=c["excluded"], failed=c["failed"],
        seconds=time.perf_counter() - t0, segment_csv=writer.csv_path, masks_dir=out_dir / MASKS_DIR,
        model_name=model.manifest.name, model_version=model.manifest.version, device=model.session.device.value,
    )
