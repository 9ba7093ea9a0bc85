"""``run_predict_ray``: the predict pipeline as a Ray Data job, driven from this process.

Read ``_run`` top to bottom for the stages:

1. the model, hooks and selection rules are loaded and checked here, as for a local run (a bad option fails before
   the cluster is touched); the output folder is locked;
2. the input files are discovered once, here, and kept in ``OUT/results.parquet/_inputs.parquet``; an unfinished
   run of the same job in OUT is continued: only the inputs without a row in its shards are scheduled;
3. Ray Data runs the inputs in blocks: ``stages.decode_block`` as CPU tasks, ``stages.ScoreBatches`` in an actor
   pool (GPU actors with the CUDA execution provider when the cluster has GPUs); the model and the run's settings
   reach the workers by content (``shipping``);
4. this process writes the rows to Parquet shards as they arrive (``shards``), and reports progress;
5. inputs whose block failed on the cluster (a worker that crashed on each retry) are run again one file per block,
   and a file that still fails gets a ``failed`` row: one bad file never costs its block;
6. the shards are merged in input order into ``results.csv`` / ``results.jsonl`` (one row per input, checked), the
   hooks finish (triage writes ``worklist.csv``) and ``run.json`` is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

import cxrtriage
from cxrtriage import __version__
from cxrtriage.errors import ConfigError, CxrTriageError
from cxrtriage.model import Classifier, Device, load_classifier
from cxrtriage.model.session import parse_device
from cxrtriage.outdir import lock_output
from cxrtriage.pipeline.cluster.shards import JobStart, ShardStore, shard_table
from cxrtriage.pipeline.cluster.shipping import ModelPackage, pack, pack_model
from cxrtriage.pipeline.cluster.stages import (
    PATH_COLUMN,
    SCORED_ON_COLUMN,
    DecodeSpec,
    ScoreBatches,
    ScoreSpec,
    decode_block,
)
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.decode import Decoded, DecodeTask, examine
from cxrtriage.pipeline.engine import check_inputs, discover_paths, selection_rules, with_model
from cxrtriage.pipeline.hooks.base import PredictHook, PredictSummary, RunContext
from cxrtriage.pipeline.hooks.quality import QualityHook
from cxrtriage.pipeline.hooks.triage import TriageHook
from cxrtriage.pipeline.predict import _unscored, build_hooks, pixel_needs
from cxrtriage.pipeline.provenance import run_record
from cxrtriage.results import (
    ImageRecord,
    Priority,
    ResultsWriter,
    Status,
    encode_record,
    result_columns,
    utc_now,
    write_run_json,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'cxrtriage[ray]'"
MAX_FILES_PER_BLOCK = 64
BLOCKS_PER_CPU = 4  # enough blocks to balance the cluster's cores, few enough that a block is worth a task
SHARD_ROWS = 1024  # a shard is written when this many rows are waiting (an eighth of a smaller run, at least 32) ...
SHARD_SECONDS = 2.0  # ... or when the oldest waiting row is this old: at most this much work is redone on resume
TASK_RETRIES = 1  # a block whose worker process dies is retried once; then its files are run one by one (retried too)
LOCAL_OBJECT_STORE = 1 << 30  # --ray local: decoded inputs are ~0.2 MB each; Ray spills to disk beyond this
# Options whose outputs are image files written beside the results: not available on a cluster (yet).
_LOCAL_ONLY = ("--lungs", "--heatmaps", "--report", "--dicom", "--send")


class ClusterError(ConfigError):
    """The Ray cluster cannot be reached, or could not run the job (the shards written so far are kept)."""


@dataclass(frozen=True, slots=True)
class ClusterProgress:
    """Where a Ray run stands: rows done of ``total`` (``resumed`` of them from an earlier run), by status."""

    done: int
    total: int
    scored: int
    excluded: int
    failed: int
    resumed: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Rows per second done by this run (the resumed rows excluded)."""
        return (self.done - self.resumed) / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """How the job is laid out on the cluster."""

    address: str
    nodes: int
    cpus: int
    gpus: int
    device: str  # what the inference actors ask onnxruntime for
    actors: int  # the most inference actors at once (the pool starts with one and grows with the queue)
    actor_cpus: float
    actor_gpus: float
    files_per_block: int


