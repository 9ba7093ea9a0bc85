"""Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of the gradient.

For a GAP + linear head and the post-ReLU last feature map, the gradient of logit c is
W_ck / (h*w) at every position, so its spatial mean is itself and Grad-CAM =
ReLU(sum_k W_ck A_k) / (h*w): exactly the CAM of Zhou et al. (2016) up to a positive factor,
which the min-max normalisation removes.
"""

from __future__ import annotations

from cxrtriage.explain.base import CamContext, CamMethod, Family, gradient_cam
from cxrtriage.types import FloatArray


def weights(grads: FloatArray, activations: FloatArray) -> FloatArray:
    """w_k = mean_ij dy/dA_kij; the gradient [L, C] is already constant over positions."""
    return grads


def gradcam(ctx: CamContext) -> FloatArray:
    """sum_k mean_ij(dy_c/dA_kij) * A_k on the feature grid."""
    return gradient_cam(ctx, weights)


METHOD = CamMethod(
    name="gradcam",
    title="Grad-CAM",
    family=Family.GRADIENT,
    needs_head=True,
    needs_features=True,
    needs_forward=False,
    class_specific=True,
    summary="gradient-weighted sum of the last feature map; equals CAM for a GAP + linear head",
    compute=gradcam,
    channel_weights=weights,
)
