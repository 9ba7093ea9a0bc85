"""Size and memory limits per image, checked from headers and codestreams BEFORE any pixel buffer is allocated.

The limit is on the memory that reading one image needs at its peak, not only on its pixel buffer: the
readers keep the encoded bytes, the decoded samples and float copies (float32 image, float64 rescale, inverted
copy, colour channels) alive at the same time. `image_memory` estimates that peak from the size the header and
the codestream announce; `size_problem` refuses an image whose estimate exceeds `MAX_IMAGE_MEMORY`.

Bound: probing, reading and preprocessing any accepted image (`cxrtriage.pipeline.decode.examine`) allocates at
most ``MAX_IMAGE_MEMORY`` (1 GiB) above the process's fixed footprint (interpreter, libraries, model). The
estimate is: encoded bytes (the file) + 2 x the stored samples + a per-pixel working cost by reader:

- DICOM: 24 bytes per pixel (pydicom's modality LUT works in float64 (8) and returns float32 (4), MONOCHROME1
  inversion makes a second float32 (4), a JPEG 2000 decoder works on 32-bit integers (4), a deflated data set
  also keeps its inflated copy (2-4)).
- Raster (PNG/JPEG/TIFF with OpenCV): 8 bytes per pixel for a single channel (the float32 image and one float32
  temporary of the preprocessing); with colour channels 8 per channel + 8 (float32 channels, the colour test's
  spread arrays, the averaged image). A TIFF also counts one decoded tile, which OpenCV allocates beside it.
- SimpleITK: 8 bytes per pixel (float32 image and the min/max pass), the ITK image and its NumPy copy being
  the 2 x stored samples.

Measured peak resident memory above the footprint (``tests/io/test_io_memory.py`` measures it again against the
estimate), 3072 x 3072 images, bytes per pixel measured (several runs) / estimated: 16-bit MONOCHROME1 DICOM
with a rescale, uncompressed 16.1 / 30, RLE 15.2 / 29, JPEG 2000 15-19 / 29, JPEG-LS 15-16.4 / 29, deflated
21-21.6 / 30; 16-bit grey PNG or TIFF 6-9.4 / 13; 8-bit grey PNG or JPEG 5-6.2 / 10; 16-bit grey-in-RGB PNG
24-25.2 / 47; float64 NRRD 20 / 32. So the largest accepted 16-bit DICOM is about 5900 x 5900 (a real
radiograph is at most ~4300 x 4300), the largest 8-bit grey PNG about 10200 x 10200; a 16384 x 16384 PNG (which
used to peak at 1.3 GB) is refused.
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
        return 24
    if reader == "raster":
        return 8 if samples == 1 else 8 * samples + 8
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
