"""One entry point to read any supported file (dispatch by content) and one to probe + select + read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxrtriage.errors import InputError
from cxrtriage.io.discover import Probe, not_a_regular_file, probe_with_header
from cxrtriage.io.selection import DEFAULT_RULES, Selection, SelectionRules, select
from cxrtriage.io.sniff import sniff
from cxrtriage.results import Status
from cxrtriage.types import Image2D, InputKind

MaxScale = Callable[[tuple[int, int]], float]


def read_image(path: str | Path, *, max_scale: MaxScale | None = None) -> Image2D:
    """Read a radiograph by content: DICOM (any supported transfer syntax), PNG/JPEG/TIFF, NIfTI/MHA/NRRD.

    Returns float32 pixels after the modality LUT in MONOCHROME2 sense, with value range, VOI window,
    pixel spacing and notes saying what was assumed. ``max_scale``, given the full (rows, columns), is the
    largest reduction per side the caller accepts: JPEG 2000 and 8-bit JPEG may then be decoded at a reduced
    resolution, every other image decoded in full and then block averaged (``Image2D.scale``); see
    `cxrtriage.io.reduced`.

    Raises:
        InputError: unreadable, unrecognised, not a single-frame greyscale image, damaged or absurdly large;
            the message names the file and what to do.
    """
    p = Path(path)
    special = not_a_regular_file(p)
    if special is not None:  # never open a FIFO or a device: reading it could block or never end
        raise InputError(f"{p}: {special[0]}")
    try:
        sniffed = sniff(p)
    except OSError as exc:
        raise InputError(f"{p}: cannot read the file ({exc.strerror or exc}); check the path and permissions") from exc
    if sniffed.kind is InputKind.DICOM:
        from cxrtriage.io.dicom import read_dicom

        return read_dicom(p, max_scale=max_scale)
    if sniffed.kind is InputKind.RASTER:
        from cxrtriage.io.raster import read_raster

        return read_raster(p, sniffed.fmt, max_scale=max_scale)
    if sniffed.kind is InputKind.SITK:
        from cxrtriage.io.sitk import read_sitk

        return read_sitk(p, sniffed.fmt, max_scale=max_scale)
    hint = f" ({sniffed.hint})" if sniffed.hint else ""
    raise InputError(f"{p}: not a recognised image file{hint}; expected DICOM, PNG, JPEG, TIFF, NIfTI, MHA or NRRD "
                     "content (the file name does not matter)")


@dataclass(frozen=True, slots=True)
class Assessment:
    """Probe, selection and (when scored) the image of one input file: everything a results row needs."""

    probe: Probe
    selection: Selection
    image: Image2D | None = None


def assess(path: str | Path, rules: SelectionRules = DEFAULT_RULES, *, read: bool = True,
           max_scale: MaxScale | None = None) -> Assessment:
    """Probe ``path``, apply ``rules`` and, when scored and ``read``, read the image (``max_scale``: see `read_image`).

    A read failure turns a ``scored`` selection into ``failed`` with the reader's reason; never raises
    for a bad file. A scored DICOM file is parsed once: its header by the probe, which the reader reuses, reading
    the pixel data from where the probe found them (a deflated one is parsed again in full by the reader, as the
    probe inflates it to check its pixel data).
    """
    pr, header = probe_with_header(path)
    sel = select(pr, rules)
    if sel.status is not Status.SCORED or not read:
        return Assessment(pr, sel)
    try:
        if header is not None:
            from cxrtriage.io.dicom import read_dicom

            image = read_dicom(pr.path, header=header, max_scale=max_scale)
        else:
            image = read_image(pr.path, max_scale=max_scale)
    except InputError as exc:
        msg = str(exc)
        prefix = f"{pr.path}: "
        return Assessment(pr, Selection(Status.FAILED, msg[len(prefix):] if msg.startswith(prefix) else msg))
    return Assessment(pr, sel, image)
