"""What results are compared with: the model's validation distribution (its manifest's ``reference``) or earlier
results, reduced to the same ``Profile`` as the current results (``cxrtriage.monitor.profile``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrtriage.errors import ModelError
from cxrtriage.model.integrity import canonical_json
from cxrtriage.model.manifest import ModelManifest
from cxrtriage.monitor.profile import Profile
from cxrtriage.monitor.stats import ScoreDistribution

POPULATIONS = ("all", "adult", "pediatric")
REFERENCE_HOWTO = ("add it with `cxrtriage train reference --out MODEL_FOLDER` and re-seal with `cxrtriage models seal "
                   "MODEL_FOLDER`, or give an earlier results folder with --reference")


def _bad(manifest: ModelManifest, what: str) -> ModelError:
    return ModelError(f"{manifest.path}: the manifest's 'reference' {what}; {REFERENCE_HOWTO}")


def _counts(value: Any, manifest: ModelManifest, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(isinstance(v, int | float) and v >= 0 for v in value.values()):
        raise _bad(manifest, f"'{where}' is not a mapping of counts")
    return {str(k): float(v) for k, v in value.items()}


def model_reference(manifest: ModelManifest, population: str = "all") -> Profile:
    """The validation distribution recorded in ``manifest`` for ``population`` (``all``, ``adult``, ``pediatric``).

    Raises:
        ModelError: the manifest has no reference, it is malformed, or it describes other scores than the manifest's
            (a different calibration or ONNX file: it must be recomputed).
    """
    ref = manifest.extra.get("reference")
    if not isinstance(ref, Mapping):
        raise ModelError(f"{manifest.path}: model '{manifest.name}' {manifest.version} has no validation reference in "
                         f"its manifest; {REFERENCE_HOWTO}")
    if ref.get("onnx_sha256") != manifest.sha256:
        raise _bad(manifest, "was computed for another ONNX file")
    if ref.get("calibration_sha256") != calibration_digest(manifest):
        raise _bad(manifest, "was computed with another calibration than the manifest's (the scores would not match)")
    pops = ref.get("populations")
    if not isinstance(pops, Mapping) or population not in pops:
        have = sorted(pops) if isinstance(pops, Mapping) else []
        raise ModelError(f"{manifest.path}: no reference population '{population}' (the manifest has {have})")
    pop = pops[population]
    if not isinstance(pop, Mapping) or not isinstance(pop.get("n"), int) or not isinstance(pop.get("scores"), Mapping):
        raise _bad(manifest, f"population '{population}' is malformed")
    n = int(pop["n"])
    scores: dict[str, ScoreDistribution] = {}
    for label in manifest.labels:
        q = pop["scores"].get(label)
        if not isinstance(q, Sequence) or len(q) < 3 or not all(isinstance(v, int | float) for v in q):
            raise _bad(manifest, f"population '{population}' has no score quantiles for '{label}'")
        scores[label] = ScoreDistribution.of_quantiles([float(v) for v in q], n)
    categories = {key: _counts(pop.get(key, {}), manifest, f"{population}.{key}") for key in ("age_band", "sex", "view")}
    sources = ", ".join(f"{k} {v}" for k, v in pop.get("sources", {}).items())
    return Profile(
        name=f"model {manifest.name} {manifest.version}: validation split, {population} ({n} images: {sources})",
        kind="model", rows=n, scored=n, scores=scores, scored_categories=categories, model_sha256=manifest.sha256,
    )


def model_populations(manifest: ModelManifest) -> tuple[str, ...]:
    """The populations the manifest's validation reference describes (none when it has no reference)."""
    ref = manifest.extra.get("reference")
    pops = ref.get("populations") if isinstance(ref, Mapping) else None
    return tuple(str(p) for p in pops) if isinstance(pops, Mapping) else ()


def calibration_digest(manifest: ModelManifest) -> str:
    """sha256 of the canonical JSON of the manifest file's ``calibration`` (what the training recipe records)."""
    if manifest.path is None:
        return ""
    data = json.loads(Path(manifest.path).read_text(encoding="utf-8"))
    return hashlib.sha256(canonical_json(data.get("calibration") or {})).hexdigest()