@dataclass(frozen=True, slots=True)
class ClusterOutcome:
    """What the cluster did (``PredictSummary.outcomes["ray"]`` and run.json's ``ray`` section)."""

    plan: ClusterPlan
    resumed: int  # rows taken from the shards of an earlier, unfinished run of the same job
    replaced: str | None  # an unfinished run of another job that this run replaced, in words
    blocks: int
    retried_alone: int  # inputs whose block failed on the cluster, run again one per block
    failed_on_cluster: int  # inputs that failed alone too: their row says so
    scored_on: tuple[Mapping[str, Any], ...]  # device, providers and node of each kind of inference actor
    shards: Path
    model_bytes: int
    seconds_connect: float
    rows_per_s: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def provenance(self) -> dict[str, Any]:
        p = self.plan
        return {
            "address": p.address, "nodes": p.nodes, "cpus": p.cpus, "gpus": p.gpus, "device": p.device,
            "inference_actors_max": p.actors, "actor_cpus": p.actor_cpus, "actor_gpus": p.actor_gpus,
            "files_per_block": p.files_per_block, "blocks": self.blocks, "resumed_rows": self.resumed,
            "retried_alone": self.retried_alone, "failed_on_cluster": self.failed_on_cluster,
            "scored_on": [dict(w) for w in self.scored_on], "shards": self.shards.name, "model_shipped_bytes": self.model_bytes,
        }


def check_options(config: PredictConfig) -> None:
    """``ConfigError`` for an option a Ray run cannot honour (before anything is started)."""
    asked = [opt for opt, on in zip(_LOCAL_ONLY, (config.lungs_on, config.heatmaps, config.report, config.dicom,
                                                  config.send is not None), strict=True) if on]
    if asked:
        raise ConfigError(f"--ray: {', '.join(asked)} write image files (masks, heat maps, reports) beside the results, "
                          "which the cluster's workers cannot do yet; leave them out (and run `cxrtriage report OUT` "
                          "on the finished results), or run without --ray")
    if config.workers is not None:
        raise ConfigError("--ray: --workers sets this machine's decode processes; on a cluster, Ray runs one decode "
                          "task per free CPU. Leave --workers out")


def _file_digest(path: Path | None) -> str:
    if path is None:
        return "default"
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:  # the loaders have read it already; only the digest must differ
        return f"unreadable ({exc.strerror or exc})"


def job_of(config: PredictConfig, model: Classifier, columns: Sequence[str]) -> dict[str, Any]:
    """What must not change for a resumed run to be the same run: everything that can change a row."""
    m = model.manifest
    return {
        "tool_version": __version__,
        "inputs": [os.fsdecode(os.path.abspath(p)) for p in config.inputs],
        "model": f"{m.name} {m.version} (sha256 {m.sha256}, manifest {m.integrity})",
        "columns": list(columns),
        "--rules": _file_digest(config.rules),
        "--policy": _file_digest(config.policy),
        "--site": _file_digest(config.site),
        "--population": config.population,
        "--full-resolution": not config.reduced_decode,
    }


