"""Triage policy: which findings are critical or urgent, and the pure rule that turns scores into a priority.

The policy lives in a TOML file (the packaged ``default_policy.toml``, or ``--policy FILE``); the
thresholds come from the model manifest or, with a site file, from the site. See docs/triage.md.
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.model.manifest import ModelManifest
from cxrtriage.results import ImageRecord, Priority, Status
from cxrtriage.triage.site import SiteCalibration, check_site

log = logging.getLogger(__name__)

POLICY_SCHEMA_VERSION = 1
DEFAULT_POLICY_RESOURCE = "default_policy.toml"


class ThresholdKind(StrEnum):
    RULE_OUT = "rule_out"  # high-sensitivity operating point
    BALANCED = "balanced"  # Youden operating point


def normalize_label(name: str) -> str:
    """Label key for matching: lower case, with runs of spaces, hyphens and underscores as one underscore."""
    return re.sub(r"[\s_\-]+", "_", name.strip().lower()).strip("_")


@dataclass(frozen=True, slots=True)
class LevelRule:
    """Findings that raise a study to ``priority`` when at or above their ``threshold`` kind."""

    priority: Priority
    findings: tuple[str, ...]
    threshold: ThresholdKind


@dataclass(frozen=True, slots=True)
class TriagePolicy:
    """A parsed policy. Label names are stored normalised (see ``normalize_label``)."""

    name: str
    levels: tuple[LevelRule, ...]  # critical first, then urgent
    summary_labels: tuple[str, ...] = ()
    ignored_labels: tuple[str, ...] = ()
    label_thresholds: dict[str, ThresholdKind] = field(default_factory=dict)
    description: str = ""
    source: str = "packaged default"

    def mentioned_labels(self) -> tuple[str, ...]:
        """Every finding or summary label the policy names (ignored labels excluded)."""
        names = [f for lvl in self.levels for f in lvl.findings] + list(self.summary_labels) + list(self.label_thresholds)
        return tuple(dict.fromkeys(names))

    def unknown_labels(self, model_labels: Iterable[str]) -> tuple[str, ...]:
        """Labels named by the policy that the model does not have (they are ignored)."""
        have = {normalize_label(lab) for lab in model_labels}
        return tuple(lab for lab in self.mentioned_labels() if lab not in have)

    def level_of(self, label: str) -> LevelRule | None:
        key = normalize_label(label)
        for lvl in self.levels:
            if key in lvl.findings:
                return lvl
        return None

    def is_ignored(self, label: str) -> bool:
        return normalize_label(label) in self.ignored_labels


@dataclass(frozen=True, slots=True)
class TriageDecision:
    """The priority of one image and why: the deciding finding, its score and the threshold it met (or missed)."""

    priority: Priority
    reason: str
    deciding_label: str | None = None
    deciding_score: float | None = None
    threshold: float | None = None
    threshold_kind: ThresholdKind | None = None
    threshold_source: str | None = None  # "model" (manifest) or "site"


# --------------------------------------------------------------------------------------------- loading

_TOP_KEYS = {"schema_version", "name", "description", "levels", "labels", "thresholds"}
_LEVEL_KEYS = {"findings", "threshold"}
_LEVELS = (Priority.CRITICAL, Priority.URGENT)


def _kind(value: Any, where: str) -> ThresholdKind:
    try:
        return ThresholdKind(str(value))
    except ValueError:
        raise ConfigError(f"{where}: threshold must be one of {[k.value for k in ThresholdKind]}, got {value!r}") from None


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: must be a list of label names, e.g. [\"pneumothorax\"]")
    return tuple(dict.fromkeys(normalize_label(v) for v in value))


def parse_policy(data: Mapping[str, Any], *, source: str) -> TriagePolicy:
    """Validate parsed TOML and build a ``TriagePolicy`` (``source`` names the file in messages)."""
    if data.get("schema_version") != POLICY_SCHEMA_VERSION:
        raise ConfigError(f"{source}: schema_version must be {POLICY_SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    extra = set(data) - _TOP_KEYS
    if extra:
        raise ConfigError(f"{source}: unknown key(s) {sorted(extra)}; valid keys are {sorted(_TOP_KEYS)}")
    levels_raw = data.get("levels", {})
    if not isinstance(levels_raw, dict):
        raise ConfigError(f"{source}: [levels] must be a table")
    bad = set(levels_raw) - {p.value for p in _LEVELS}
    if bad:
        raise ConfigError(
            f"{source}: [levels] may only define {[p.value for p in _LEVELS]}, not {sorted(bad)}: routine, normal and "
            "not_assessed follow from the rule-out thresholds and cannot be configured"
        )
    levels: list[LevelRule] = []
    seen: dict[str, str] = {}
    for prio in _LEVELS:
        raw = levels_raw.get(prio.value)
        if raw is None:
            continue
        where = f"{source} [levels.{prio.value}]"
        if not isinstance(raw, dict) or set(raw) - _LEVEL_KEYS:
            raise ConfigError(f"{where}: must be a table with keys {sorted(_LEVEL_KEYS)}")
        if "threshold" not in raw:
            raise ConfigError(f"{where}: 'threshold' is missing; write threshold = \"balanced\" or \"rule_out\"")
        findings = _names(raw.get("findings", []), f"{where} findings")
        for f in findings:
            if f in seen:
                raise ConfigError(f"{where}: '{f}' is already listed under [levels.{seen[f]}]; list each finding once")
            seen[f] = prio.value
        levels.append(LevelRule(prio, findings, _kind(raw["threshold"], f"{where} threshold")))
    labels_raw = data.get("labels", {})
    if not isinstance(labels_raw, dict) or set(labels_raw) - {"summary", "ignore"}:
        raise ConfigError(f"{source}: [labels] must be a table with keys 'summary' and/or 'ignore'")
    summary = _names(labels_raw.get("summary", []), f"{source} [labels] summary")
    ignored = _names(labels_raw.get("ignore", []), f"{source} [labels] ignore")
    for lab in summary:
        if lab in seen:
            raise ConfigError(
                f"{source}: '{lab}' is a summary label and also listed under [levels.{seen[lab]}]; a summary label "
                "cannot raise a study above routine: remove it from one of the two"
            )
    for lab in ignored:
        if lab in seen or lab in summary:
            raise ConfigError(f"{source}: '{lab}' is listed under [labels] ignore and also used elsewhere; remove it from one")
    thr_raw = data.get("thresholds", {})
    if not isinstance(thr_raw, dict):
        raise ConfigError(f"{source}: [thresholds] must be a table of label = \"rule_out\" | \"balanced\"")
    label_thresholds = {normalize_label(k): _kind(v, f"{source} [thresholds] {k}") for k, v in thr_raw.items()}
    return TriagePolicy(
        name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", "")),
        levels=tuple(levels),
        summary_labels=summary,
        ignored_labels=ignored,
        label_thresholds=label_thresholds,
        source=source,
    )


def default_policy_text() -> str:
    """The packaged default policy file's text (documented in docs/triage.md)."""
    return resources.files("cxrtriage.triage").joinpath(DEFAULT_POLICY_RESOURCE).read_text(encoding="utf-8")


