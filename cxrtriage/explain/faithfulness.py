"""Faithfulness of a map: deletion and insertion AUC (Petsiuk et al. 2018, RISE), run through the model.

Pixels of the model input (inside the image area; letterbox padding excluded) are ranked by the
map, hottest first (ties broken by a fixed random order). Deletion replaces the top fraction f
of pixels with the "no image" value (the letterbox pad value) and records the calibrated score of
the finding; insertion starts from a blurred copy of the input (Gaussian, sigma = 5 px per 224 px
of input) and puts back the top fraction f of the original pixels. Both curves are sampled at
f = 0, 1/steps, ..., 1 and integrated with the trapezoid rule over f in [0, 1].
A faithful map has a LOW deletion AUC (the score falls fast) and a HIGH insertion AUC. Two
references put the numbers in context: the same metrics for a random ranking of the same image,
and for the map's own ranking reversed (least relevant first, "LeRF" in the ROAD terminology of
Rong et al. 2022): deletion(reversed) - deletion(map) > 0 says the hot regions matter more to the
model than the cold ones. Pixel replacement takes images out of the training distribution (a
scattered-pixel random deletion is the extreme case), which is why the reversed-map reference
is the fairer one; see docs/explain.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxrtriage.explain.base import baseline_value
from cxrtriage.model import Classifier
from cxrtriage.preprocess import ModelInput
from cxrtriage.types import FloatArray


@dataclass(frozen=True, slots=True)
class Faithfulness:
    """Deletion / insertion curves (calibrated score vs fraction of pixels) and their AUCs."""

    deletion_auc: float
    insertion_auc: float
    fractions: FloatArray
    deletion_curve: FloatArray
    insertion_curve: FloatArray


def _auc(fractions: np.ndarray, curve: np.ndarray) -> float:
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(fractions)) / 2.0)


def pixel_order(values: FloatArray, region: tuple[int, int, int, int], *, seed: int = 0) -> np.ndarray:
    """Flat indices (into the S x S input) of the pixels inside ``region``, hottest first."""
    s = values.shape[0]
    py, px, ph, pw = region
    yy, xx = np.mgrid[py : py + ph, px : px + pw]
    flat = (yy * s + xx).ravel()
    v = values.ravel()[flat]
    tie = np.random.default_rng(seed).random(flat.size)
    order: np.ndarray = flat[np.lexsort((tie, -v))]
    return order


def deletion_insertion(
    model: Classifier,
    model_input: ModelInput,
    values: FloatArray,
    label_index: int,
    *,
    steps: int = 24,
    batch_size: int = 32,
    seed: int = 0,
    reverse: bool = False,
) -> Faithfulness:
    """Deletion and insertion AUC of ``values`` (an [S, S] map) for one finding of one input.

    ``reverse=True`` ranks the pixels coldest first (the "least relevant first" reference).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    s = model.input_size
    if values.shape != (s, s):
        raise ValueError(f"the map must be [{s}, {s}] (model-input resolution), got {values.shape}")
    x = model_input.array.reshape(s, s).astype(np.float32)
    order = pixel_order(values, model_input.geometry.placed, seed=seed)
    if reverse:
        order = order[::-1]
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.rint(fractions * order.size).astype(int)
    py, px, ph, pw = model_input.geometry.placed
    blurred = x.copy()
    sigma = 5.0 * s / 224.0
    blurred[py : py + ph, px : px + pw] = cv2.GaussianBlur(
        np.ascontiguousarray(x[py : py + ph, px : px + pw]), (0, 0), sigmaX=sigma, sigmaY=sigma,
        borderType=cv2.BORDER_REFLECT)
    base = np.float32(baseline_value(model))
    inputs = np.empty((2 * counts.size, 1, s, s), np.float32)
    for i, n in enumerate(counts):
        d = x.ravel().copy()
        d[order[:n]] = base
        inputs[i, 0] = d.reshape(s, s)
        ins = blurred.ravel().copy()
        ins[order[:n]] = x.ravel()[order[:n]]
        inputs[counts.size + i, 0] = ins.reshape(s, s)
    scores = np.concatenate([model.run(inputs[i : i + batch_size]).scores[:, label_index]
                             for i in range(0, inputs.shape[0], batch_size)])
    deletion, insertion = scores[: counts.size], scores[counts.size :]
    return Faithfulness(
        deletion_auc=_auc(fractions, deletion),
        insertion_auc=_auc(fractions, insertion),
        fractions=fractions.astype(np.float32),
        deletion_curve=deletion.astype(np.float32),
        insertion_curve=insertion.astype(np.float32),
    )