def plan_cluster(config: PredictConfig, address: str, n_todo: int, files_per_block: int | None = None) -> ClusterPlan:
    """Decide the actors and blocks from what the cluster has (``ray.cluster_resources``)."""
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if cpus < 1:
        raise ClusterError(f"--ray {address}: the cluster has no CPU for the decode tasks")
    want = parse_device(config.device)
    threads = config.intra_op_threads or 1
    gpu_device = want in (Device.AUTO, Device.CUDA, Device.TENSORRT)
    if gpu_device and gpus > 0:
        device, actors, actor_cpus, actor_gpus = (Device.CUDA.value if want is Device.AUTO else want.value), gpus, 1.0, 1.0
    else:
        if want in (Device.CUDA, Device.TENSORRT):
            msg = f"--device {want.value}: the Ray cluster at {address} has no GPU"
            if config.strict_device:
                raise ClusterError(msg + "; add GPU nodes or choose --device cpu")
            log.warning("%s; scoring on CPU", msg)
        # auto without GPUs: CPU (an actor that is given no GPU must not try the CUDA provider)
        device = Device.CPU.value if gpu_device else want.value
        actors, actor_cpus, actor_gpus = max(1, cpus // BLOCKS_PER_CPU), float(threads), 0.0
    if files_per_block is None:
        files_per_block = min(MAX_FILES_PER_BLOCK, max(1, math.ceil(n_todo / (BLOCKS_PER_CPU * cpus))))
    return ClusterPlan(address, nodes, cpus, gpus, device, actors, actor_cpus, actor_gpus, files_per_block)


def _runtime_env() -> dict[str, Any]:
    """Every worker runs this process's cxrtriage: the package is shipped with the job (its other dependencies
    must be installed on the nodes: ``pip install 'cxrtriage[ray]'``)."""
    return {"py_modules": [str(Path(cxrtriage.__file__).resolve().parent)], "excludes": ["__pycache__", "*.pyc"]}


class _AuthNotice(logging.Filter):
    """Drops Ray's notice that a new local instance uses token authentication (its default, and the safe choice):
    a warning line with a link in every `--ray local` run, though nothing is wrong. Its warning that a cluster runs
    *without* authentication still comes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


@contextlib.contextmanager
def _quiet_auth_notice() -> Iterator[None]:
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice = _AuthNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Connected to the Ray cluster at ``address`` for the block (``local``: a Ray instance started for it).

    A process already connected to Ray (a library caller) keeps its connection, and the job uses it.
    """
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"address": address, "runtime_env": _runtime_env(), "logging_level": logging.WARNING,
                              "log_to_driver": False}
    if address == "local":
        kwargs.update(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE)
    try:
        with _quiet_auth_notice():
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"--ray {address}: cannot connect to a Ray cluster ({str(exc).strip()[:300]}); give the "
                           "head's HOST:PORT (see `ray status` on it), 'auto' on a node of the cluster, or 'local'") \
            from exc
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _data_context(max_errored_blocks: int) -> Iterator[None]:
    """Ray Data settings of one pass, restored afterwards: no progress bars of its own (ours counts files), the
    errors of our stages raised as they are, and the number of blocks that may fail before the pass stops."""
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start",
                                          "raise_original_map_exception", "max_errored_blocks")}
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.raise_original_map_exception = True
    ctx.max_errored_blocks = max_errored_blocks
    # Ray Data's info lines are not ours to print; nor is its warning that the progress bars we turned off are off
    quieter = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    levels = {name: logging.getLogger(name).level for name in quieter}
    for name, level in quieter.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class ShardSink:
    """The driver's end of the pipeline: rows buffered and written as shards, counts, progress."""

    def __init__(self, store: ShardStore, total: int, counts: Counter[str], resumed: int,
                 on_progress: Callable[[ClusterProgress], None] | None) -> None:
        self.store = store
        self.total = total
        self.counts = counts
        self.resumed = resumed
        self.on_progress = on_progress
        self.t0 = time.perf_counter()
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.pending_since = 0.0
        # A small run can be scored within SHARD_SECONDS: without a row limit of its own its first shard would
        # come only at the end, and a driver killed before then would leave nothing to resume from.
        self.shard_rows = min(SHARD_ROWS, max(32, math.ceil(total / 8)))
        self.scored_on: set[str] = set()

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def add(self, table: pa.Table) -> None:
        if SCORED_ON_COLUMN in table.column_names:
            self.scored_on.update(v for v in table.column(SCORED_ON_COLUMN).to_pylist() if v)
            table = table.drop_columns([SCORED_ON_COLUMN])
        if not self.pending:
            self.pending_since = time.perf_counter()
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.counts.update(table.column("status").to_pylist())
        if self.pending_rows >= self.shard_rows or time.perf_counter() - self.pending_since >= SHARD_SECONDS:
            self.flush()
        self.progress()

    def flush(self) -> None:
        if self.pending:
            self.store.write(pa.concat_tables(self.pending))
            self.pending.clear()
            self.pending_rows = 0

    def progress(self) -> None:
        if self.on_progress is not None:
            c = self.counts
            self.on_progress(ClusterProgress(self.done, self.total, c[Status.SCORED.value], c[Status.EXCLUDED.value],
                                             c[Status.FAILED.value], self.resumed, time.perf_counter() - self.t0))


