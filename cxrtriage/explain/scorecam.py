"""Score-CAM (Wang et al. 2020): channel weights from forward passes over activation-masked inputs.

Gradient-free; needs the feature map and extra forward passes but no head. For each selected
channel k the activation A_k is upsampled (bilinear) to the model input, min-max normalised to a
mask M_k in [0, 1], and the input is blended towards the "no image" value outside the mask:
x_k = b + M_k (x - b). The channel's score is the target logit of x_k; the weights are the
softmax of these scores over the selected channels; the map is sum_k w_k A_k. Cost is bounded by
``top_k`` (channels with the largest mean activation; None = all) and ``batch_size``.
"""

from __future__ import annotations

import numpy as np

from cxrtriage.errors import ConfigError
from cxrtriage.explain.base import CamContext, CamMethod, Family, upsample, weighted_sum
from cxrtriage.types import FloatArray


def scorecam(ctx: CamContext) -> FloatArray:
    """Softmax-of-masked-scores weighted sum of the activations on the feature grid."""
    assert ctx.activations is not None and ctx.model is not None and ctx.model_input is not None
    assert ctx.baseline is not None
    a = ctx.activations
    c = a.shape[0]
    top_k = ctx.options["top_k"]
    batch_size = int(ctx.options["batch_size"])
    if (top_k is not None and int(top_k) < 1) or batch_size < 1:
        raise ConfigError(f"scorecam needs top_k >= 1 (or None for all channels) and batch_size >= 1, "
                          f"got top_k={top_k}, batch_size={batch_size}")
    spread = a.max(axis=(1, 2)) - a.min(axis=(1, 2))
    candidates = np.flatnonzero(spread > 0)  # a constant channel gives no mask
    if candidates.size == 0:
        return np.zeros(a.shape[1:], np.float32)
    order = candidates[np.argsort(-a[candidates].mean(axis=(1, 2)), kind="stable")]
    chosen = order[: int(top_k)] if top_k is not None else order
    s = ctx.size
    x = ctx.model_input.reshape(s, s).astype(np.float32)
    b = np.float32(ctx.baseline)
    scores = np.empty(chosen.size, np.float64)
    for i in range(0, chosen.size, batch_size):
        ks = chosen[i : i + batch_size]
        batch = np.empty((ks.size, 1, s, s), np.float32)
        for j, k in enumerate(ks):
            m = upsample(a[k], s)
            lo, hi = float(m.min()), float(m.max())
            m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
            batch[j, 0] = b + m * (x - b)
        scores[i : i + ks.size] = ctx.model.run(batch).logits[:, ctx.label_index]
    w = np.exp(scores - scores.max())
    w /= w.sum()
    weights = np.zeros(c, np.float32)
    weights[chosen] = w.astype(np.float32)
    return weighted_sum(weights, a)


METHOD = CamMethod(
    name="scorecam",
    title="Score-CAM",
    family=Family.PERTURBATION,
    needs_head=False,
    needs_features=True,
    needs_forward=True,
    class_specific=True,
    summary="channel weights from the scores of activation-masked inputs (no gradient; top_k forward passes)",
    compute=scorecam,
    options={"top_k": 64, "batch_size": 32},
)
