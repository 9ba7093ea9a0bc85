"""The results contract: the per-image record, the results tables and ``run.json``.

Whatever writes or reads results goes through this package: the predict and segment pipelines write
``ImageRecord``s with ``ResultsWriter`` and a ``RunRecord``; the worklist, reports, evaluation and
calibration read them back with ``read_results`` / ``read_results_dir`` and ``read_run_json``.
"""

from __future__ import annotations

from cxrtriage.results.record import PRIORITY_LEVELS, ImageRecord, LabelArea, Priority, Status
from cxrtriage.results.run import OPERATING_POINTS, RUN_JSON, ModelRef, RunRecord, read_run_json, utc_now, write_run_json
from cxrtriage.results.table import (
    MODEL_SCORE_PREFIX,
    RESULTS_CSV,
    RESULTS_JSONL,
    SCORE_PREFIX,
    ResultsTable,
    ResultsWriter,
    csv_cell,
    from_row,
    model_score_column,
    read_results,
    read_results_dir,
    result_columns,
    score_column,
    segment_columns,
    to_row,
)

__all__ = [
    "MODEL_SCORE_PREFIX",
    "OPERATING_POINTS",
    "PRIORITY_LEVELS",
    "RESULTS_CSV",
    "RESULTS_JSONL",
    "RUN_JSON",
    "SCORE_PREFIX",
    "ImageRecord",
    "LabelArea",
    "ModelRef",
    "Priority",
    "ResultsTable",
    "ResultsWriter",
    "RunRecord",
    "Status",
    "csv_cell",
    "from_row",
    "model_score_column",
    "read_results",
    "read_results_dir",
    "read_run_json",
    "result_columns",
    "score_column",
    "segment_columns",
    "to_row",
    "utc_now",
    "write_run_json",
]
