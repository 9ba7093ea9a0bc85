"""Decode processes keep freed buffers for the next image instead of faulting fresh pages in every time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cxrtriage.pipeline.decode import HEAP_UP_TO

# Each round holds three image-sized buffers at once (14 MB each, like the file's bytes, the samples and the float
# pixels of a 2k x 2k radiograph) and frees them; prints the page faults of the last 10 rounds. With "keep" the
# decode processes' allocator setting is applied first.
CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from cxrtriage.pipeline.decode import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(20):
        if i == 10:
            start = faults()
        buffers = [np.ones(14 << 20, dtype=np.uint8) for _ in range(3)]
        del buffers
    print(faults() - start)
""")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's; elsewhere the setting is a no-op")
def test_freed_image_buffers_are_reused_without_page_faults() -> None:
    assert 14 << 20 <= HEAP_UP_TO  # a buffer of this size is served from the heap
    plain, kept = _faults("plain"), _faults("keep")
    # glibc's default gives the 42 MB back to the kernel each round (above its trim threshold) and faults it in
    # again: ~1000 faults per round here (numpy asks for huge pages, so fewer than one per 4 KiB)
    assert plain > 10 * 500, f"expected the default allocator to fault every round, got {plain} faults"
    assert kept < 500, f"decode processes should reuse freed buffers; 10 rounds took {kept} page faults"
