"""The explicit registry of explanation methods, and which of them a given model supports."""

from __future__ import annotations

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.explain import eigencam, gradcam, gradcampp, hirescam, layercam, occlusion, scorecam, xgradcam
from cxrtriage.explain.base import CamMethod
from cxrtriage.explain.head import head_problem
from cxrtriage.model.manifest import ModelManifest

METHODS: dict[str, CamMethod] = {
    "gradcam": gradcam.METHOD,
    "gradcampp": gradcampp.METHOD,
    "layercam": layercam.METHOD,
    "xgradcam": xgradcam.METHOD,
    "hirescam": hirescam.METHOD,
    "eigencam": eigencam.METHOD,
    "scorecam": scorecam.METHOD,
    "occlusion": occlusion.METHOD,
}

GRADIENT_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.needs_head)


def get_method(name: str) -> CamMethod:
    """The method called ``name``; ConfigError listing the valid names otherwise."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    aliases = {"gradcamplusplus": "gradcampp", "gradcam++": "gradcampp"}
    key = aliases.get(key, key)
    if key not in METHODS:
        raise ConfigError(f"unknown explanation method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[key]


def unavailable_reason(method: CamMethod, manifest: ModelManifest) -> str:
    """Why ``method`` cannot run on the model of ``manifest`` ('' when it can)."""
    if method.needs_head:
        return head_problem(manifest)
    if method.needs_features and manifest.feature_output is None:
        return "the model exports no 'features' output (the last post-ReLU feature map)"
    return ""


def method_availability(manifest: ModelManifest) -> dict[str, str]:
    """Every registered method → '' when it applies to this model, else the reason it does not."""
    return {name: unavailable_reason(m, manifest) for name, m in METHODS.items()}


def require_method(name: str, manifest: ModelManifest) -> CamMethod:
    """The method, or a ModelError that says why it does not apply and which methods still do."""
    method = get_method(name)
    reason = unavailable_reason(method, manifest)
    if reason:
        usable = [n for n, r in method_availability(manifest).items() if not r]
        raise ModelError(
            f"method '{method.name}' cannot explain model '{manifest.name}' ({manifest.path}): {reason}. "
            f"Methods that still apply to this model: {', '.join(usable)}. A real map needs what the method "
            "needs; cxrtriage never draws a substitute."
        )
    return method
