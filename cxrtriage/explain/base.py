"""Shared pieces of every explanation method: the Heatmap result, the method record and the map normalisation.

Exact normalisation of every map (all methods, see docs/explain.md):

1. the method gives a raw map on its own grid (the h x w feature grid for CAM methods, the
   S x S model input for occlusion);
2. ReLU (negative evidence is dropped);
3. bilinear resize to the S x S model input (OpenCV ``INTER_LINEAR``, half-pixel centres, the
   same as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``);
4. min-max scaling over the whole S x S input: ``(m - min) / (max - min)``, so the hottest point is
   1 and the coolest 0.

A map that is zero everywhere after the ReLU (no positive evidence) or flat (no localisation)
is reported as "no map" (``Heatmap.values is None`` with a ``reason``), never drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

from cxrtriage.errors import ConfigError
from cxrtriage.preprocess import Geometry, to_original
from cxrtriage.types import FloatArray

if TYPE_CHECKING:
    from cxrtriage.model import Classifier

# A map whose (max - min) after ReLU is below this fraction of its max is "flat": it says nothing
# about where the evidence is. Below ``ZERO_EPS`` in absolute terms the map is "all zero".
FLAT_RELATIVE = 1e-6
ZERO_EPS = 1e-12


class Family(StrEnum):
    """How a method gets its map (decides what it needs from the model)."""

    GRADIENT = "gradient"  # analytic gradient of the logit through the GAP + linear head
    ACTIVATION = "activation"  # the feature map alone (no gradient, no extra passes)
    PERTURBATION = "perturbation"  # extra forward passes over modified inputs


@dataclass(frozen=True, slots=True)
class Heatmap:
    """One explanation map for one image and one finding.

    ``values``: float32 [S, S] in [0, 1] at the model-input resolution, or None ("no map").
    ``original`` (property, computed on first use and cached): the same map on the ORIGINAL image
    grid [H, W] via ``preprocess.to_original`` (inverse of the letterbox / crop / resize; bilinear;
    pixels the model never saw are 0), times ``gate`` when set; None when there is no map. It is
    lazy because at full DICOM size it is large (3000 x 2500 float32 = 30 MB) and only overlays need it.
    ``gate``: optional boolean mask on the original grid (lung-mask gating) applied to ``original``.
    ``raw``: the method's map on its own grid after the ReLU, before resizing and scaling (keeps
    the method's units, e.g. logit contributions per cell for Grad-CAM); None when not computed.
    ``reason``: why there is no map (empty when there is one). ``notes``: facts to show with the
    map (e.g. class-agnostic method, lung-mask gating).
    """

    label: str
    method: str
    values: FloatArray | None
    geometry: Geometry
    raw: FloatArray | None = None
    score: float | None = None
    logit: float | None = None
    reason: str = ""
    notes: tuple[str, ...] = ()
    gate: NDArray[np.bool_] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # init=False: dataclasses.replace() gives the new Heatmap a fresh (empty) cache
    _cache: dict[str, FloatArray] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def empty(self) -> bool:
        """True when there is no map to draw (see ``reason``)."""
        return self.values is None

    @property
    def original(self) -> FloatArray | None:
        """The map on the original image grid, float32 [H, W] in [0, 1] (None when there is no map)."""
        if self.values is None:
            return None
        if "original" not in self._cache:
            m = np.clip(to_original(self.values, self.geometry, fill=0.0), 0.0, 1.0)
            if self.gate is not None:
                m = m * self.gate
            self._cache["original"] = m.astype(np.float32, copy=False)
        return self._cache["original"]


@dataclass(frozen=True, slots=True)
class HeadWeights:
    """The linear head after global average pooling: logits = mean_ij(A) @ weight.T + bias.

    ``weight`` is [labels, channels] (already transposed when the ONNX graph stores [C, L]).
    """

    weight: FloatArray
    bias: FloatArray
    source: str

    @property
    def n_labels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.weight.shape[1])


@dataclass(frozen=True, slots=True)
class CamContext:
    """Everything a method may use for ONE image and ONE label.

    ``activations``: post-ReLU feature map [C, h, w] (None when the model exports none).
    ``gradient``: d logit / d A_kij for a GAP + linear head, the same at every position, so one value
    per channel: [C] (None without a usable head).
    ``model``/``model_input``/``baseline``: for methods that run extra forward passes.
    """

    label: str
    label_index: int
    size: int
    activations: FloatArray | None = None
    gradient: FloatArray | None = None
    model: Classifier | None = None
    model_input: FloatArray | None = None
    baseline: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CamMethod:
    """A registered explanation method.

    ``compute`` returns the raw map (before ReLU) either on the feature grid [h, w] or at the
    model input [S, S]; ``normalize`` does the rest identically for every method.
    ``channel_weights`` (gradient methods): (gradients [L, C], activations [C, h, w]) -> weights
    [L, C] such that the raw map of label l is sum_k weights[l, k] * A_k. ``compute`` uses the same
    function, and batches use it to explain many labels with one matrix product.
    ``options`` lists the keyword options the method accepts, with their defaults.
    """

    name: str
    title: str
    family: Family
    needs_head: bool
    needs_features: bool
    needs_forward: bool
    class_specific: bool
    summary: str
    compute: Callable[[CamContext], FloatArray]
    options: Mapping[str, Any] = field(default_factory=dict)
    channel_weights: Callable[[FloatArray, FloatArray], FloatArray] | None = None

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``given``; an unknown option is a ConfigError naming the valid ones."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"method '{self.name}' has no option(s) {unknown}; its options are: {valid}")
        return {**self.options, **given}


def analytic_gradient(head: HeadWeights, label_index: int | Sequence[int], grid: tuple[int, int]) -> FloatArray:
    """d logit_c / d A_kij for a GAP + linear head: W_ck / (h * w), the same at every position.

    One value per channel: [C] for one label index, [L, C] for a sequence of them.
    """
    h, w = grid
    idx = label_index if isinstance(label_index, int) else list(label_index)
    return (head.weight[idx] / np.float32(h * w)).astype(np.float32)


def weighted_sum(weights: FloatArray, activations: FloatArray) -> FloatArray:
    """sum_k weights[..., k] * A_k for weights [C] or [L, C] and activations [C, h, w] → [h, w] or [L, h, w]."""
    c, h, w = activations.shape
    a = activations.reshape(c, h * w).astype(np.float32, copy=False)
    out = weights.astype(np.float32, copy=False) @ a
    return out.reshape(*weights.shape[:-1], h, w)


def gradient_cam(ctx: CamContext, channel_weights: Callable[[FloatArray, FloatArray], FloatArray]) -> FloatArray:
    """A gradient method's raw map for one label: sum_k w_k A_k with w = channel_weights(G, A)."""
    assert ctx.activations is not None and ctx.gradient is not None
    return weighted_sum(channel_weights(ctx.gradient[None, :], ctx.activations)[0], ctx.activations)


