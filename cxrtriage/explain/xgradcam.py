"""XGradCAM (Fu et al. 2020): channel weights = sum_ij(G ⊙ A) / sum_ij(A).

With the constant gradient of a GAP + linear head the weight of channel k is
G_k * S_k / S_k = W_ck / (h*w) for every channel that is not all zero (S_k = sum_ij A_k; a post-ReLU
channel with S_k = 0 is zero everywhere and contributes nothing), so XGradCAM = Grad-CAM = CAM
for our models.
"""

from __future__ import annotations

import numpy as np

from cxrtriage.explain.base import CamContext, CamMethod, Family, gradient_cam
from cxrtriage.types import FloatArray


def weights(grads: FloatArray, activations: FloatArray) -> FloatArray:
    """w_k = sum_ij G_k A_kij / sum_ij A_kij (0 where the channel is all zero)."""
    s = activations.sum(axis=(1, 2), dtype=np.float64)[None, :]
    num = grads.astype(np.float64) * s
    w_k: FloatArray = np.divide(num, s, out=np.zeros_like(num), where=s > 0).astype(np.float32)
    return w_k


def xgradcam(ctx: CamContext) -> FloatArray:
    """sum_k [sum_ij G_kij A_kij / sum_ij A_kij] * A_k on the feature grid."""
    return gradient_cam(ctx, weights)


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
    channel_weights=weights,
)
