"""Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the logit as the score).

alpha_kij = G^2 / (2 G^2 + sum_ab A_kab * G^3) where G != 0 (else 0); w_k = sum_ij ReLU(G_kij) alpha_kij;
map = sum_k w_k A_k. For positive G the fraction equals 1 / (2 + S_k G), which is computed directly:
no epsilon is added. (pytorch-grad-cam adds eps = 1e-6 to the denominator; with the small
gradients of a GAP head, G^2 ~ 1e-6, that epsilon visibly changes the map.)
For a GAP + linear head G = W_ck / (h*w), so w_k = ReLU(W_ck) / (2 + S_k W_ck / (h*w)).
"""

from __future__ import annotations

import numpy as np

from cxrtriage.explain.base import CamContext, CamMethod, Family, weighted_sum
from cxrtriage.types import FloatArray


def gradcampp(ctx: CamContext) -> FloatArray:
    """Grad-CAM++ weights from the gradient and the per-channel activation sums."""
    assert ctx.activations is not None and ctx.gradient is not None
    a = ctx.activations.astype(np.float64)
    g = np.broadcast_to(ctx.gradient, a.shape).astype(np.float64)
    s = a.sum(axis=(1, 2))[:, None, None]
    pos = g > 0  # ReLU(G) is zero elsewhere, so alpha there does not matter
    denom = 2.0 + s * g
    alpha = np.divide(1.0, denom, out=np.zeros_like(g), where=pos & (denom > 0))
    weights = np.sum(np.where(pos, g, 0.0) * alpha, axis=(1, 2))
    return weighted_sum(weights.astype(np.float32), ctx.activations)


METHOD = CamMethod(
    name="gradcampp",
    title="Grad-CAM++",
    family=Family.GRADIENT,
    needs_head=True,
    needs_features=True,
    needs_forward=False,
    class_specific=True,
    summary="positive-gradient weights rescaled per channel by its total activation (Grad-CAM++ eq. 19)",
    compute=gradcampp,
)
