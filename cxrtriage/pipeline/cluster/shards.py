"""The results of a Ray run as they come: Parquet shards in ``OUT/results.parquet/``, the job state that makes the
run resumable, and the merge of the shards into ``results.csv`` / ``results.jsonl`` in input order.

``OUT/results.parquet/`` is a Parquet data set (``pandas.read_parquet``, ``pyarrow.dataset``, Spark and Ray read
the folder as one table; they skip the ``_`` files):

- ``part-NNNNNN-XXXXXXXX.parquet``: rows as the driver received them, each file written atomically (a crash never
  leaves half a shard). The columns are those of ``results.csv``, typed (text, integers, floats, lists), the text
  escaped exactly as in ``results.jsonl``, plus ``input_index`` (the input's place in the discovered file list,
  the sort key of the merge) and ``quality_failed_checks`` (the names of the quality checks an image failed, for
  the counts in ``run.json``);
- ``_inputs.parquet``: the file list, discovered once (``input_index``, ``path`` as bytes);
- ``_job.json``: what must not change for a resumed run to be the same run (``job``), and whether it finished.

A run that stops (a worker or the driver killed) leaves its shards; the next run of the same job reads which
inputs they hold and schedules only the others, so every input gets exactly one row. The merge checks that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from cxrtriage.errors import InputError, OutputError
from cxrtriage.files import PARTIAL_SUFFIX, atomic_write
from cxrtriage.results import MODEL_SCORE_PREFIX, SCORE_PREFIX, ImageRecord, utc_now

log = logging.getLogger(__name__)

SHARDS_DIR = "results.parquet"
JOB_FILE = "_job.json"
INPUTS_FILE = "_inputs.parquet"
PART_PREFIX = "part-"
INDEX_COLUMN = "input_index"
CHECKS_COLUMN = "quality_failed_checks"
JSON_ENCODING = {b"cxrtriage.encoding": b"json"}  # a column whose cells are JSON text (a value of unknown type)
MERGE_CHUNK = 65_536  # rows read at once by the merge: memory stays flat however many inputs there are

# Arrow types of the ImageRecord fields, by their annotation (the dataclass's own field types).
_ARROW_BY_ANNOTATION: dict[str, pa.DataType] = {
    "str": pa.string(), "str | None": pa.string(), "Status": pa.string(), "Priority | None": pa.string(),
    "int | None": pa.int64(), "float | None": pa.float64(),
    "tuple[float, float] | None": pa.list_(pa.float64()), "tuple[str, ...] | None": pa.list_(pa.string()),
}
_FIELD_ANNOTATIONS = {f.name: str(f.type) for f in dataclasses.fields(ImageRecord)}


def _column_field(column: str) -> pa.Field:
    if column.startswith((SCORE_PREFIX, MODEL_SCORE_PREFIX)):
        return pa.field(column, pa.float64())
    arrow = _ARROW_BY_ANNOTATION.get(_FIELD_ANNOTATIONS.get(column, ""))
    if arrow is None:  # a column a third-party hook fills with values of its own: kept losslessly as JSON text
        return pa.field(column, pa.string(), metadata=JSON_ENCODING)
    return pa.field(column, arrow)


def shard_schema(columns: Sequence[str]) -> pa.Schema:
    """The schema of every shard of a run whose results table has ``columns``."""
    return pa.schema([*(_column_field(c) for c in columns), pa.field(INDEX_COLUMN, pa.int64(), nullable=False),
                      pa.field(CHECKS_COLUMN, pa.string())])


def _json_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.metadata == JSON_ENCODING]


def shard_table(rows: Sequence[Mapping[str, Any]], indices: Sequence[int], failed_checks: Sequence[str | None],
                schema: pa.Schema) -> pa.Table:
    """Encoded results rows (``results.encode_record``) with their input indices, as a table of ``schema``."""
    json_cols = _json_columns(schema)
    data: list[dict[str, Any]] = []
    for row, index, checks in zip(rows, indices, failed_checks, strict=True):
        d = dict(row)
        for c in json_cols:
            d[c] = None if d.get(c) is None else json.dumps(d[c], ensure_ascii=False)
        d[INDEX_COLUMN] = int(index)
        d[CHECKS_COLUMN] = checks
        data.append(d)
    return pa.Table.from_pylist(data, schema=schema)


def table_rows(table: pa.Table) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """(input index, encoded results row, failed quality checks) for each row of a shard table."""
    json_cols = _json_columns(table.schema)
    for d in table.to_pylist():
        index = int(d.pop(INDEX_COLUMN))
        checks = d.pop(CHECKS_COLUMN)
        for c in json_cols:
            d[c] = None if d[c] is None else json.loads(d[c])
        yield index, d, checks


def job_key(job: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True, ensure_ascii=True).encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class JobStart:
    """How a run began: its file list, whether it continues an earlier unfinished run of the same job, and what
    it replaced (an unfinished run of another job: its differences, in words)."""

    paths: tuple[str, ...]
    resumed: bool
    replaced: str | None = None


class ShardStore:
    """The shards and the job state of one output folder (see the module docstring)."""

    def __init__(self, out_dir: str | Path, columns: Sequence[str]) -> None:
        self.folder = Path(out_dir) / SHARDS_DIR
        self.columns = list(columns)
        self.schema = shard_schema(self.columns)
        self._seq = 0

    # ------------------------------------------------------------------ job state

    def _read_job(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder / JOB_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def _read_inputs(self, n: int) -> tuple[str, ...] | None:
        try:
            t = pq.read_table(self.folder / INPUTS_FILE)
        except (OSError, pa.ArrowException):
            return None
        if t.num_rows != n or t.column(INDEX_COLUMN).to_pylist() != list(range(n)):
            return None
        return tuple(os.fsdecode(p) for p in t.column("path").to_pylist())

    def start(self, job: Mapping[str, Any], discover: Callable[[], Iterable[str]], *, where: str) -> JobStart:
        """Continue the unfinished run of ``job`` that the folder holds, or start a new one: discover the inputs
        (``InputError`` naming ``where`` when there are none), write the file list and the job state.

        A finished run, or an unfinished run of another job, is replaced: its shards are removed first.
        """
        key = job_key(job)
        old = self._read_job()
        replaced: str | None = None
        if old is not None and old.get("key") == key and not old.get("finished_at"):
            paths = self._read_inputs(int(old.get("inputs", -1)))
            if paths is not None:
                self._remove(partials_only=True)
                return JobStart(paths, resumed=True)
            log.warning("%s: the file list of the unfinished run cannot be read; starting over", self.folder)
        if old is not None and not old.get("finished_at") and old.get("key") != key:
            before: dict[str, Any] = old["job"] if isinstance(old.get("job"), dict) else {}
            differs = sorted(k for k in set(before) | set(job) if before.get(k) != job.get(k))
            replaced = f"an unfinished Ray run of another job ({', '.join(differs) or 'unknown'} differ)"
        self._remove(partials_only=False)
        paths = tuple(discover())
        if not paths:
            raise InputError(f"no input files found in {where}")
        table = pa.table({INDEX_COLUMN: pa.array(range(len(paths)), pa.int64()),
                          "path": pa.array([os.fsencode(p) for p in paths], pa.binary())})
        self._write_parquet(self.folder / INPUTS_FILE, table)
        state = {"key": key, "job": dict(job), "inputs": len(paths), "started_at": utc_now(), "finished_at": None}
        atomic_write(self.folder / JOB_FILE, json.dumps(state, indent=2) + "\n", fsync=True)
        return JobStart(paths, resumed=False, replaced=replaced)

    def finish(self) -> None:
        """Mark the job finished: a later run into the folder starts a new one."""
        state = self._read_job() or {}
        state["finished_at"] = utc_now()
        atomic_write(self.folder / JOB_FILE, json.dumps(state, indent=2) + "\n", fsync=True)

    def _remove(self, *, partials_only: bool) -> None:
        if not self.folder.is_dir():
            return
        try:
            for p in self.folder.iterdir():
                ours = p.name.startswith(PART_PREFIX) or p.name in (JOB_FILE, INPUTS_FILE)
                if p.name.endswith(PARTIAL_SUFFIX) or (ours and not partials_only):
                    p.unlink()
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot remove the shards of the earlier run ({exc.strerror or exc}); "
                              "remove the folder yourself or choose another --out") from exc

    # ------------------------------------------------------------------ shards

    def parts(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir()
                      if p.name.startswith(PART_PREFIX) and p.name.endswith(".parquet"))

    def _write_parquet(self, path: Path, table: pa.Table) -> Path:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return atomic_write(path, buf.getvalue(), fsync=True)

    def write(self, table: pa.Table) -> Path:
        """One shard, written atomically and flushed to disk: once its name exists, its rows are done."""
        if self._seq == 0:  # a resumed run numbers its shards after the earlier run's
            self._seq = len(self.parts())
        self._seq += 1
        name = f"{PART_PREFIX}{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        return self._write_parquet(self.folder / name, table.cast(self.schema))

    def progress(self, n: int) -> tuple[np.ndarray, Counter[str]]:
        """For each of the ``n`` inputs, whether a shard holds its row; and the rows' statuses (each input once)."""
        mask = np.zeros(n, dtype=bool)
        statuses: Counter[str] = Counter()
        for part in self.parts():
            t = pq.read_table(part, columns=[INDEX_COLUMN, "status"])
            idx = t.column(INDEX_COLUMN).to_numpy()
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise OutputError(f"{part}: holds input indices outside 0..{n - 1}; this shard is not from this run: "
                                  f"remove {self.folder} and run again")
            new = ~mask[idx]
            statuses.update(s for s, keep in zip(t.column("status").to_pylist(), new, strict=True) if keep)
            mask[idx] = True
        return mask, statuses

    def rows_in_order(self, n: int) -> Iterator[tuple[int, dict[str, Any], str | None]]:
        """Every input's row, in input order, exactly once: a row found twice is taken once (the shards hold the
        same result twice only if a shard was written again after a crash), an input with no row is an error.

        Raises:
            OutputError: an input has no row (the run is not complete).
        """
        parts = self.parts()
        data = pads.dataset([str(p) for p in parts], schema=self.schema, format="parquet") if parts else None
        for lo in range(0, n, MERGE_CHUNK):
            hi = min(n, lo + MERGE_CHUNK)
            if data is None:
                table = self.schema.empty_table()
            else:
                table = data.to_table(filter=(pc.field(INDEX_COLUMN) >= lo) & (pc.field(INDEX_COLUMN) < hi))
                table = table.sort_by(INDEX_COLUMN)
            idx = table.column(INDEX_COLUMN).to_numpy()
            first = np.ones(len(idx), dtype=bool)
            first[1:] = idx[1:] != idx[:-1]
            if int(first.sum()) != hi - lo:
                missing = np.setdiff1d(np.arange(lo, hi), idx)
                raise OutputError(f"{self.folder}: {missing.size} input(s) have no row (the first: index "
                                  f"{int(missing[0])}); run the same command again to finish the run")
            if not first.all():
                log.warning("%s: %d row(s) were found twice; each is taken once", self.folder, int((~first).sum()))
                table = table.filter(pa.array(first))
            yield from table_rows(table)
