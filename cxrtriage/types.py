"""Small frozen dataclasses that travel between the stages of cxrtriage.

Every stage is a plain function over these types; none of them holds patient identifiers
other than the DICOM UIDs needed to cite the source of a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]


class InputKind(StrEnum):
    """How a file was recognised (by content, never by its name)."""

    DICOM = "dicom"
    RASTER = "raster"  # PNG / JPEG / TIFF read with OpenCV
    SITK = "sitk"  # NIfTI / MHA / NRRD read with SimpleITK
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where an image came from: enough to cite it in every output."""

    path: str
    kind: InputKind
    frame: int | None = None


@dataclass(frozen=True, slots=True)
class DicomInfo:
    """Technical DICOM header facts (no patient identifiers) that later stages need."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    modality: str = ""
    body_part_examined: str = ""
    view_position: str = ""
    photometric_interpretation: str = ""
    transfer_syntax_uid: str = ""
    bits_stored: int = 0
    rows: int = 0
    columns: int = 0
    number_of_frames: int = 1
    samples_per_pixel: int = 1
    image_laterality: str = ""
    series_description: str = ""
    patient_age_years: float | None = None  # at the study (PatientAge, or birth and study dates); None = not told


@dataclass(frozen=True, slots=True)
class VoiWindow:
    """A VOI transform that maps pixels (already in MONOCHROME2 sense) to display values in [0, 1].

    Either a window (``center``/``width``, DICOM PS3.3 C.11.2.1.2) or a lookup table
    (``lut``: values for inputs ``first_mapped``, ``first_mapped + 1``...). For MONOCHROME1 the
    reader sets ``mirror`` to ``lo + hi`` of the stored range, so that the transform is applied
    to the original values and the result inverted, exactly as a viewer would display it.
    """

    center: float = 0.0
    width: float = 1.0
    function: str = "LINEAR"
    lut: FloatArray | None = None
    first_mapped: float = 0.0
    mirror: float | None = None

    def apply(self, pixels: FloatArray) -> FloatArray:
        """Return display values in [0, 1] (dense = bright) for ``pixels`` in MONOCHROME2 sense."""
        x = pixels.astype(np.float32, copy=False)
        if self.mirror is not None:
            x = np.float32(self.mirror) - x
        if self.lut is not None:
            lut = self.lut.astype(np.float32, copy=False)
            idx = np.clip(np.rint(x - self.first_mapped), 0, lut.size - 1).astype(np.intp)
            lo, hi = float(lut.min()), float(lut.max())
            out = (lut[idx] - lo) / max(hi - lo, 1e-12)
        elif self.function.upper() == "SIGMOID":
            out = 1.0 / (1.0 + np.exp(-4.0 * (x - self.center) / max(self.width, 1e-12)))
        elif self.function.upper() == "LINEAR_EXACT":
            out = np.clip((x - (self.center - self.width / 2)) / max(self.width, 1e-12), 0.0, 1.0)
        else:  # LINEAR, PS3.3 C.11.2.1.2.1
            c, w = self.center - 0.5, max(self.width - 1.0, 1e-12)
            out = np.clip((x - c) / w + 0.5, 0.0, 1.0)
        result: FloatArray = out.astype(np.float32, copy=False)
        return (1.0 - result).astype(np.float32) if self.mirror is not None else result


@dataclass(frozen=True, slots=True)
class Image2D:
    """One 2-D radiograph as read from disk.

    ``pixels`` is float32, after the modality LUT, in MONOCHROME2 sense (dense = bright).
    ``value_range`` is the nominal (lo, hi) the pixels can take (e.g. 0..2**BitsStored-1
    mapped through the modality LUT, or 0..255 for an 8-bit PNG).
    ``pixel_spacing_mm`` is (row spacing, column spacing), or None when unknown.

    ``pixels`` may be the image at a reduced resolution (JPEG 2000 resolution levels, JPEG DCT scaling, when
    the reader was told how much the consumers allow): then ``scale`` > 1, each pixel covers ``scale`` x
    ``scale`` pixels of the full image, and ``full_shape`` is the full image's size. ``shape`` is always the
    full size: every geometry (model-input placement, masks, heat maps, lung areas, spacing) is in the
    coordinates of the full image, whatever resolution the pixels were decoded at.
    """

    pixels: FloatArray
    value_range: tuple[float, float]
    source: SourceRef
    pixel_spacing_mm: tuple[float, float] | None = None
    voi: VoiWindow | None = None
    dicom: DicomInfo | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    full_shape: tuple[int, int] | None = None
    scale: int = 1

    def __post_init__(self) -> None:
        if self.pixels.ndim != 2:
            raise ValueError(f"Image2D needs a 2-D array, got shape {self.pixels.shape} from {self.source.path}")
        if self.pixels.dtype != np.float32:
            raise ValueError(f"Image2D pixels must be float32, got {self.pixels.dtype} from {self.source.path}")
        if self.scale < 1 or (self.scale > 1) != (self.full_shape is not None):
            raise ValueError(f"Image2D scale {self.scale} needs a full_shape exactly when it is above 1 "
                             f"({self.source.path})")
        if self.full_shape is not None and reduced_shape(self.full_shape, self.scale) != self.pixels.shape:
            raise ValueError(f"Image2D pixels {self.pixels.shape} are not {self.full_shape} reduced by {self.scale} "
                             f"({self.source.path})")

    @property
    def shape(self) -> tuple[int, int]:
        """The full image's (rows, columns), also when ``pixels`` hold a reduced resolution."""
        if self.full_shape is not None:
            return self.full_shape
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    @property
    def reduced(self) -> bool:
        return self.scale > 1


def reduced_shape(shape: tuple[int, int], scale: int) -> tuple[int, int]:
    """Size of an image of ``shape`` decoded at 1/``scale`` resolution: ceil(size / scale) per side, as both
    OpenJPEG (resolution levels of an image whose origin is 0) and libjpeg (DCT scaling) round."""
    return (-(-shape[0] // scale), -(-shape[1] // scale))
