"""Triage policy: which findings are critical or urgent, and the pure rule that turns scores into a priority.

The policy lives in a TOML file (the packaged ``default_policy.toml``, or ``--policy FILE``); the
thresholds come from the model manifest or, with a site file, from the site. See docs/triage.md.
"""

from __future__ import annotations

import functools
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
from cxrtriage.model.manifest import UNKNOWN_POPULATION, ModelManifest
from cxrtriage.model.registry import command_name
from cxrtriage.results import ImageRecord, Priority, Status
from cxrtriage.triage.site import SiteCalibration, check_site

log = logging.getLogger(__name__)

POLICY_SCHEMA_VERSION = 1
DEFAULT_POLICY_RESOURCE = "default_policy.toml"


class ThresholdKind(StrEnum):
    RULE_OUT = "rule_out"  # high-sensitivity operating point
    BALANCED = "balanced"  # Youden operating point


@functools.lru_cache(maxsize=1024)  # called ~60 times per image with the same few label names
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
    decide_unvalidated: tuple[str, ...] = ()  # labels that decide even for a population they are not validated on
    label_thresholds: dict[str, ThresholdKind] = field(default_factory=dict)
    description: str = ""
    source: str = "packaged default"

    def mentioned_labels(self) -> tuple[str, ...]:
        """Every finding or summary label the policy names (ignored labels excluded)."""
        names = ([f for lvl in self.levels for f in lvl.findings] + list(self.summary_labels) + list(self.label_thresholds)
                 + list(self.decide_unvalidated))
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

    def decides_unvalidated(self, label: str) -> bool:
        return normalize_label(label) in self.decide_unvalidated


@dataclass(frozen=True, slots=True)
class TriageDecision:
    """The priority of one image and why: the deciding finding, its score and the threshold it met (or missed).

    With study-level operating points ``tier`` names the tier whose threshold decided (``critical``, ``urgent`` or
    ``normal``) and ``threshold_kind`` is None; with per-label thresholds it is the reverse.
    """

    priority: Priority
    reason: str
    deciding_label: str | None = None
    deciding_score: float | None = None
    threshold: float | None = None
    threshold_kind: ThresholdKind | None = None
    threshold_source: str | None = None  # "model" (manifest) or "site"
    tier: str | None = None
    population: str | None = None  # whose operating points and validated labels decided (None: the model has none)


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
    if not isinstance(labels_raw, dict) or set(labels_raw) - {"summary", "ignore", "decide_unvalidated"}:
        raise ConfigError(f"{source}: [labels] must be a table with keys 'summary', 'ignore' and/or 'decide_unvalidated'")
    summary = _names(labels_raw.get("summary", []), f"{source} [labels] summary")
    ignored = _names(labels_raw.get("ignore", []), f"{source} [labels] ignore")
    unvalidated = _names(labels_raw.get("decide_unvalidated", []), f"{source} [labels] decide_unvalidated")
    for lab in unvalidated:
        if lab in ignored:
            raise ConfigError(f"{source}: '{lab}' is listed under [labels] ignore and decide_unvalidated; remove it from one")
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
        decide_unvalidated=unvalidated,
        label_thresholds=label_thresholds,
        source=source,
    )


def default_policy_text() -> str:
    """The packaged default policy file's text (documented in docs/triage.md)."""
    return resources.files("cxrtriage.triage").joinpath(DEFAULT_POLICY_RESOURCE).read_text(encoding="utf-8")


