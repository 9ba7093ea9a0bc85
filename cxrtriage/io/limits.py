"""Size limits checked from headers BEFORE any pixel buffer is allocated."""

from __future__ import annotations

from pathlib import Path

from cxrtriage.errors import InputError

MAX_SIDE = 16384
"""Largest accepted number of rows or columns (real radiographs are at most ~4300)."""

MAX_BYTES = 1 << 30
"""Largest accepted decoded pixel buffer (rows x columns x frames x samples x bytes per sample): 1 GiB."""


def size_problem(rows: int, columns: int, *, frames: int = 1, samples: int = 1, bytes_per_sample: int = 2) -> str | None:
    """Why an image of this size is refused, or None when it is acceptable."""
    if rows <= 0 or columns <= 0:
        return f"image size {rows}x{columns} is empty or negative"
    if rows > MAX_SIDE or columns > MAX_SIDE:
        return f"image size {rows}x{columns} exceeds the limit of {MAX_SIDE} pixels per side"
    total = rows * columns * max(frames, 1) * max(samples, 1) * max(bytes_per_sample, 1)
    if total > MAX_BYTES:
        return (f"decoded pixel data would need {total / 2**30:.1f} GiB "
                f"({rows}x{columns}, {frames} frame(s), {samples} sample(s), {bytes_per_sample} byte(s) each), "
                f"over the {MAX_BYTES / 2**30:.0f} GiB limit")
    return None


def check_size(path: str | Path, rows: int, columns: int, *, frames: int = 1, samples: int = 1,
               bytes_per_sample: int = 2) -> None:
    """Raise InputError when the header announces an absurd image, before decoding it."""
    problem = size_problem(rows, columns, frames=frames, samples=samples, bytes_per_sample=bytes_per_sample)
    if problem is not None:
        raise InputError(f"{path}: {problem}; the header is probably corrupt, or this is not a radiograph. "
                         "Check the file or exclude it from the input.")
