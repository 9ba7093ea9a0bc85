"""Starting the process that forks the decode workers (the forkserver), early.

A light module (the standard library only), so that ``cxrtriage predict`` can start the forkserver before it imports
the pipeline: the forkserver's own imports (below) and the command's (the pipeline, the model, onnxruntime) then run
side by side on two cores instead of one after the other.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

# Imported by the forkserver before it forks any worker. Why: the readers import their decoders on first use
# (cxrtriage.io.dicom brings pydicom's pixel plugins, GDCM, CharLS, Pillow: ~230 modules); done in each worker, that
# cost every run ~0.2-0.35 s of CPU per worker before its first image (first scored batch of 96 uncompressed DICOMs
# at ~0.40 s instead of ~0.15 s). In the forkserver it is paid once, beside the model's loading (`prestart`).
# ``scipy.sparse``: the model inputs' area resize (`cxrtriage.preprocess.apply`, which imports it on first use).
WORKER_PRELOAD = ("cxrtriage.pipeline.decode", "cxrtriage.io.dicom", "cxrtriage.io.reduced", "cxrtriage.io.raster",
                  "scipy.sparse")


def worker_context() -> BaseContext:
    """forkserver on POSIX (workers never inherit onnxruntime's threads), spawn elsewhere."""
    if sys.platform != "win32" and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))
        return ctx
    return mp.get_context("spawn")


def prestart(workers: int) -> None:
    """Start the process that forks the decode workers now, so that its imports overlap with this process's own
    (the command line: before it imports the pipeline) and with the model's loading."""
    if workers > 0 and worker_context().get_start_method() == "forkserver":
        forkserver.ensure_running()
