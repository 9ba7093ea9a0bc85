"""Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the logit as the score).

alpha_kij = G^2 / (2 G^2 + S_k G^3) where G != 0 (else 0), S_k = sum_ab A_kab;
w_k = sum_ij ReLU(G_kij) alpha_kij; map = sum_k w_k A_k. For G > 0 the fraction equals
1 / (2 + S_k G), computed in that form: no epsilon is added. (pytorch-grad-cam adds eps = 1e-6 to
the denominator; with the small gradients of a GAP head, G^2 ~ 1e-6, that epsilon visibly changes
the map.) With the constant gradient of a GAP + linear head, G_k = W_ck / (h*w) and
w_k = (h*w) ReLU(G_k) / (2 + S_k G_k).
"""

from __future__ import annotations

import numpy as np

from cxrtriage.explain.base import CamContext, CamMethod, Family, gradient_cam
from cxrtriage.types import FloatArray


def weights(grads: FloatArray, activations: FloatArray) -> FloatArray:
    """w_k = sum_ij ReLU(G_k) alpha_k = (h*w) G_k / (2 + S_k G_k) for G_k > 0, else 0."""
    _, h, w = activations.shape
    s = activations.sum(axis=(1, 2), dtype=np.float64)[None, :]
    g = grads.astype(np.float64)
    denom = 2.0 + s * g
    pos = g > 0  # ReLU(G) is zero elsewhere, so alpha there does not matter (denom > 2 where pos)
    out = np.divide(h * w * g, denom, out=np.zeros_like(g), where=pos)
    w_k: FloatArray = out.astype(np.float32)
    return w_k


def gradcampp(ctx: CamContext) -> FloatArray:
    """Grad-CAM++ weights from the gradient and the per-channel activation sums."""
    return gradient_cam(ctx, weights)


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
    channel_weights=weights,
)
