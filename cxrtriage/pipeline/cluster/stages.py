"""The Ray Data stages of ``predict --ray``: decoding + preprocessing as CPU tasks, scoring in an actor pool.

Both stages run the local pipeline's own functions, so that a Ray run and a local run give the same rows:

- ``decode_block`` (one Ray task per block of files) runs ``pipeline.decode.examine`` on each file: probe, select,
  read, preprocess, image quality checks. A problem of one file becomes that file's ``failed``/``excluded`` record
  there; nothing a file does raises out of the task. The ``Decoded`` items travel pickled to the next stage.
- ``ScoreBatches`` (an actor: the ONNX session is created once per actor) runs ``predict._score_batch`` (the model
  and every hook of the run: site calibration, quality, triage) on the readable items of each batch and
  ``predict._unscored`` on the others, and returns the rows as a shard table (``shards.shard_table``).
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import pyarrow as pa
import ray

from cxrtriage.io import SelectionRules
from cxrtriage.measure.quality import OK as QUALITY_OK
from cxrtriage.measure.quality import assess_quality
from cxrtriage.pipeline.cluster.shards import INDEX_COLUMN, shard_schema, shard_table
from cxrtriage.pipeline.cluster.shipping import Blob, ModelPackage, unpack, unpack_model
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.decode import Decoded, DecodeTask, examine, unreturned
from cxrtriage.pipeline.engine import with_model
from cxrtriage.pipeline.hooks.base import PredictHook, RunContext
from cxrtriage.pipeline.predict import _score_batch, _unscored
from cxrtriage.preprocess import PixelNeeds, PreprocessRecipe
from cxrtriage.results import ImageRecord, encode_record

PATH_COLUMN = "path"  # input file names as bytes (os.fsencode): Arrow text must be UTF-8, file names need not be
DECODED_COLUMN = "decoded"
SCORED_ON_COLUMN = "scored_on"  # JSON: the device, providers and node that scored a row; the driver drops it


@dataclass(frozen=True, slots=True)
class DecodeSpec:
    """What the decode tasks need: the model's preprocessing recipe, the run's selection rules, how far an image
    may be reduced while it is decoded and the hooks' further model inputs (``predict.pixel_needs`` and the hooks'
    ``recipes``, as for a local run), and the per-file function (``examine``; as ``decode_stream``'s ``fn``, a
    module-level function the workers can import)."""

    recipe: PreprocessRecipe
    rules: SelectionRules
    needs: PixelNeeds | None = None
    extra_recipes: tuple[PreprocessRecipe, ...] = ()
    examine: Callable[[DecodeTask], Decoded] = examine


@dataclass(frozen=True, slots=True)
class ScoreSpec:
    """What the scoring actors need besides the model: the run's hooks (built and checked by the driver), its
    config (the hooks' ``RunContext``), the results columns and the hooks' further model inputs (``DecodeSpec``)."""

    hooks: tuple[PredictHook, ...]
    config: PredictConfig
    columns: tuple[str, ...]
    extra_recipes: tuple[PreprocessRecipe, ...] = ()


def decode_block(batch: pa.Table, *, spec: Blob) -> pa.Table:
    """Examine every file of a block; returns ``input_index`` and the pickled ``Decoded`` item of each."""
    cv2.setNumThreads(1)  # one task = one core (Ray reserves one CPU per decode task)
    s: DecodeSpec = unpack(spec)
    indices: list[int] = []
    items: list[bytes] = []
    for index, raw in zip(batch.column(INDEX_COLUMN).to_pylist(), batch.column(PATH_COLUMN).to_pylist(), strict=True):
        task = DecodeTask(int(index), os.fsdecode(raw), s.recipe, s.rules, keep_image=False, image_checks=True,
                          needs=s.needs, extra_recipes=s.extra_recipes)
        try:
            item = pickle.dumps(s.examine(task), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # the item cannot be pickled: the file's row says so, the block goes on
            item = pickle.dumps(unreturned(task, exc), protocol=pickle.HIGHEST_PROTOCOL)
        indices.append(task.index)
        items.append(item)
    return pa.table({INDEX_COLUMN: pa.array(indices, pa.int64()), DECODED_COLUMN: pa.array(items, pa.binary())})


def failed_checks(item: Decoded, record: ImageRecord) -> str | None:
    """The names of the quality checks ``record`` failed, as ``QualityHook`` counts them (for run.json's counts;
    the ``quality`` column holds the messages)."""
    if item.image_checks is None or record.quality is None or record.quality == QUALITY_OK:
        return None
    return ";".join(c.name for c in assess_quality(item.image_checks).failed) or None


class ScoreBatches:
    """One inference actor: the shipped model loaded once (``device``: cpu, or cuda on a GPU actor), the hooks
    of the run, and ``__call__`` for each batch of decoded items."""

    def __init__(self, model: Sequence[ray.ObjectRef], spec: Blob, *, device: str, strict_device: bool,
                 threads: int | None) -> None:
        package: ModelPackage = ray.get(model[0])
        self.folder = Path(tempfile.mkdtemp(prefix="cxrtriage-ray-model-"))
        try:
            self.model = unpack_model(package, self.folder, device=device, strict_device=strict_device,
                                      intra_op_threads=threads, spinning=False)
        finally:
            # The session holds the graph from here on. Removed now, not when the actor ends: a killed actor
            # (kill -9, a lost node) runs no clean-up, and every restart would leave another copy in /tmp.
            shutil.rmtree(self.folder, ignore_errors=True)
        s: ScoreSpec = unpack(spec)
        self.hooks = list(s.hooks)
        self.columns = list(s.columns)
        self.extra_recipes = s.extra_recipes
        self.schema = shard_schema(self.columns)
        # Hooks that write files are refused under --ray (run.check_options): no hook writes into this folder.
        self.ctx = RunContext(config=s.config, model=self.model, out_dir=self.folder)
        session = self.model.session
        self.scored_on = json.dumps({"device": session.device.value, "providers": session.providers,
                                     "node": platform.node()}, sort_keys=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items: list[Decoded] = [pickle.loads(b) for b in batch.column(DECODED_COLUMN).to_pylist()]
        readable = [d for d in items if d.ok]
        scored = iter(_score_batch(readable, self.model, self.hooks, self.ctx, self.extra_recipes) if readable else [])
        manifest = self.model.manifest
        records = [next(scored) if d.ok else _unscored(with_model(d.record, manifest), self.hooks, self.ctx)
                   for d in items]
        table = shard_table([encode_record(r, self.columns) for r in records], [d.index for d in items],
                            [failed_checks(d, r) for d, r in zip(items, records, strict=True)], self.schema)
        return table.append_column(SCORED_ON_COLUMN, pa.array([self.scored_on] * len(items), pa.string()))