def load_policy(path: str | Path | None = None, *, labels: Sequence[str] | None = None) -> TriagePolicy:
    """Read a policy file (``None``: the packaged default).

    With the model's ``labels``, each label the policy names but the model lacks is reported with a
    warning (it is ignored by ``decide_priority``).
    """
    if path is None:
        source, text = "packaged default policy", default_policy_text()
    else:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: policy file not found; pass --policy with an existing TOML file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read the policy file ({exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
    policy = parse_policy(data, source=source)
    if labels is not None:
        unknown = policy.unknown_labels(labels)
        if unknown:
            log.warning(
                "triage policy '%s' (%s): %s not among the model's labels %s; ignored",
                policy.name, source, ", ".join(unknown), list(labels),
            )
    return policy


def check_policy(policy: TriagePolicy, manifest: ModelManifest, site: SiteCalibration | None = None) -> None:
    """Fail early (ModelError/ConfigError) when a label that triage needs has no threshold, or the site is for another model."""
    if site is not None:
        check_site(site, manifest)
    for label in manifest.labels:
        if policy.is_ignored(label):
            continue
        if label not in manifest.thresholds and (site is None or label not in site.labels):
            raise ModelError(
                f"{manifest.path}: model '{manifest.name}' has no rule_out/balanced thresholds for label '{label}', so it "
                "cannot be triaged; add thresholds to the manifest, calibrate a site file, or list the label under "
                "[labels] ignore in the policy"
            )


# --------------------------------------------------------------------------------------------- deciding


def _threshold(label: str, kind: ThresholdKind, manifest: ModelManifest, site: SiteCalibration | None) -> tuple[float, str]:
    if site is not None:
        t = site.threshold(label, kind.value)
        if t is not None:
            return t, "site"
    lt = manifest.thresholds.get(label)
    if lt is None:
        raise ModelError(
            f"{manifest.path}: model '{manifest.name}' has no thresholds for label '{label}'; add rule_out/balanced "
            "thresholds to its manifest or calibrate a site file"
        )
    return (lt.rule_out if kind is ThresholdKind.RULE_OUT else lt.balanced).threshold, "model"


def format_pair(score: float, threshold: float) -> tuple[str, str]:
    """Format a score and threshold with just enough decimals (2 to 6) that they read differently when they differ."""
    for d in range(2, 7):
        s, t = f"{score:.{d}f}", f"{threshold:.{d}f}"
        if s != t or score == threshold:
            return s, t
    return f"{score:.6g}", f"{threshold:.6g}"


def _describe(label: str, score: float, t: float, kind: ThresholdKind, src: str) -> str:
    s, ts = format_pair(score, t)
    op = ">=" if score >= t else "<"
    return f"{label} {s} {op} {ts} ({'site ' if src == 'site' else ''}{kind.value})"


def decide_priority(
    scores: Mapping[str, float],
    *,
    manifest: ModelManifest,
    policy: TriagePolicy,
    site: SiteCalibration | None = None,
) -> TriageDecision:
    """The triage priority of one image from its scores. Pure: no I/O.

    ``scores`` are the model's calibrated scores by label or, when ``site`` is given, the SITE-calibrated
    scores (``apply_site`` output): site thresholds are on that scale. Rules, in order:

    1. a label of the model (not ignored by the policy) without a finite score -> ``not_assessed``;
    2. any critical finding >= its threshold -> ``critical``, else any urgent one -> ``urgent``
       (the highest-scoring such finding decides);
    3. every finding and summary label < its ``rule_out`` threshold -> ``normal``;
    4. otherwise -> ``routine`` (the highest-scoring label above rule-out decides).
    """
    if site is not None:
        check_site(site, manifest)
    labels = [lab for lab in manifest.labels if not policy.is_ignored(lab)]
    if not labels:
        why = f"every label of model '{manifest.name}' is ignored by policy '{policy.name}'"
        return TriageDecision(Priority.NOT_ASSESSED, why)
    missing = [lab for lab in labels if not _finite(scores.get(lab))]
    if missing:
        return TriageDecision(Priority.NOT_ASSESSED, f"no valid score for {', '.join(missing)}")
    values = {lab: float(scores[lab]) for lab in labels}

    for level in policy.levels:
        hits: list[tuple[float, int, str, float, ThresholdKind, str]] = []
        for i, lab in enumerate(labels):
            if normalize_label(lab) not in level.findings:
                continue
            kind = policy.label_thresholds.get(normalize_label(lab), level.threshold)
            t, src = _threshold(lab, kind, manifest, site)
            if values[lab] >= t:
                hits.append((values[lab], -i, lab, t, kind, src))
        if hits:
            score, _, lab, t, kind, src = max(hits)
            reason = _describe(lab, score, t, kind, src)
            if len(hits) > 1:
                reason += f"; also {', '.join(h[2] for h in sorted(hits, reverse=True)[1:])}"
            return TriageDecision(level.priority, reason, lab, score, t, kind, src)

    above: list[tuple[float, int, str, float, str]] = []
    closest: tuple[float, int, str, float, str] | None = None
    for i, lab in enumerate(labels):
        t, src = _threshold(lab, ThresholdKind.RULE_OUT, manifest, site)
        if values[lab] >= t:
            above.append((values[lab], -i, lab, t, src))
        margin = values[lab] - t
        if closest is None or margin > closest[0]:
            closest = (margin, -i, lab, t, src)
    if not above:
        assert closest is not None
        _, _, lab, t, src = closest
        reason = (f"all {len(labels)} findings below their rule-out thresholds; closest: "
                  f"{_describe(lab, values[lab], t, ThresholdKind.RULE_OUT, src)}")
        return TriageDecision(Priority.NORMAL, reason, lab, values[lab], t, ThresholdKind.RULE_OUT, src)
    score, _, lab, t, src = max(above)
    reason = _describe(lab, score, t, ThresholdKind.RULE_OUT, src)
    if len(above) > 1:
        reason += f" (+{len(above) - 1} more above rule-out)"
    reason += "; nothing critical or urgent at its decision threshold"
    return TriageDecision(Priority.ROUTINE, reason, lab, score, t, ThresholdKind.RULE_OUT, src)


def _to_float(v: Any) -> float:
    """``v`` as a finite float, else NaN (None, "", text and inf included)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _finite(v: Any) -> bool:
    return not math.isnan(_to_float(v))


def scores_from_record(record: ImageRecord, labels: Iterable[str]) -> dict[str, float]:
    """The scores of ``labels`` in ``record`` (missing or non-finite scores become NaN)."""
    return {lab: _to_float(record.scores.get(lab)) for lab in labels}


def triage_record(
    record: ImageRecord,
    *,
    manifest: ModelManifest,
    policy: TriagePolicy,
    site: SiteCalibration | None = None,
) -> ImageRecord:
    """``record`` with ``priority``, ``priority_reason``, ``priority_finding`` and ``priority_score`` decided.

    A record that is not ``scored`` (excluded, failed) is ``not_assessed`` with its own ``reason`` copied. The
    scores are the record's ``scores`` (site-calibrated when ``site``).
    """
    if record.status is not Status.SCORED:
        why = (record.reason or "").strip()
        return record.replace(priority=Priority.NOT_ASSESSED,
                              priority_reason=f"{record.status.value}: {why}" if why else record.status.value,
                              priority_finding="", priority_score=None)
    d = decide_priority(scores_from_record(record, manifest.labels), manifest=manifest, policy=policy, site=site)
    return record.replace(priority=d.priority, priority_reason=d.reason, priority_finding=d.deciding_label or "",
                          priority_score=d.deciding_score)
