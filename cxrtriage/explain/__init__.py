"""Explanations of classifier scores: exact Grad-CAM family from ONNX outputs, Eigen-CAM, Score-CAM, occlusion.

``cxrtriage.explain(model, image, label, method="gradcam", **options) -> Heatmap`` works both as
``from cxrtriage.explain import explain`` and as ``cxrtriage.explain(...)``: this package module is
callable (it forwards to ``explain``), because the package and the function share the name.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from cxrtriage.explain.api import explain, explain_input, explain_output, flagged_labels
from cxrtriage.explain.base import CamMethod, Family, HeadWeights, Heatmap
from cxrtriage.explain.head import read_head
from cxrtriage.explain.registry import METHODS, get_method, method_availability, require_method

__all__ = [
    "METHODS",
    "CamMethod",
    "Family",
    "HeadWeights",
    "Heatmap",
    "explain",
    "explain_input",
    "explain_output",
    "flagged_labels",
    "get_method",
    "method_availability",
    "read_head",
    "require_method",
]


class _CallableModule(types.ModuleType):
    """Lets ``cxrtriage.explain(...)`` call the function even after the package itself was imported."""

    def __call__(self, *args: Any, **kwargs: Any) -> Heatmap:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
