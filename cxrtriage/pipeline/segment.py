"""``run_segment``: files → decode workers → lung segmenter → mask PNGs + lung areas in ``segment.csv``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxrtriage.errors import CxrTriageError
from cxrtriage.files import StemRegistry
from cxrtriage.model import Segmenter, load_segmenter
from cxrtriage.outdir import lock_output
from cxrtriage.pipeline.artefacts import MASKS_DIR, save_mask
from cxrtriage.pipeline.config import SegmentConfig, auto_workers, in_flight_window
from cxrtriage.pipeline.decode import Decoded, DecodeTask, decode_stream
from cxrtriage.pipeline.engine import (
    ProgressCounter,
    ProgressUpdate,
    check_inputs,
    discover_paths,
    selection_rules,
    with_model,
    write_in_batches,
)
from cxrtriage.pipeline.startup import prestart
from cxrtriage.results import ImageRecord, ResultsWriter, Status, segment_columns
from cxrtriage.types import InputKind, SourceRef

SEGMENT_CSV = "segment.csv"


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
    failures: tuple[tuple[str, str], ...] = ()  # (path, reason) of the first failed inputs (`ProgressCounter`)

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def _segment_batch(items: list[Decoded], model: Segmenter, out_dir: Path, stems: StemRegistry) -> list[ImageRecord]:
    records = [with_model(d.record, model.manifest) for d in items]
    inputs = [d.model_input for d in items if d.model_input is not None]
    try:
        masks = model.segment_inputs(inputs, [SourceRef(r.path, InputKind(r.input_kind or "unknown")) for r in records],
                                     [r.pixel_spacing_mm for r in records])
    except CxrTriageError as exc:
        return [r.replace(status=Status.FAILED, reason=f"inference failed: {exc}") for r in records]
    return [save_mask(r, mask, out_dir, stems.stem_for(r.path)) for r, mask in zip(records, masks, strict=True)]


def run_segment(
    config: SegmentConfig,
    *,
    model: Segmenter | None = None,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
) -> SegmentSummary:
    """Segment the lungs of every input file: ``DIR/masks/<stem>.png`` and ``DIR/segment.csv``.

    The output folder is locked for the whole run (``cxrtriage.outdir``): a second run into it is refused.
    """
    check_inputs(config.inputs, config.out_dir)  # before anything is written, the lock file included
    with lock_output(config.out_dir, "segment"):
        return _run_segment(config, model=model, on_progress=on_progress)


def _run_segment(
    config: SegmentConfig,
    *,
    model: Segmenter | None,
    on_progress: Callable[[ProgressUpdate], None] | None,
) -> SegmentSummary:
    t0 = time.perf_counter()
    workers = auto_workers() if config.workers is None else config.workers
    prestart(workers)
    if model is None:
        model = load_segmenter(config.model, device=config.device, strict_device=config.strict_device,
                               intra_op_threads=config.intra_op_threads, spinning=workers == 0)
    rules = selection_rules(config.rules)
    out_dir = Path(config.out_dir)
    writer = ResultsWriter(out_dir, segment_columns(model.labels), csv_name=SEGMENT_CSV, jsonl_name=None)
    recipe = model.manifest.preprocessing
    tasks = (DecodeTask(i, p, recipe, rules) for i, p in enumerate(discover_paths(config.inputs, config.out_dir)))
    counter = ProgressCounter(on_progress)
    stems = StemRegistry()
    write_in_batches(
        decode_stream(tasks, workers=workers, window=in_flight_window(config.batch_size, workers, False)),
        writer, counter, batch_size=config.batch_size,
        process=lambda ok: _segment_batch(ok, model, out_dir, stems),
        unreadable=lambda d: with_model(d.record, model.manifest),
        inputs=config.inputs,
    )
    c = counter.counts
    return SegmentSummary(
        total=writer.rows_written, scored=c[Status.SCORED], excluded=c[Status.EXCLUDED], failed=c[Status.FAILED],
        seconds=time.perf_counter() - t0, segment_csv=writer.csv_path, masks_dir=out_dir / MASKS_DIR,
        model_name=model.manifest.name, model_version=model.manifest.version, device=model.session.device.value,
        failures=tuple(counter.failures),
    )
