"""Size and memory limits per image, checked from headers and codestreams BEFORE any pixel buffer is allocated.

The limit is on the memory that reading one image needs at its peak, not only on its pixel buffer: the
readers keep the encoded bytes, the decoded samples and float copies (float32 image, float64 rescale, inverted
copy, colour channels) alive at the same time. `image_memory` estimates that peak from the size the header and
the codestream announce; `size_problem` refuses an image whose estimate exceeds `MAX_IMAGE_MEMORY`.

Bound: probing, reading and preprocessing any accepted image (`cxrtriage.pipeline.decode.examine`) allocates at
most ``MAX_IMAGE_MEMORY`` (1 GiB) above the process's fixed footprint (interpreter, libraries, model). The
estimate is: encoded bytes (the file) + 2 x the stored samples + a per-pixel working cost by reader:

- DICOM: 20 bytes per pixel (pydicom's modality LUT works in float64 (8) and returns float32 (4), MONOCHROME1
  inversion makes a second float32 (4), a JPEG 2000 decoder works on 32-bit integers (4)); a deflated data set
  also keeps its inflated copy, within the same margin.
- Raster (PNG/JPEG/TIFF with OpenCV): 4 bytes per pixel for a single channel (the float32 image); with colour
  channels 8 per channel + 4 (float32 channels, the colour test's spread arrays, the averaged image). A TIFF
  also counts one decoded tile, which OpenCV allocates beside the image.
- SimpleITK: 8 bytes per pixel (float32 image and the min/max pass), the ITK image and its NumPy copy being
  the 2 x stored samples.

Measured peak resident memory above the footprint, 3072 x 3072 images (``tests/io/test_io_memory.py`` checks
the estimate against measurements again): 16-bit MONOCHROME1 DICOM with a rescale 15-16 bytes per pixel
(uncompressed, RLE, JPEG 2000, JPEG-LS; estimate 24-26), deflated 21.5 (estimate 25.5); 8/16-bit grey PNG,
JPEG, TIFF 5-6 (estimate 7-9); 16-bit grey-in-RGB PNG 25.4 (estimate 43.5); float64 NRRD 20 (estimate 32).
So the largest accepted 16-bit DICOM is about 6400 x 6400 (a real radiograph is at most ~4300 x 4300) and the
largest 8-bit grey PNG about 13000 x 13000; a 16384 x 16384 PNG (which used to peak at 1.3 GB) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cxrtriage.errors import InputError

MAX_SIDE = 16384
"""Largest accepted number of rows or columns (real radiographs are at most ~4300)."""

MAX_IMAGE_MEMORY = 1 << 30
"""Largest accepted estimated peak memory for reading one image (`image_memory`): 1 GiB."""

MAX_HEADER_BYTES = 64 << 20
"""Largest accepted total of the non-pixel elements of a DICOM data set (64 MiB); real headers are kilobytes."""

Reader = Literal["dicom", "raster", "sitk"]


def _work_bytes(reader: Reader, samples: int) -> int:
    """Bytes per pixel the reader allocates besides the encoded and the stored samples (see the module docstring)."""
    if reader == "dicom":
        return 20
    if reader == "raster":
        return 4 if samples == 1 else 8 * samples + 4
    return 8


def image_memory(rows: int, columns: int, *, frames: int = 1, samples: int = 1, bytes_per_sample: int = 2,
                 reader: Reader = "dicom", encoded_bytes: int = 0) -> int:
    """Estimated peak bytes to read and preprocess this image (an upper bound, see the module docstring)."""
    pixels = max(rows, 0) * max(columns, 0) * max(frames, 1)
    stored = pixels * max(samples, 1) * max(bytes_per_sample, 1)
    return max(encoded_bytes, 0) + 2 * stored + pixels * _work_bytes(reader, max(samples, 1))


def size_problem(rows: int, columns: int, *, frames: int = 1, samples: int = 1, bytes_per_sample: int = 2,
                 reader: Reader = "dicom", encoded_bytes: int = 0) -> str | None:
    """Why an image of this size is refused, or None when it is acceptable."""
    if rows <= 0 or columns <= 0:
        return f"image size {rows}x{columns} is empty or negative"
    if rows > MAX_SIDE or columns > MAX_SIDE:
        return f"image size {rows}x{columns} exceeds the limit of {MAX_SIDE} pixels per side"
    need = image_memory(rows, columns, frames=frames, samples=samples, bytes_per_sample=bytes_per_sample,
                        reader=reader, encoded_bytes=encoded_bytes)
    if need > MAX_IMAGE_MEMORY:
        return (f"reading this image would need about {need / 2**30:.1f} GiB of memory "
                f"({columns}x{rows}, {frames} frame(s), {samples} sample(s), {bytes_per_sample} byte(s) each, "
                f"with its float copies), over the limit of {MAX_IMAGE_MEMORY / 2**30:.0f} GiB per image")
    return None


def check_size(path: str | Path, rows: int, columns: int, *, frames: int = 1, samples: int = 1,
               bytes_per_sample: int = 2, reader: Reader = "dicom", encoded_bytes: int = 0) -> None:
    """Raise InputError when the header announces an absurd image, before decoding it."""
    problem = size_problem(rows, columns, frames=frames, samples=samples, bytes_per_sample=bytes_per_sample,
                           reader=reader, encoded_bytes=encoded_bytes)
    if problem is not None:
        raise InputError(f"{path}: {problem}; the header is probably corrupt, or this is not a radiograph. "
                         "Check the file or exclude it from the input.")
