"""The results contract: the per-image record, the results tables and ``run.json``.

Whatever writes or reads results goes through this package: the predict and segment pipelines write
``ImageRecord``s with ``ResultsWriter`` and a ``RunRecord``; the worklist, reports, evaluation and
calibration read them back with ``read_results`` / ``read_results_dir`` and ``read_run_json``.
"""

from __future__ import annotations

from cxrtriage.results.cells import (
    UNDECODABLE_NOTE,
    SafeCsvWriter,
    clean_text,
    decode_row,
    display_text,
    encode_row,
    read_safe_csv,
    spreadsheet_text,
    spreadsheet_value,
)
from cxrtriage.results.lines import CsvLines, decode_record, write_csv_lines
from cxrtriage.results.record import PRIORITY_LEVELS, ImageRecord, LabelArea, Priority, Status
from cxrtriage.results.run import (
    OPERATING_POINTS,
    RUN_JSON,
    ModelRef,
    RunRecord,
    read_run_json,
    recorded_manifest,
    utc_now,
    write_run_json,
)
from cxrtriage.results.table import (
    MODEL_SCORE_PREFIX,
    RESULTS_CSV,
    RESULTS_JSONL,
    SCORE_PREFIX,
    SOURCE_COLUMNS,
    ResultsTable,
    ResultsWriter,
    append_results_jsonl,
    csv_cell,
    encode_record,
    from_row,
    jsonl_line,
    model_score_column,
    read_results,
    read_results_dir,
    result_columns,
    score_column,
    segment_columns,
    to_row,
    write_results_csv,
    write_results_jsonl,
)

__all__ = [
    "MODEL_SCORE_PREFIX",
    "OPERATING_POINTS",
    "PRIORITY_LEVELS",
    "RESULTS_CSV",
    "RESULTS_JSONL",
    "RUN_JSON",
    "SCORE_PREFIX",
    "SOURCE_COLUMNS",
    "UNDECODABLE_NOTE",
    "CsvLines",
    "ImageRecord",
    "LabelArea",
    "ModelRef",
    "Priority",
    "ResultsTable",
    "ResultsWriter",
    "append_results_jsonl",
    "RunRecord",
    "SafeCsvWriter",
    "Status",
    "clean_text",
    "csv_cell",
    "decode_record",
    "decode_row",
    "display_text",
    "encode_record",
    "encode_row",
    "from_row",
    "jsonl_line",
    "model_score_column",
    "read_results",
    "read_results_dir",
    "read_run_json",
    "recorded_manifest",
    "read_safe_csv",
    "result_columns",
    "score_column",
    "segment_columns",
    "spreadsheet_text",
    "spreadsheet_value",
    "write_csv_lines",
    "to_row",
    "utc_now",
    "write_results_csv",
    "write_results_jsonl",
    "write_run_json",
]
