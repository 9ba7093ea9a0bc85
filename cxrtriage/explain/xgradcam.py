"""XGradCAM (Fu et al. 2020): channel weights = sum_ij(G ⊙ A) / sum_ij(A).

With the constant gradient of a GAP + linear head the weight of channel k is
(W_ck / (h*w)) * S_k / S_k = W_ck / (h*w) for every channel that is not all zero (S_k = sum_ij A_k;
a post-ReLU channel with S_k = 0 is zero everywhere and contributes nothing), so
XGradCAM = Grad-CAM = CAM for our models.
"""

from __future__ import annotations

import numpy as np

from cxrtriage.explain.base import CamContext, CamMethod, Family, weighted_sum
from cxrtriage.types import FloatArray


def xgradcam(ctx: CamContext) -> FloatArray:
    """sum_k [sum_ij G_kij A_kij / sum_ij A_kij] * A_k; channels with sum_ij A_k = 0 get weight 0."""
    assert ctx.activations is not None and ctx.gradient is not None
    a = ctx.activations.astype(np.float64)
    s = a.sum(axis=(1, 2))
    num = (np.broadcast_to(ctx.gradient, a.shape) * a).sum(axis=(1, 2))
    weights = np.divide(num, s, out=np.zeros_like(num), where=s > 0)
    return weighted_sum(weights.astype(np.float32), ctx.activations)


METHOD = CamMethod(
    name="xgradcam",
    title="XGrad-CAM",
    family=Family.GRADIENT,
    needs_head=True,
    needs_features=True,
    needs_forward=False,
    class_specific=True,
    summary="activation-normalised gradient weights; equals Grad-CAM/CAM for a GAP + linear head",
    compute=xgradcam,
)