def _cause(exc: BaseException) -> CxrTriageError | None:
    """The cxrtriage error behind an exception Ray raised (a model a worker refused, ...), if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, CxrTriageError):
            return e
        seen.add(id(e))
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def run_pass(indices: np.ndarray, paths: Sequence[str], *, plan: ClusterPlan, files_per_block: int, batch_size: int,
             model: ray.ObjectRef, decode_spec: Any, score_spec: Any, config: PredictConfig, sink: ShardSink,
             max_errored_blocks: int) -> int:
    """Run ``indices`` through the two stages; rows go to ``sink`` as they come. Returns the number of blocks.

    A block whose task keeps failing (its worker dies ``TASK_RETRIES`` + 1 times) is dropped, up to
    ``max_errored_blocks`` of them; its inputs are then missing from the shards, for the caller to run again.
    """
    blocks = [pa.table({"input_index": pa.array(chunk, pa.int64()),
                        PATH_COLUMN: pa.array([os.fsencode(paths[int(i)]) for i in chunk], pa.binary())})
              for chunk in np.array_split(indices, max(1, math.ceil(len(indices) / files_per_block)))]
    # A Dataset keeps a copy of the DataContext it was made in: the settings must be in place before it is made.
    with _data_context(max_errored_blocks), warnings.catch_warnings():
        # Ray 2.60 deprecates retry limits passed as ray_remote_args but offers no other way to bound the retries
        # of a task whose worker process dies (unbounded by default: a file that crashes its decoder would loop).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
        ds: ray.data.Dataset = ray.data.from_arrow(blocks)
        ds = ds.map_batches(functools.partial(decode_block, spec=decode_spec), batch_size=None, batch_format="pyarrow",
                            num_cpus=1, max_retries=TASK_RETRIES)
        ds = ds.map_batches(
            ScoreBatches, batch_size=batch_size, batch_format="pyarrow",
            fn_constructor_args=([model], score_spec),
            fn_constructor_kwargs={"device": plan.device, "strict_device": config.strict_device,
                                   "threads": config.intra_op_threads or 1},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors),
            num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus, max_restarts=-1, max_task_retries=TASK_RETRIES,
        )
        try:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                sink.add(table)
        finally:
            sink.flush()  # what arrived is kept, whatever stopped the pass (an error, Ctrl-C)
    return len(blocks)


def _failed_on_cluster(index: int, path: str, model: Classifier, hooks: Sequence[PredictHook],
                       ctx: RunContext) -> ImageRecord:
    reason = (f"{path}: the Ray worker handling this file died or failed on every attempt, also with the file alone "
              "(a decoder crash, or not enough memory?); see the Ray logs of the run")
    return _unscored(with_model(ImageRecord(path=path, status=Status.FAILED, reason=reason), model.manifest), hooks, ctx)


def restore_tallies(hooks: Sequence[PredictHook], priorities: Counter[str], quality_failed: int,
                    by_check: Mapping[str, int], populations: Counter[str] | None = None,
                    population_sources: Counter[str] | None = None) -> None:
    """Give the driver's hooks the run-level counts their copies on the workers made (they go into run.json):
    triage's images by priority, by deciding population and by its source, and the quality checks' failures, counted from the
    merged rows."""
    for hook in hooks:
        if isinstance(hook, TriageHook):
            hook.counts = Counter({Priority(p): n for p, n in priorities.items()})
            hook.population_counts = Counter(populations or {})
            hook.population_source_counts = Counter(population_sources or {})
        elif isinstance(hook, QualityHook):
            hook.failed = quality_failed
            hook.by_check = dict(by_check)


def run_predict_ray(
    config: PredictConfig,
    address: str,
    *,
    on_progress: Callable[[ClusterProgress], None] | None = None,
    files_per_block: int | None = None,
    examine_fn: Callable[[DecodeTask], Decoded] = examine,
) -> PredictSummary:
    """Score every input file on the Ray cluster at ``address`` (``local``, ``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``) and write what ``run_predict`` writes, plus ``OUT/results.parquet/``.

    Raises what ``run_predict`` raises, and ``ClusterError`` when the cluster cannot be reached or cannot run the
    job. Re-running the same command after a run stopped (a worker or this process killed) continues it.
    ``files_per_block`` overrides the block size; ``examine_fn`` the per-file function of the decode tasks (tests:
    a module-level function the workers can import, as ``decode_stream``'s ``fn``).
    """
    check_options(config)
    check_inputs(config.inputs, config.out_dir)
    with lock_output(config.out_dir, "predict"):
        return _run(config, address, on_progress=on_progress, files_per_block=files_per_block, examine_fn=examine_fn)


def _run(config: PredictConfig, address: str, *, on_progress: Callable[[ClusterProgress], None] | None,
         files_per_block: int | None, examine_fn: Callable[[DecodeTask], Decoded]) -> PredictSummary:
    t0 = time.perf_counter()
    started_at = utc_now()
    out = Path(config.out_dir)
    # 1. everything a worker will use is loaded and checked here first
    model = load_classifier(config.model, device="cpu", intra_op_threads=1)
    hooks = build_hooks(config, model)
    rules = selection_rules(config.rules)
    columns = result_columns(model.labels, [c for h in hooks for c in h.columns])
    ctx = RunContext(config=config, model=model, out_dir=out)
    # 2. the file list, discovered once (or the unfinished run's)
    store = ShardStore(out, columns)
    start: JobStart = store.start(job_of(config, model, columns),
                                  lambda: discover_paths(config.inputs, config.out_dir),
                                  where=", ".join(str(p) for p in config.inputs))
    paths = start.paths
    n = len(paths)
    done, counts = store.progress(n)
    resumed = int(done.sum())
    if start.resumed:
        log.info("continuing the unfinished run in %s: %d of %d inputs done", store.folder, resumed, n)
    package: ModelPackage = pack_model(model.manifest)
    # the decode settings of a local run: how far images may be reduced, the hooks' further model inputs
    extra = tuple(dict.fromkeys(r for h in hooks for r in h.recipes))
    decode_spec = pack("decode settings", DecodeSpec(model.manifest.preprocessing, rules,
                                                     pixel_needs(config, model, hooks), extra, examine_fn))
    score_spec = pack("hooks and settings", ScoreSpec(tuple(hooks), config, tuple(columns), extra))
    sink = ShardSink(store, n, counts, resumed, on_progress)
    sink.progress()
    blocks = retried = 0
    t_connect = time.perf_counter()
    with ray_session(address):
        seconds_connect = time.perf_counter() - t_connect
        todo = np.flatnonzero(~done)
        plan = plan_cluster(config, address, len(todo), files_per_block)
        model_ref = ray.put(package)
        try:
            # 3.-4. the inputs in blocks; 5. then those of blocks that failed, one per block
            if len(todo):
                blocks += run_pass(todo, paths, plan=plan, files_per_block=plan.files_per_block,
                                   batch_size=config.batch_size, model=model_ref, decode_spec=decode_spec,
                                   score_spec=score_spec, config=config, sink=sink,
                                   max_errored_blocks=max(2, math.ceil(len(todo) / plan.files_per_block / 100)))
            missing = np.flatnonzero(~store.progress(n)[0])
            if len(missing) > max(16, n // 100):
                raise ClusterError(f"{len(missing)} of {n} inputs were lost with blocks that failed on the cluster; "
                                   "see the Ray logs, then run the same command again to continue")
            if len(missing):
                log.warning("%d input(s) of blocks that failed on the cluster: running them one by one", len(missing))
                retried = len(missing)
                blocks += run_pass(missing, paths, plan=plan, files_per_block=1, batch_size=1, model=model_ref,
                                   decode_spec=decode_spec, score_spec=score_spec, config=config, sink=sink,
                                   max_errored_blocks=len(missing))
        except CxrTriageError:
            raise
        except Exception as exc:
            cause = _cause(exc)
            if cause is not None:
                raise cause from exc
            raise ClusterError(f"the Ray job stopped ({type(exc).__name__}: {str(exc).strip()[:300]}); the "
                               f"{sink.done} rows done are kept in {store.folder}: run the same command again to "
                               "continue") from exc
    lost = np.flatnonzero(~store.progress(n)[0])
    if len(lost):
        records = [_failed_on_cluster(int(i), paths[int(i)], model, hooks, ctx) for i in lost]
        for i, r in zip(lost, records, strict=True):
            log.warning("%s: failed on the cluster, also alone; marked failed", r.path)
            sink.add(_rows_table(store, [int(i)], [r], columns))
        sink.flush()
    # 6. merge, in input order, one row per input
    return _finish(config, model, hooks, ctx, store, n, started_at, t0, ClusterOutcome(
        plan=plan, resumed=resumed, replaced=start.replaced, blocks=blocks, retried_alone=retried,
        failed_on_cluster=len(lost), scored_on=tuple(json.loads(w) for w in sorted(sink.scored_on)), shards=store.folder,
        model_bytes=package.size, seconds_connect=seconds_connect,
        rows_per_s=(n - resumed) / max(time.perf_counter() - t0, 1e-9)))


def _rows_table(store: ShardStore, indices: Sequence[int], records: Sequence[ImageRecord],
                columns: Sequence[str]) -> pa.Table:
    return shard_table([encode_record(r, columns) for r in records], indices, [None] * len(records), store.schema)


def _finish(config: PredictConfig, model: Classifier, hooks: Sequence[PredictHook], ctx: RunContext,
            store: ShardStore, n: int, started_at: str, t0: float, outcome: ClusterOutcome) -> PredictSummary:
    out = Path(config.out_dir)
    writer = ResultsWriter(out, store.columns)
    statuses: Counter[str] = Counter()
    priorities: Counter[str] = Counter()
    by_check: Counter[str] = Counter()
    populations: Counter[str] = Counter()
    population_sources: Counter[str] = Counter()
    quality_failed = 0
    try:
        for _, row, checks in store.rows_in_order(n):
            writer.write_row(row)
            statuses[row["status"]] += 1
            if row.get("priority"):
                priorities[row["priority"]] += 1
            if row.get("population"):
                populations[row["population"]] += 1
            if row.get("population_source"):
                population_sources[row["population_source"]] += 1
            if checks:
                quality_failed += 1
                by_check.update(checks.split(";"))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    restore_tallies(hooks, priorities, quality_failed, by_check, populations, population_sources)
    device = outcome.plan.device
    summary = PredictSummary(
        total=writer.rows_written, scored=statuses[Status.SCORED.value], excluded=statuses[Status.EXCLUDED.value],
        failed=statuses[Status.FAILED.value], seconds=time.perf_counter() - t0, results_csv=writer.csv_path,
        results_jsonl=writer.jsonl_path or writer.csv_path, model_name=model.manifest.name,
        model_version=model.manifest.version, device=device,
    )
    outcomes: dict[str, Any] = {hook.name: hook.on_finish(ctx, summary) for hook in hooks}
    outcomes["ray"] = outcome
    counts = {"files": summary.total, "scored": summary.scored, "excluded": summary.excluded, "failed": summary.failed}
    record = run_record(config, model, started_at=started_at, finished_at=utc_now(), counts=counts, hooks=hooks)
    # The inference actors' device and providers (the driver's own model only checked the options)
    devices = sorted({str(w["device"]) for w in outcome.scored_on}) or [device]
    providers = list(dict.fromkeys(str(p) for w in outcome.scored_on for p in w["providers"]))
    record = dataclasses.replace(record, device=", ".join(devices), execution_providers=tuple(providers))
    record = record.merged({"ray": outcome.provenance()})
    run_json = write_run_json(out, record)
    store.finish()
    if outcome.failed_on_cluster:
        log.warning("%d input(s) failed on the cluster; their rows say so", outcome.failed_on_cluster)
    return dataclasses.replace(summary, seconds=time.perf_counter() - t0, outcomes=outcomes, run_json=run_json,
                               run=record)