def load_policy(path: str | Path | None = None, *, labels: Sequence[str] | None = None) -> TriagePolicy:
    """Read a policy file (``None``: the packaged default).

    With the model's ``labels``, the labels the policy names but the model lacks are logged in one line (they are
    ignored by ``decide_priority``): a warning for a policy file the user chose, at info level for the packaged
    default, which is written for every model and names findings the shipped classifier does not have. (What matters
    for safety, a priority level no label of the model can reach, is said by the commands themselves: predict's
    coverage notes, evaluate's warnings.)
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
            log.log(logging.INFO if path is None else logging.WARNING,
                    "triage policy '%s' (%s): %s not among the model's labels, ignored (`cxrtriage models info` "
                    "lists them)",
                    policy.name, source, ", ".join(unknown))
    return policy


def study_mode(manifest: ModelManifest, site: SiteCalibration | None = None) -> bool:
    """Are priorities decided on study-level operating points (the manifest's, or a site file's ``[study]``)?

    A site file without a ``[study]`` section (schema 1, per-label thresholds only) keeps the per-label rules: its
    thresholds are on its own score scale, which the manifest's study thresholds are not.
    """
    if site is not None:
        return bool(site.study)
    return manifest.study is not None


def covered_tiers(policy: TriagePolicy, manifest: ModelManifest) -> list[str]:
    """The tiers that need a study-level threshold: ``normal`` always, critical/urgent when the model has one of their
    findings."""
    tiers = [lvl.priority.value for lvl in policy.levels
             if any(normalize_label(lab) in lvl.findings for lab in manifest.labels if not policy.is_ignored(lab))]
    return [*tiers, "normal"]


def tier_labels(policy: TriagePolicy, labels: Sequence[str]) -> dict[str, list[str]]:
    """Per tier, the labels whose truth defines it: ``normal`` every label not ignored (something is abnormal);
    ``urgent`` the policy's urgent and critical findings; ``critical`` its critical findings. Tiers without a label
    of ``labels`` are left out."""
    out: dict[str, list[str]] = {}
    findings = {lvl.priority.value: [lab for lab in labels if normalize_label(lab) in lvl.findings
                                     and not policy.is_ignored(lab)] for lvl in policy.levels}
    if findings.get("critical"):
        out["critical"] = findings["critical"]
    if findings.get("urgent"):
        out["urgent"] = findings["urgent"] + findings.get("critical", [])
    out["normal"] = [lab for lab in labels if not policy.is_ignored(lab)]
    return out


def has_operating_points(manifest: ModelManifest, site: SiteCalibration | None = None) -> bool:
    """Does anything give ``manifest`` a threshold to decide priorities on: its per-label thresholds or study-level
    operating points, or a site file's?

    A model imported from a plain ONNX (or PyTorch) file has none until ``cxrtriage models validate`` measures them
    on labelled images; ``predict`` then writes its scores without priorities (``scores_only_reason``)."""
    if manifest.thresholds or manifest.study is not None:
        return True
    return site is not None and bool(site.labels or site.study)


def scores_only_reason(manifest: ModelManifest) -> str:
    """A row's ``priority_reason`` when its model has no operating points (``has_operating_points``): short, and the
    same for every row (the run's note, ``scores_only_note``, gives the whole command)."""
    return (f"model '{manifest.name}' has no operating points yet, so no priority is decided (scores only): "
            "`cxrtriage models validate` sets them on labelled images")


def scores_only_note(manifest: ModelManifest) -> str:
    """The run's note (summary, run.json) for a model without operating points: why no priority, and what to run."""
    return (f"model '{manifest.name}' has no operating points yet, so no priority is decided (scores only, every image "
            f"not_assessed): measure them on labelled images with `cxrtriage models validate {command_name(manifest)} "
            "IMAGES --labels LABELS.csv --out DIR`, or calibrate a site file (`cxrtriage calibrate`, then --site)")


def check_policy(policy: TriagePolicy, manifest: ModelManifest, site: SiteCalibration | None = None) -> None:
    """Fail early (ModelError/ConfigError) when a label or tier that triage needs has no threshold, or the site is for
    another model.

    A model with no operating points at all (``has_operating_points``) passes: nothing is decided with it, each image
    is ``not_assessed`` (``decide_priority``). One with some labels lacking them fails: its priorities would rest on
    part of its findings."""
    if site is not None:
        check_site(site, manifest)
    if not has_operating_points(manifest, site):
        return
    if study_mode(manifest, site):
        for tier in covered_tiers(policy, manifest):
            if site is not None and tier not in site.study:
                raise ConfigError(
                    f"{site.where}: no study-level threshold for tier '{tier}', which policy '{policy.name}' needs with "
                    f"model '{manifest.name}'; re-run `cxrtriage calibrate` with this policy"
                )
            if site is None and (manifest.study is None or tier not in manifest.study.tiers):
                raise ModelError(
                    f"{manifest.path}: model '{manifest.name}' has no study-level operating point for tier '{tier}', "
                    f"which policy '{policy.name}' needs; recompute them (`cxrtriage train operating-points`) or "
                    "calibrate a site file"
                )
        return
    for label in manifest.labels:
        if policy.is_ignored(label):
            continue
        if label not in manifest.thresholds and (site is None or label not in site.labels):
            raise ModelError(
                f"{manifest.path}: model '{manifest.name}' has no rule_out/balanced thresholds for label '{label}', so it "
                f"cannot be triaged; measure them (`cxrtriage models validate {command_name(manifest)} IMAGES --labels "
                "LABELS.csv --out DIR` with a column for it), calibrate a site file, or list the label under [labels] "
                "ignore in the policy"
            )


# --------------------------------------------------------------------------------------------- populations


def _years(age: float) -> str:
    # Ages of 90 and over are written as "90+" (HIPAA Safe Harbor treats them as identifying).
    if age >= 90:
        return "90+ years"
    return f"{age:.0f} years" if age >= 2 else f"{age * 12:.0f} months"


def population_for(manifest: ModelManifest, age: float | None, default: str | None = None) -> tuple[str | None, str]:
    """The population whose operating points and validated labels apply to a patient, and a note when the age says so.

    The age (from DICOM) decides when it falls in one of the manifest's populations; an age outside all of them
    gives ``unknown`` (the most cautious operating points) with a note; without an age, ``default`` (``predict
    --population``) or ``unknown``. A manifest without populations gives None: every label decides, as before.
    """
    if not manifest.populations:
        return None, ""
    if age is not None:
        pop = manifest.population_of(age)
        if pop is not None:
            return pop, ""
        ranges = ", ".join(f"{p.name} {p.ages}" for p in manifest.populations.values())
        return UNKNOWN_POPULATION, (f"patient age {_years(age)} (DICOM) is outside every population the model was "
                                    f"validated on ({ranges}): the cautious operating points of an unknown population "
                                    "apply")
    return (default or UNKNOWN_POPULATION), ""


class PopulationSource(StrEnum):
    """Where a record's population came from (the ``population_source`` column), in order of precedence."""

    DICOM_AGE = "dicom-age"  # the patient's age in the DICOM header
    OPTION = "option"  # ``predict --population`` (``unknown`` turns the image estimate off)
    IMAGE_ESTIMATE = "image-estimate"  # the model's population estimate from the image, at or above its threshold
    NONE = "none"  # nothing said who the patient is: unknown, the most cautious operating points


@dataclass(frozen=True, slots=True)
class PopulationChoice:
    """The population that decides for one image, where it came from, and the note the row carries."""

    population: str | None
    source: PopulationSource | None
    note: str = ""  # for the record's reason (an age outside every population)
    estimate_note: str = ""  # for the priority reason (the population was estimated from the image)


def choose_population(manifest: ModelManifest, age: float | None, option: str | None = None,
                      probability: float | None = None) -> PopulationChoice:
    """The population for one image: the DICOM age, else ``option`` (``predict --population``), else the image's
    population estimate when it is confident (``probability`` at or above the manifest's threshold), else unknown.

    ``probability`` is the estimate's output for the image (``ModelManifest.population_estimate``); it is used only
    when the manifest has an estimate and nothing else says who the patient is. Below the threshold the population
    stays unknown: an adult wrongly estimated a child would lose the adult-only findings from the decision, so only a
    confident estimate counts. A manifest without populations gives None (every label decides, as before).
    """
    if not manifest.populations:
        return PopulationChoice(None, None)
    if age is not None:
        pop, note = population_for(manifest, age)
        return PopulationChoice(pop, PopulationSource.DICOM_AGE, note)
    if option:
        return PopulationChoice(option, PopulationSource.OPTION)
    est = manifest.population_estimate
    if est is not None and probability is not None and math.isfinite(probability) and probability >= est.threshold:
        p, t = format_pair(probability, est.threshold)
        return PopulationChoice(est.estimates, PopulationSource.IMAGE_ESTIMATE, estimate_note=(
            f"population {est.estimates} estimated from the image (p {p} >= {t}); give the age or --population to "
            "override"))
    return PopulationChoice(UNKNOWN_POPULATION, PopulationSource.NONE)


def deciding_labels(manifest: ModelManifest, policy: TriagePolicy, population: str | None) -> list[str]:
    """The labels that may move the priority for ``population``: not ignored by the policy, and validated for it
    (``unknown``: for any population) unless the policy's ``[labels] decide_unvalidated`` lists them."""
    out = [lab for lab in manifest.labels if not policy.is_ignored(lab)]
    if population is None:
        return out
    return [lab for lab in out if counts_for(manifest, policy, lab, population)]


def counts_for(manifest: ModelManifest, policy: TriagePolicy, label: str, population: str) -> bool:
    """Is ``label`` allowed to decide for ``population``: validated for it, or listed by the policy's ``[labels]
    decide_unvalidated``? (Whether the policy ignores the label altogether is ``policy.is_ignored``.)"""
    return manifest.validated_for(label, population) or policy.decides_unvalidated(label)


def population_note(manifest: ModelManifest, policy: TriagePolicy, population: str | None, age: float | None) -> str:
    """The row's note when DICOM tells the patient's age: the population it puts the patient in, and the labels that
    are not validated for it (reported, but not deciding). Empty when the age is unknown or every label decides."""
    if population is None or age is None or population == UNKNOWN_POPULATION:
        return ""
    deciding = set(deciding_labels(manifest, policy, population))
    silent = [lab for lab in manifest.labels if not policy.is_ignored(lab) and lab not in deciding]
    if not silent:
        return ""
    # one note among the row's reading notes, which are joined by "; ": no "; " inside it (a report splits them there)
    return (f"patient age {_years(age)} (DICOM): {population} population, for which these are not validated, so "
            f"reported but not deciding the priority: {', '.join(silent)}")


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


def study_threshold(tier: str, population: str, manifest: ModelManifest,
                    site: SiteCalibration | None) -> tuple[float, str] | None:
    """The study-level threshold of ``tier`` for ``population`` and where it comes from ("site" or "model")."""
    if site is not None and site.study:
        st = site.study.get(tier)
        return None if st is None else (st.threshold(population), "site")
    if manifest.study is not None and tier in manifest.study.tiers:
        return manifest.study.tiers[tier].threshold(population), "model"
    return None


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


def _describe_study(label: str, score: float, t: float, tier: str, src: str, population: str) -> str:
    s, ts = format_pair(score, t)
    op = ">=" if score >= t else "<"
    return f"{label} {s} {op} {ts} ({'site ' if src == 'site' else ''}study {tier}, {population})"


def decide_priority(
    scores: Mapping[str, float],
    *,
    manifest: ModelManifest,
    policy: TriagePolicy,
    site: SiteCalibration | None = None,
    population: str | None = None,
) -> TriageDecision:
    """The triage priority of one image from its scores. Pure: no I/O.

    ``scores`` are the model's calibrated scores by label or, when ``site`` is given, the SITE-calibrated
    scores (``apply_site`` output): site thresholds are on that scale. ``population`` (see ``population_for``)
    selects the labels that decide (those validated for it, see ``deciding_labels``) and, with study-level
    operating points, the thresholds; None means the manifest defines no populations.

    With study-level operating points (``study_mode``; docs/triage.md):

    1. a deciding label without a finite score -> ``not_assessed``;
    2. per tier, critical then urgent: the tier's study score is the highest score among its deciding findings;
       at or above the tier's threshold -> that tier;
    3. the highest score among all deciding labels (findings and summary labels) below the ``normal`` threshold ->
       ``normal``; else ``routine``.

    A study takes the highest priority of its images; since each tier's study score is the highest over the
    study's images, that is the decision on the study's scores (``build_worklist``).

    Without them (per-label thresholds, e.g. a site file of schema 1): critical/urgent when a finding of the level
    is at or above its own threshold (the policy's kind), ``normal`` when every deciding label is below its own
    ``rule_out`` threshold, else ``routine``.
    """
    if site is not None:
        check_site(site, manifest)
    if not has_operating_points(manifest, site):
        # Why not_assessed rather than an error: the scores of a model not yet validated are what `models validate`
        # and `calibrate` need to set its operating points; not_assessed is the tool deciding nothing (read as usual).
        return TriageDecision(Priority.NOT_ASSESSED, scores_only_reason(manifest))
    pop_name = population if population is not None or not manifest.populations else UNKNOWN_POPULATION
    labels = deciding_labels(manifest, policy, pop_name)
    if not labels:
        why = (f"every label of model '{manifest.name}' is ignored by policy '{policy.name}'"
               if pop_name is None else
               f"no label of model '{manifest.name}' is validated for the {pop_name} population (and not ignored)")
        return TriageDecision(Priority.NOT_ASSESSED, why, population=pop_name)
    missing = [lab for lab in labels if not _finite(scores.get(lab))]
    if missing:
        return TriageDecision(Priority.NOT_ASSESSED, f"no valid score for {', '.join(missing)}", population=pop_name)
    values = {lab: float(scores[lab]) for lab in labels}
    if study_mode(manifest, site):
        return _decide_study(values, labels, manifest=manifest, policy=policy, site=site,
                             population=pop_name or UNKNOWN_POPULATION)
    return _decide_per_label(values, labels, manifest=manifest, policy=policy, site=site, population=pop_name)


def _decide_study(values: Mapping[str, float], labels: Sequence[str], *, manifest: ModelManifest, policy: TriagePolicy,
                  site: SiteCalibration | None, population: str) -> TriageDecision:
    order = {lab: i for i, lab in enumerate(labels)}

    def top(names: Sequence[str]) -> tuple[float, str]:
        # The highest score decides; on a tie, the label listed first in the model.
        score, _, lab = max((values[lab], -order[lab], lab) for lab in names)
        return score, lab

    for level in policy.levels:
        findings = [lab for lab in labels if normalize_label(lab) in level.findings]
        if not findings:
            continue
        found = study_threshold(level.priority.value, population, manifest, site)
        if found is None:
            raise ModelError(f"{manifest.path}: no study-level threshold for tier '{level.priority.value}'")
        t, src = found
        score, lab = top(findings)
        if score >= t:
            reason = _describe_study(lab, score, t, level.priority.value, src, population)
            also = [f for f in sorted(findings, key=lambda f: -values[f]) if f != lab and values[f] >= t]
            if also:
                reason += f"; also {', '.join(also)}"
            return TriageDecision(level.priority, reason, lab, score, t, None, src, level.priority.value, population)
    found = study_threshold("normal", population, manifest, site)
    if found is None:
        raise ModelError(f"{manifest.path}: no study-level threshold for tier 'normal'")
    t, src = found
    score, lab = top(labels)
    if score < t:
        s, ts = format_pair(score, t)
        reason = (f"all {len(labels)} deciding labels below the {'site ' if src == 'site' else ''}study normal "
                  f"threshold {ts} ({population}); highest: {lab} {s}")
        return TriageDecision(Priority.NORMAL, reason, lab, score, t, None, src, "normal", population)
    above = sum(1 for v in values.values() if v >= t)
    reason = _describe_study(lab, score, t, "normal", src, population)
    if above > 1:
        reason += f" (+{above - 1} more)"
    reason += "; not ruled out, nothing critical or urgent at its study threshold"
    return TriageDecision(Priority.ROUTINE, reason, lab, score, t, None, src, "normal", population)


def _decide_per_label(values: Mapping[str, float], labels: Sequence[str], *, manifest: ModelManifest,
                      policy: TriagePolicy, site: SiteCalibration | None, population: str | None) -> TriageDecision:
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
            return TriageDecision(level.priority, reason, lab, score, t, kind, src, population=population)

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
        return TriageDecision(Priority.NORMAL, reason, lab, values[lab], t, ThresholdKind.RULE_OUT, src,
                              population=population)
    score, _, lab, t, src = max(above)
    reason = _describe(lab, score, t, ThresholdKind.RULE_OUT, src)
    if len(above) > 1:
        reason += f" (+{len(above) - 1} more above rule-out)"
    reason += "; nothing critical or urgent at its decision threshold"
    return TriageDecision(Priority.ROUTINE, reason, lab, score, t, ThresholdKind.RULE_OUT, src, population=population)


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
    default_population: str | None = None,
) -> ImageRecord:
    """``record`` with ``priority``, ``priority_reason``, ``priority_finding``, ``priority_score`` and ``population``
    decided.

    A record that is not ``scored`` (excluded, failed) is ``not_assessed`` with its own ``reason`` copied. The
    scores are the record's ``scores`` (site-calibrated when ``site``). The population comes from the record's
    ``patient_age`` (DICOM), else ``default_population`` (``predict --population``), else the image's population
    estimate (``population_probability``, when confident), else ``unknown`` (``choose_population``); the record's
    ``population_source`` says which. When the age puts the patient outside a label's validated population, the
    record's ``reason`` says so; an estimated population is named in the ``priority_reason``.
    """
    if record.status is not Status.SCORED:
        why = (record.reason or "").strip()
        return record.replace(priority=Priority.NOT_ASSESSED,
                              priority_reason=f"{record.status.value}: {why}" if why else record.status.value,
                              priority_finding="", priority_score=None)
    choice = choose_population(manifest, record.patient_age, default_population, record.population_probability)
    population = choice.population
    note = choice.note or population_note(manifest, policy, population, record.patient_age)
    d = decide_priority(scores_from_record(record, manifest.labels), manifest=manifest, policy=policy, site=site,
                        population=population)
    reason = f"{d.reason}; {choice.estimate_note}" if choice.estimate_note else d.reason
    decided = record.replace(priority=d.priority, priority_reason=reason, priority_finding=d.deciding_label or "",
                             priority_score=d.deciding_score, population=population,
                             population_source=None if choice.source is None else choice.source.value)
    return decided.with_note(note) if note and note not in (record.reason or "") else decided
