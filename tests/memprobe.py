"""Peak resident memory of `examine` per file, measured in a fresh process (run as a script, Linux only).

Usage: ``python tests/memprobe.py [warm:FILE ...] FILE ...``: each ``warm:`` file is examined first, unmeasured
(imports and lazy initialisation of its reader); for every other file the peak resident set (VmHWM, reset through
/proc/self/clear_refs before each file, after freed memory went back to the OS) above the resident set before it
is printed, one JSON object per line.
"""

from __future__ import annotations

import json
import sys
import warnings


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _release() -> None:
    """Give freed memory back to the OS, so that the resident set before a file is what it really holds."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main(args: list[str]) -> int:
    warnings.simplefilter("ignore")
    from cxrtriage.pipeline.decode import DecodeTask, examine
    from cxrtriage.preprocess import PreprocessRecipe

    recipe = PreprocessRecipe()
    for arg in args:
        if arg.startswith("warm:"):
            examine(DecodeTask(0, arg[5:], recipe, image_checks=True))
            continue
        _release()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        before = _status("VmRSS")
        d = examine(DecodeTask(0, arg, recipe, image_checks=True))
        peak = _status("VmHWM") - before
        print(json.dumps({"path": arg, "status": str(d.record.status), "reason": d.record.reason, "peak": peak,
                          "rows": d.record.rows, "columns": d.record.columns}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
