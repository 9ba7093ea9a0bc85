"""``predict --ray``: the predict pipeline as a Ray Data job, for archives larger than one machine scores in time.

Modules import one way, bottom to top (only ``stages`` and ``run`` import Ray itself):

- ``shipping``: what the workers need, sent by content (the model's files, the run's hooks and rules) with sha256;
- ``shards``: the Parquet shards the results are written to as they come, the job state that makes a run
  resumable, and the merge into ``results.csv`` / ``results.jsonl`` in input order;
- ``stages``: the Ray Data stages: decoding as CPU tasks, scoring in an actor pool;
- ``run``: ``run_predict_ray``, the driver: connect, discover once, run the passes, merge, finish the hooks.

This package module imports nothing, so that ``import cxrtriage.pipeline.cluster`` works without Ray installed.
"""
