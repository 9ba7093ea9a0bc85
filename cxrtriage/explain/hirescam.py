"""HiResCAM (Draelos & Carin 2020): element-wise gradient x activation, summed over channels.

The gradient through a GAP + linear head is the same at every position (G_k = W_ck / (h*w)), so
sum_k G_k ⊙ A_k = sum_k G_k A_k: channel weights G, i.e. HiResCAM = Grad-CAM = CAM. It differs from
Grad-CAM only for heads whose gradient varies over space (not the case for our models). The
tests compare it with autograd's element-wise G ⊙ A on real images.
"""

from __future__ import annotations

from cxrtriage.explain.base import CamContext, CamMethod, Family, gradient_cam
from cxrtriage.types import FloatArray


def weights(grads: FloatArray, activations: FloatArray) -> FloatArray:
    """G_k ⊙ A_k summed over k with G constant over positions: channel weights G_k."""
    return grads


def hirescam(ctx: CamContext) -> FloatArray:
    """sum_k (dy_c/dA_k ⊙ A_k) on the feature grid."""
    return gradient_cam(ctx, weights)


METHOD = CamMethod(
    name="hirescam",
    title="HiResCAM",
    family=Family.GRADIENT,
    needs_head=True,
    needs_features=True,
    needs_forward=False,
    class_specific=True,
    summary="element-wise gradient x activation; equals Grad-CAM/CAM for a GAP + linear head",
    compute=hirescam,
    channel_weights=weights,
)
