"""Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the last feature map.

Class-agnostic and gradient-free: the activations [C, h, w] are reshaped to (h*w) x C, centred
(each channel's mean over positions subtracted), and projected on their first right-singular
vector. An SVD component has no intrinsic sign, so the sign is chosen to make the map correlate
positively with the channel-mean activation (the hot spot is where the network is most active).
"""

from __future__ import annotations

import numpy as np

from cxrtriage.explain.base import CamContext, CamMethod, Family
from cxrtriage.types import FloatArray


def eigencam(ctx: CamContext) -> FloatArray:
    """Projection of the mean-centred activations on their first principal direction, sign-fixed."""
    assert ctx.activations is not None
    c, h, w = ctx.activations.shape
    x = ctx.activations.reshape(c, h * w).T.astype(np.float64)  # positions x channels
    x = x - x.mean(axis=0, keepdims=True)
    if not np.any(x):
        return np.zeros((h, w), np.float32)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[0]
    mean_act = ctx.activations.reshape(c, h * w).mean(axis=0).astype(np.float64)
    if float(np.dot(proj - proj.mean(), mean_act - mean_act.mean())) < 0:
        proj = -proj
    cam: FloatArray = proj.reshape(h, w).astype(np.float32)
    return cam


METHOD = CamMethod(
    name="eigencam",
    title="Eigen-CAM",
    family=Family.ACTIVATION,
    needs_head=False,
    needs_features=True,
    needs_forward=False,
    class_specific=False,
    summary="first principal component of the last feature map (class-agnostic, no gradient)",
    compute=eigencam,
)
