"""LayerCAM (Jiang et al. 2021): sum_k ReLU(G_k) ⊙ A_k.

For a GAP + linear head G is constant over positions, so this is sum_k max(W_ck, 0) A_k / (h*w):
only channels that raise the logit contribute, and negative evidence is ignored rather than
subtracted. It differs from Grad-CAM (usually a broader map).
"""

from __future__ import annotations

import numpy as np

from cxrtriage.explain.base import CamContext, CamMethod, Family, gradient_cam
from cxrtriage.types import FloatArray


def weights(grads: FloatArray, activations: FloatArray) -> FloatArray:
    """ReLU(G_k): with G constant over positions, sum_k ReLU(G_k) ⊙ A_k has channel weights ReLU(G_k)."""
    return np.maximum(grads, np.float32(0.0))


def layercam(ctx: CamContext) -> FloatArray:
    """sum_k ReLU(dy_c/dA_k) ⊙ A_k on the feature grid."""
    return gradient_cam(ctx, weights)


METHOD = CamMethod(
    name="layercam",
    title="LayerCAM",
    family=Family.GRADIENT,
    needs_head=True,
    needs_features=True,
    needs_forward=False,
    class_specific=True,
    summary="positive gradients x activations, element-wise; ignores channels that lower the score",
    compute=layercam,
    channel_weights=weights,
)
