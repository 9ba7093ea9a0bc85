"""HiResCAM (Draelos & Carin 2020): element-wise gradient x activation, summed over channels.

Because the gradient through a GAP + linear head is the same at every position
(W_ck / (h*w)), HiResCAM = sum_k W_ck A_k / (h*w) = Grad-CAM = CAM. HiResCAM differs from
Grad-CAM only for heads whose gradient varies over space (not the case for our models).
"""

from __future__ import annotations

import numpy as np

from cxrtriage.explain.base import CamContext, CamMethod, Family
from cxrtriage.types import FloatArray


def hirescam(ctx: CamContext) -> FloatArray:
    """sum_k (dy_c/dA_k ⊙ A_k) on the feature grid."""
    assert ctx.activations is not None and ctx.gradient is not None
    return np.sum(ctx.gradient * ctx.activations, axis=0, dtype=np.float32)


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
)
