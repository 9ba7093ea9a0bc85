"""LayerCAM (Jiang et al. 2021): sum_k ReLU(G_k) ⊙ A_k.

For a GAP + linear head this is sum_k max(W_ck, 0) A_k / (h*w): only channels that raise the
logit contribute, and negative evidence is ignored rather than subtracted, so the map is never
all zero unless no channel with a positive weight is active. It differs from Grad-CAM.
"""

from __future__ import annotations

import numpy as np

from cxrtriage.explain.base import CamContext, CamMethod, Family
from cxrtriage.types import FloatArray


def layercam(ctx: CamContext) -> FloatArray:
    """sum_k ReLU(dy_c/dA_k) ⊙ A_k on the feature grid."""
    assert ctx.activations is not None and ctx.gradient is not None
    return np.sum(np.maximum(ctx.gradient, 0.0) * ctx.activations, axis=0, dtype=np.float32)


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
)
