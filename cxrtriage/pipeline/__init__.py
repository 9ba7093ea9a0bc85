"""The pipelines that join the stages: ``predict`` (score, triage, report) and ``segment`` (lung masks).

Modules import one way, bottom to top:

- ``config``: every option of a run (``PredictConfig``, ``SegmentConfig``) and machine-derived defaults;
  ``startup``: the decode workers' forkserver, which the command line starts before it imports the rest;
- ``decode``: probe, select, read and preprocess files in worker processes, in input order;
  ``engine``: the batching loop that turns decoded items into records, in order, crash-safe;
  ``artefacts``: the lung mask files both pipelines write;
- ``hooks/``: ``base`` (the hook contract), then one module per hook: site, lungs, quality, heatmaps, triage;
- ``provenance`` (``run.json``) and ``reports`` (the reports step);
- ``predict`` and ``segment``: the entry points, ``run_predict`` and ``run_segment``.

This package module imports nothing, so that the decode workers import only what decoding needs.
"""
