"""The preprocessing recipe: what a model expects, stored in its manifest and applied by preprocess."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

from cxrtriage.errors import ConfigError


class GeometryMode(StrEnum):
    """How a (possibly non-square) image becomes the square model input."""

    LETTERBOX = "letterbox"  # keep aspect ratio, pad the short side (nothing cropped)
    # torchxrayvision's XRayCenterCrop: the largest centred square, starting at n // 2 - side // 2 on each axis
    CENTER_CROP = "center_crop"
    STRETCH = "stretch"  # resize each axis independently


class VoiMode(StrEnum):
    """Whether the DICOM VOI LUT / window is applied before intensity scaling."""

    IGNORE = "ignore"
    IF_PRESENT = "if_present"


class ResizeMode(StrEnum):
    """How the cropped region is resized to the model input, and where intensity scaling happens."""

    # OpenCV area averaging (bilinear when enlarging) of the raw values, scaled to [0, 1] afterwards: fast, the
    # default, and what the shipped models were trained with.
    AREA = "area"
    # scikit-image's resize as torchxrayvision's XRayResizer calls it (Gaussian anti-aliasing with sigma
    # (factor - 1) / 2, bilinear, zero-padded borders), of values already scaled to output_range, as torchxrayvision
    # scales before it resizes. Pixels are then always decoded at full resolution.
    SKIMAGE = "skimage"


class IntensityMode(StrEnum):
    """How pixel values become [0, 1] when no VOI transform is used."""

    PERCENTILE = "percentile"  # clip to the given percentiles of the resized image, then scale
    NOMINAL = "nominal"  # scale the nominal value range (torchxrayvision's maxval rule)


@dataclass(frozen=True, slots=True)
class PreprocessRecipe:
    """Everything needed to turn an Image2D into the exact array an ONNX graph receives.

    Order (see ``cxrtriage.preprocess.apply``), with ``resize`` "area": geometry (crop/letterbox placement, area
    resize of the raw values) → VOI or intensity scaling to [0, 1] → padding with ``pad_value`` → linear map of
    [0, 1] onto ``output_range``. With ``resize`` "skimage" (torchxrayvision's order): crop → VOI or intensity
    scaling → map onto ``output_range`` → scikit-image's anti-aliased resize → padding.
    """

    size: int = 224
    geometry: GeometryMode = GeometryMode.LETTERBOX
    voi: VoiMode = VoiMode.IGNORE
    intensity: IntensityMode = IntensityMode.PERCENTILE
    percentiles: tuple[float, float] = (0.5, 99.5)
    output_range: tuple[float, float] = (-1.0, 1.0)
    pad_value: float = 0.0
    resize: ResizeMode = ResizeMode.AREA

    def __post_init__(self) -> None:
        # Comparisons with NaN are all false, so every range test below is written to fail on NaN.
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 8 <= self.size <= 4096:
            raise ConfigError(f"preprocessing.size must be an integer within 8..4096, got {self.size!r}")
        for name, mode in (("geometry", GeometryMode), ("voi", VoiMode), ("intensity", IntensityMode),
                           ("resize", ResizeMode)):
            if not isinstance(getattr(self, name), mode):
                raise ConfigError(f"preprocessing.{name} must be one of {[m.value for m in mode]}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("percentiles", "output_range"):
            pair = getattr(self, name)
            if not isinstance(pair, tuple) or len(pair) != 2 or not all(_finite(v) for v in pair):
                raise ConfigError(f"preprocessing.{name} must be two finite numbers [low, high], got {pair!r}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"preprocessing.percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if not self.output_range[0] < self.output_range[1]:
            raise ConfigError(f"preprocessing.output_range must be increasing, got {self.output_range}")
        if not _finite(self.pad_value) or not 0.0 <= self.pad_value <= 1.0:
            raise ConfigError(f"preprocessing.pad_value is in [0, 1] display units, got {self.pad_value!r}")

    def to_dict(self) -> dict[str, Any]:
        """The manifest form; ``resize`` is left out when it is the default, so that recipes written before it
        existed (and the caches keyed on them) stay the same."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, StrEnum):
                d[k] = str(v)
            elif isinstance(v, tuple):
                d[k] = list(v)
        if self.resize is ResizeMode.AREA:
            del d["resize"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "manifest") -> PreprocessRecipe:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"{where}: unknown preprocessing field(s) {sorted(unknown)}; valid fields: {sorted(known)}"
            )
        kw: dict[str, Any] = dict(data)
        try:
            if "geometry" in kw:
                kw["geometry"] = GeometryMode(kw["geometry"])
            if "voi" in kw:
                kw["voi"] = VoiMode(kw["voi"])
            if "intensity" in kw:
                kw["intensity"] = IntensityMode(kw["intensity"])
            if "resize" in kw:
                kw["resize"] = ResizeMode(kw["resize"])
        except ValueError as exc:
            raise ConfigError(f"{where}: invalid preprocessing value: {exc}") from exc
        for key in ("percentiles", "output_range"):
            if key in kw:
                v = kw[key]
                if not isinstance(v, list | tuple) or not all(_finite(x) for x in v):
                    raise ConfigError(f"{where}: preprocessing.{key} must be a list of two finite numbers, got {v!r}")
                kw[key] = tuple(float(x) for x in v)
        if "pad_value" in kw and _finite(kw["pad_value"]):
            kw["pad_value"] = float(kw["pad_value"])
        try:
            return cls(**kw)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


def _finite(value: Any) -> bool:
    """A real number (not a boolean, not a string) that is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
