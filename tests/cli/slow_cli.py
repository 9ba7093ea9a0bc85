"""Run the cxrtriage command line with every batch slowed down: a run that lasts long enough to be
interrupted, killed or raced by the lifecycle tests (tests/cli/test_cli_lifecycle.py).

    python tests/cli/slow_cli.py predict DIR --out OUT ...     (CXRTRIAGE_TEST_BATCH_SECONDS, default 0.2)

With CXRTRIAGE_TEST_STORE_SECONDS set, `serve` waits that long before it writes each received instance to its
spool: a transfer that lasts long enough to be killed in the middle (tests/node/).

With CXRTRIAGE_TEST_GATE=PATH set, no batch runs before PATH exists (at most 5 minutes): the test decides
when the run may go on.

Start it with the repository as the working directory and on PYTHONPATH, so that the main process and its
forkserver (which puts the working directory first on its path) import the same code.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def _slowed(fn: Any, seconds: float) -> Any:
    gate = os.environ.get("CXRTRIAGE_TEST_GATE")

    def slow(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 300
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return slow


if __name__ == "__main__":  # decode workers import this module as __mp_main__: they must not run the CLI again
    import cxrtriage.node.spool as spool
    import cxrtriage.pipeline.predict as predict
    import cxrtriage.pipeline.segment as segment
    from cxrtriage.cli.app import main

    seconds = float(os.environ.get("CXRTRIAGE_TEST_BATCH_SECONDS", "0.2"))
    if seconds or os.environ.get("CXRTRIAGE_TEST_GATE"):
        predict._score_batch = _slowed(predict._score_batch, seconds)
        segment._segment_batch = _slowed(segment._segment_batch, seconds)
    store_seconds = float(os.environ.get("CXRTRIAGE_TEST_STORE_SECONDS", "0"))
    if store_seconds:
        spool.Spool.store = _slowed(spool.Spool.store, store_seconds)  # type: ignore[method-assign]
    sys.argv = ["cxrtriage", *sys.argv[1:]]
    main()
