"""The Parquet shards of a Ray run: typed columns, a lossless round trip to results.csv/.jsonl, the merge in input
order with every input exactly once, and the job state that makes a run resumable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow", reason="the Parquet shards need pyarrow (pip install -e '.[ray]')")
pq = pytest.importorskip("pyarrow.parquet")

from cxrtriage.errors import InputError, OutputError  # noqa: E402
from cxrtriage.pipeline.cluster.shards import (  # noqa: E402
    CHECKS_COLUMN,
    INDEX_COLUMN,
    ShardStore,
    shard_schema,
    shard_table,
)
from cxrtriage.results import ImageRecord, Priority, ResultsWriter, Status, encode_record, result_columns  # noqa: E402

LABELS = ("abnormal", "effusion")
COLUMNS = result_columns(LABELS, ["priority", "priority_reason", "priority_finding", "priority_score", "site_file",
                                  "quality", "third_party"])
LATIN1 = os.fsdecode(b"/data/M\xfcller.png")  # a file name that is not UTF-8


def _records() -> list[ImageRecord]:
    return [
        ImageRecord(path="/data/a.dcm", status=Status.SCORED, reason="selected: CR PA", input_kind="dicom",
                    study_key="1.2.3", rows=2048, columns=1700, pixel_spacing_mm=(0.139, 0.139),
                    scores={"abnormal": 0.8123456789, "effusion": 0.25}, model_name="m", priority=Priority.URGENT,
                    priority_reason="effusion 0.25 >= 0.2", priority_finding="effusion", priority_score=0.25,
                    site_file="", quality="ok", extra={"third_party": {"k": [1, 2]}}),
        ImageRecord(path=LATIN1, status=Status.EXCLUDED, reason="not a chest radiograph", site_file="",
                    priority=Priority.NOT_ASSESSED, priority_finding=""),
        ImageRecord(path="=1+1.png", status=Status.FAILED, reason="cannot read", site_file="",
                    priority=Priority.NOT_ASSESSED),
    ]


def test_the_schema_types_each_column_and_keeps_unknown_ones_as_json() -> None:
    schema = shard_schema(COLUMNS)
    assert schema.names == [*COLUMNS, INDEX_COLUMN, CHECKS_COLUMN]  # the columns of results.csv, then two of its own
    assert schema.field("rows").type == pa.int64()
    assert schema.field("score_abnormal").type == pa.float64()
    assert schema.field("pixel_spacing_mm").type == pa.list_(pa.float64())
    assert schema.field("priority").type == pa.string()
    assert schema.field("third_party").metadata == {b"cxrtriage.encoding": b"json"}


def test_rows_read_back_from_shards_write_the_same_results_files(tmp_path: Path) -> None:
    """results.csv/.jsonl written from the shards equal, byte for byte, the files written from the records."""
    records = _records()
    with ResultsWriter(tmp_path / "direct", COLUMNS) as w:
        for r in records:
            w.write(r)
    store = ShardStore(tmp_path / "via", COLUMNS)
    rows = [encode_record(r, COLUMNS) for r in records]
    # out of order and in two shards, as the cluster delivers them
    store.write(shard_table([rows[2]], [2], [None], store.schema))
    store.write(shard_table(rows[:2], [0, 1], ["size;dynamic_range", None], store.schema))
    with ResultsWriter(tmp_path / "via", COLUMNS) as w:
        merged = list(store.rows_in_order(3))
        for _, row, _ in merged:
            w.write_row(row)
    assert [i for i, _, _ in merged] == [0, 1, 2]
    assert [c for _, _, c in merged] == ["size;dynamic_range", None, None]
    assert [row for _, row, _ in merged] == rows
    for name in ("results.csv", "results.jsonl"):
        assert (tmp_path / "via" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes(), name


def test_the_merge_takes_each_input_once_and_refuses_a_missing_one(tmp_path: Path) -> None:
    records = _records()
    store = ShardStore(tmp_path, COLUMNS)
    rows = [encode_record(r, COLUMNS) for r in records]
    store.write(shard_table(rows[:2], [0, 1], [None, None], store.schema))
    with pytest.raises(OutputError, match="1 input\\(s\\) have no row \\(the first: index 2\\)"):
        list(store.rows_in_order(3))
    store.write(shard_table(rows[1:], [1, 2], [None, None], store.schema))  # index 1 twice
    assert [i for i, _, _ in store.rows_in_order(3)] == [0, 1, 2]
    done, statuses = store.progress(3)
    assert done.all() and statuses == {"scored": 1, "excluded": 1, "failed": 1}


def test_the_shards_are_one_parquet_table_for_other_readers(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, COLUMNS)
    store.start({"job": 1}, lambda: ["a", "b", "c"], where="test")
    rows = [encode_record(r, COLUMNS) for r in _records()]
    store.write(shard_table(rows, [0, 1, 2], [None] * 3, store.schema))
    table = pq.read_table(store.folder)  # the folder, as pandas/Spark/Ray read it: the "_" files are skipped
    assert table.num_rows == 3 and table.column("path").to_pylist()[1] == rows[1]["path"]


def test_a_run_continues_the_unfinished_run_of_its_job_and_replaces_any_other(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, COLUMNS)
    job = {"model": "m 1 (sha256 x)", "inputs": ["/data"]}
    first = store.start(job, lambda: ["/data/a", LATIN1], where="/data")
    assert (first.paths, first.resumed) == (("/data/a", LATIN1), False)
    store.write(shard_table([encode_record(_records()[0], COLUMNS)], [0], [None], store.schema))
    # the same job, unfinished: its file list and shards are kept (files added since are not picked up)
    again = ShardStore(tmp_path, COLUMNS).start(job, lambda: ["/data/a", "/data/new", LATIN1], where="/data")
    assert (again.paths, again.resumed) == (("/data/a", LATIN1), True)
    assert ShardStore(tmp_path, COLUMNS).progress(2)[0].tolist() == [True, False]
    # another job: the earlier shards go, and the run says what differed
    other = ShardStore(tmp_path, COLUMNS).start({**job, "model": "m 2 (sha256 y)"}, lambda: ["/data/b"], where="/data")
    assert (other.paths, other.resumed) == (("/data/b",), False)
    assert other.replaced == "an unfinished Ray run of another job (model differ)"
    assert ShardStore(tmp_path, COLUMNS).parts() == []
    # a finished job is not continued: a new run of it starts over
    store = ShardStore(tmp_path, COLUMNS)
    store.finish()
    assert ShardStore(tmp_path, COLUMNS).start({**job, "model": "m 2 (sha256 y)"}, lambda: ["/data/b"],
                                               where="/data").resumed is False


def test_no_input_is_an_input_error_and_writes_no_state(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no input files found in /empty"):
        ShardStore(tmp_path, COLUMNS).start({"job": 1}, lambda: [], where="/empty")
    assert not (tmp_path / "results.parquet" / "_job.json").exists()