def upsample(grid_map: FloatArray, size: int) -> FloatArray:
    """Bilinear resize of an [h, w] map to [size, size] (half-pixel centres, no anti-aliasing)."""
    m = np.ascontiguousarray(grid_map, dtype=np.float32)
    if m.shape == (size, size):
        return m
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32, copy=False)


def normalize_stack(raw: FloatArray, size: int) -> list[tuple[FloatArray | None, FloatArray, str]]:
    """``normalize`` for a stack of maps [L, h, w] (one vectorised ReLU / emptiness check for all)."""
    relu = np.maximum(np.asarray(raw, dtype=np.float32), np.float32(0.0))
    n = relu.shape[0]
    if n == 0:  # nothing to explain for this image (e.g. no finding flagged)
        return []
    flat = relu.reshape(n, -1)
    finite: NDArray[np.bool_] = np.asarray(np.isfinite(flat).all(axis=1))
    peak = np.where(finite, flat.max(axis=1, initial=0.0), 0.0)
    results: list[tuple[FloatArray | None, FloatArray, str]] = []
    for i in range(n):
        if not finite[i]:
            results.append((None, relu[i], "the map has non-finite values (the model produced NaN or inf)"))
            continue
        if peak[i] <= ZERO_EPS:
            results.append((None, relu[i], "no positive evidence for this finding (the map is zero everywhere after ReLU)"))
            continue
        up = upsample(relu[i], size)
        if np.shares_memory(up, relu):  # already at model-input size (occlusion): work on a copy
            up = up.copy()
        lo, hi = float(up.min()), float(up.max())
        if hi - lo <= FLAT_RELATIVE * hi:
            results.append((None, relu[i], "the map is uniform (no localisation)"))
            continue
        # in place; x - lo >= 0 and (x - lo) <= (hi - lo) hold exactly in floating point, so the
        # result is in [0, 1] with exact 0 at the minimum and exact 1 at the maximum
        up -= np.float32(lo)
        up /= np.float32(hi - lo)
        results.append((up, relu[i], ""))
    return results


def normalize(raw: FloatArray, size: int) -> tuple[FloatArray | None, FloatArray, str]:
    """ReLU → bilinear resize to S x S → min-max to [0, 1]. Returns (values or None, relu'd raw, reason).

    float32 throughout, in place after the resize (this runs for every map, also inside ``predict``):
    ``(m - min) / (max - min)`` maps the minimum to exactly 0 and the maximum to exactly 1.
    """
    return normalize_stack(np.asarray(raw, dtype=np.float32)[None], size)[0]


def make_heatmap(
    raw: FloatArray,
    *,
    label: str,
    method: CamMethod,
    geometry: Geometry,
    score: float | None = None,
    logit: float | None = None,
    notes: tuple[str, ...] = (),
    extra: Mapping[str, Any] | None = None,
    normalized: tuple[FloatArray | None, FloatArray, str] | None = None,
) -> Heatmap:
    """A Heatmap from a method's raw map (normalised here unless ``normalized`` is given)."""
    values, relu, reason = normalized if normalized is not None else normalize(raw, geometry.size)
    if not method.class_specific:
        notes = (*notes, "class-agnostic: the same map for every finding")
    return Heatmap(
        label=label,
        method=method.name,
        values=values,
        geometry=geometry,
        raw=relu,
        score=score,
        logit=logit,
        reason=reason,
        notes=notes,
        extra=dict(extra or {}),
    )


def baseline_value(model: Classifier) -> float:
    """The model-input value meaning "no image here": the manifest's letterbox pad value.

    Occlusion, Score-CAM and the deletion/insertion metrics replace pixels with this value, i.e.
    with what the model sees outside the radiograph in every letterboxed input.
    """
    recipe = model.manifest.preprocessing
    lo, hi = recipe.output_range
    return float(recipe.pad_value * (hi - lo) + lo)


def label_index(labels: tuple[str, ...], label: str) -> int:
    """Index of ``label`` (case-insensitive match allowed); ConfigError naming the valid labels."""
    if label in labels:
        return labels.index(label)
    folded = [lab.lower() for lab in labels]
    if label.lower() in folded:
        return folded.index(label.lower())
    raise ConfigError(f"label '{label}' is not a finding of this model; its labels are: {', '.join(labels)}")
