"""Site calibration files: a per-site map from the model's calibrated score to a site score, with site thresholds.

A site file (TOML, written by ``cxrtriage calibrate``) is made for ONE model version: it records the
model's name, version and sha256, and is refused for any other model. For each label it holds a
monotone map (Platt on the logit of the model score, or isotonic) from the model's calibrated score to
the site-calibrated score, and the site's ``rule_out`` and ``balanced`` thresholds ON THAT SITE SCALE.
Labels absent from the file keep the model's score and the manifest's thresholds.

Schema 2 adds a ``[study.<tier>]`` table per tier (``normal``, ``urgent``, ``critical``): the site's study-level
thresholds on the site scale, per population (``all`` for every population), the target they were fitted for and
what they achieved. A file with them decides priorities on them; a schema-1 file (no ``[study]``) keeps the
per-label rules it was made for.
"""

from __future__ import annotations

import json
import logging
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cxrtriage.errors import ConfigError
from cxrtriage.files import atomic_write
from cxrtriage.model.manifest import ModelManifest

log = logging.getLogger(__name__)

SITE_SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # schema 1: per-label maps and thresholds only (no [study])
METHODS = ("platt", "isotonic")
ALL_POPULATIONS = "all"  # a site threshold for every population
_EPS = 1e-7


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class LabelSiteCalibration:
    """The site map and thresholds of one label.

    ``platt``: site = sigmoid(a * logit(model score) + b), with a > 0 (order kept).
    ``isotonic``: site = piecewise-linear interpolation through the knots (x, y), x increasing and
    y non-decreasing, constant outside [x[0], x[-1]].
    ``rule_out`` / ``balanced`` are thresholds on the site score. ``stats`` holds what they gave on the
    calibration set (informative only).
    """

    label: str
    method: str
    rule_out: float
    balanced: float
    a: float | None = None
    b: float | None = None
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    n: int = 0
    n_positive: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method == "platt":
            if self.a is None or self.b is None or not (math.isfinite(self.a) and math.isfinite(self.b)) or self.a <= 0:
                raise ValueError(f"label '{self.label}': platt needs finite a > 0 and b, got a={self.a}, b={self.b}")
        elif self.method == "isotonic":
            x, y = np.asarray(self.x, float), np.asarray(self.y, float)
            if x.size < 1 or x.size != y.size or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise ValueError(f"label '{self.label}': isotonic needs equal-length knots x, y, both non-decreasing")
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise ValueError(f"label '{self.label}': isotonic knots must be finite")
        else:
            raise ValueError(f"label '{self.label}': method must be one of {list(METHODS)}, got '{self.method}'")
        if not (math.isfinite(self.rule_out) and math.isfinite(self.balanced)):
            raise ValueError(f"label '{self.label}': thresholds must be finite numbers")

    def apply(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Site-calibrated scores for model-calibrated ``scores`` (NaN stays NaN)."""
        p = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            assert self.a is not None and self.b is not None
            out = _sigmoid(self.a * _logit(p) + self.b)
        else:
            out = np.interp(p, np.asarray(self.x, float), np.asarray(self.y, float))
        return np.where(np.isfinite(p), out, np.nan)


@dataclass(frozen=True, slots=True)
class SiteStudyTier:
    """The site's study-level threshold(s) of one tier, on the site score scale.

    ``thresholds`` maps a population (or ``all``) to a threshold; ``target`` is what it was fitted for
    (``{"sensitivity": 0.95}`` or ``{"max_false_urgent": 0.05}``) and ``stats`` what it gave on the local set.
    """

    name: str
    thresholds: dict[str, float]
    target: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.thresholds or not all(math.isfinite(v) for v in self.thresholds.values()):
            raise ValueError(f"study tier '{self.name}': thresholds must be finite numbers, one per population or 'all'")

    def threshold(self, population: str) -> float:
        """The threshold for ``population``: its own, else ``all``'s, else the most cautious (lowest) one."""
        if population in self.thresholds:
            return self.thresholds[population]
        if ALL_POPULATIONS in self.thresholds:
            return self.thresholds[ALL_POPULATIONS]
        return min(self.thresholds.values())


@dataclass(frozen=True, slots=True)
class SiteCalibration:
    """A whole site file: the model it was made for and one ``LabelSiteCalibration`` per label."""

    model_name: str
    model_version: str
    model_sha256: str
    method: str
    target_sensitivity: float
    labels: dict[str, LabelSiteCalibration]
    created: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    study: dict[str, SiteStudyTier] = field(default_factory=dict)  # tier -> thresholds; empty in a schema-1 file
    schema_version: int = SITE_SCHEMA_VERSION

    def threshold(self, label: str, kind: str) -> float | None:
        """The site threshold of ``kind`` ("rule_out" or "balanced") for ``label``, or None when not calibrated."""
        cal = self.labels.get(label)
        if cal is None:
            return None
        if kind == "rule_out":
            return cal.rule_out
        if kind == "balanced":
            return cal.balanced
        raise ValueError(f"threshold kind must be 'rule_out' or 'balanced', got '{kind}'")

    @property
    def where(self) -> str:
        return str(self.path) if self.path else "site calibration"


def apply_site(scores_by_label: Mapping[str, float], site: SiteCalibration | None) -> dict[str, float]:
    """Map the model's calibrated scores to site-calibrated scores (labels the site lacks pass unchanged).

    ``site=None`` returns a plain copy, so callers need no branch.
    """
    out = {k: float(v) for k, v in scores_by_label.items()}
    if site is None:
        return out
    for label, cal in site.labels.items():
        if label in out:
            out[label] = float(cal.apply(out[label]))
    return out


def check_site(site: SiteCalibration, manifest: ModelManifest) -> None:
    """Refuse a site file made for another model (name, version or sha256 differ)."""
    same = (
        site.model_name == manifest.name
        and site.model_version == manifest.version
        and site.model_sha256.lower() == manifest.sha256.lower()
    )
    if not same:
        raise ConfigError(
            f"{site.where}: this site calibration was made for model '{site.model_name}' version {site.model_version} "
            f"(sha256 {site.model_sha256[:12]}…), but the model in use is '{manifest.name}' version {manifest.version} "
            f"(sha256 {manifest.sha256[:12]}…). Site thresholds do not transfer between model versions: re-run "
            "`cxrtriage calibrate` on results of this model, or drop --site (for results read back, by evaluate or "
            "calibrate: pass --model naming the model they were scored with)"
        )
    unknown = sorted(set(site.labels) - set(manifest.labels))
    if unknown:
        raise ConfigError(f"{site.where}: labels {unknown} are not labels of model '{manifest.name}' ({list(manifest.labels)})")
    known = {*manifest.populations, ALL_POPULATIONS, "unknown"}
    for tier, st in site.study.items():
        odd = sorted(set(st.thresholds) - known)
        if odd:
            raise ConfigError(f"{site.where}: [study.{tier}] has thresholds for {odd}, which are not populations of model "
                              f"'{manifest.name}' ({sorted(known)})")


# --------------------------------------------------------------------------------------------- reading


def _get(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}: field '{key}' is missing; regenerate the file with `cxrtriage calibrate`")
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise ConfigError(f"{where}: field '{key}' has the wrong type ({type(v).__name__}); regenerate the file")
    return v


def parse_site(data: Mapping[str, Any], *, where: str = "site calibration", path: Path | None = None) -> SiteCalibration:
    """Build a ``SiteCalibration`` from parsed TOML, checking every field."""
    if data.get("schema_version") not in READABLE_SCHEMAS:
        raise ConfigError(
            f"{where}: schema_version {data.get('schema_version')!r} is not supported (expected one of "
            f"{list(READABLE_SCHEMAS)}); is this a site file written by `cxrtriage calibrate`?"
        )
    model = _get(data, "model", dict, where)
    method = str(_get(data, "method", str, where))
    labels_raw = _get(data, "labels", dict, where) if "labels" in data or "study" not in data else {}
    labels: dict[str, LabelSiteCalibration] = {}
    for label, d in labels_raw.items():
        w = f"{where} [labels.{json.dumps(label)}]"
        if not isinstance(d, dict):
            raise ConfigError(f"{w}: must be a table")
        lmethod = str(d.get("method", method))
        try:
            labels[label] = LabelSiteCalibration(
                label=label,
                method=lmethod,
                rule_out=float(_get(d, "rule_out", float, w)),
                balanced=float(_get(d, "balanced", float, w)),
                a=float(_get(d, "a", float, w)) if lmethod == "platt" else None,
                b=float(_get(d, "b", float, w)) if lmethod == "platt" else None,
                x=tuple(float(v) for v in _get(d, "x", list, w)) if lmethod == "isotonic" else (),
                y=tuple(float(v) for v in _get(d, "y", list, w)) if lmethod == "isotonic" else (),
                n=int(d.get("n", 0)),
                n_positive=int(d.get("n_positive", 0)),
                stats=dict(d.get("stats", {})),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{w}: {exc}; regenerate the file with `cxrtriage calibrate`") from exc
    study: dict[str, SiteStudyTier] = {}
    study_raw = data.get("study", {})
    if not isinstance(study_raw, dict):
        raise ConfigError(f"{where}: [study] must be a table of tiers; regenerate the file with `cxrtriage calibrate`")
    for tier, d in study_raw.items():
        w = f"{where} [study.{tier}]"
        if tier not in ("critical", "urgent", "normal") or not isinstance(d, dict):
            raise ConfigError(f"{w}: a [study] table must be one of critical, urgent, normal")
        thr = _get(d, "thresholds", dict, w)
        try:
            study[tier] = SiteStudyTier(tier, {str(k): float(v) for k, v in thr.items()},
                                        target=dict(d.get("target", {})), stats=dict(d.get("stats", {})))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{w}: {exc}; regenerate the file with `cxrtriage calibrate`") from exc
    return SiteCalibration(
        model_name=str(_get(model, "name", str, f"{where} [model]")),
        model_version=str(_get(model, "version", str, f"{where} [model]")),
        model_sha256=str(_get(model, "sha256", str, f"{where} [model]")).lower(),
        method=method,
        target_sensitivity=float(_get(data, "target_sensitivity", float, where)),
        labels=labels,
        created=str(data.get("created", "")),
        source=dict(data.get("source", {})),
        path=path,
        study=study,
        schema_version=int(data["schema_version"]),
    )


def load_site(path: str | Path, *, manifest: ModelManifest | None = None) -> SiteCalibration:
    """Read a site TOML file; with ``manifest``, also refuse it unless it was made for that exact model."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: site file not found; create one with `cxrtriage calibrate ... --out {p.name}`") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: site file is not valid TOML ({exc})") from exc
    site = parse_site(data, where=str(p), path=p.resolve())
    # Files from calibrate before 2026-12-06 took the highest threshold reaching the target sensitivity even above the
    # balanced one; a policy that asks for rule-out to be more sensitive got less. They still work: said, not refused.
    above = sorted(lab for lab, cal in site.labels.items() if cal.rule_out > cal.balanced)
    if above:
        log.warning("%s: the rule-out threshold is above the balanced one (less sensitive) for %s; calibrate the site "
                    "file again (`cxrtriage calibrate`), which now keeps rule-out at or below balanced", p,
                    ", ".join(above))
    if manifest is not None:
        check_site(site, manifest)
        missing = [lab for lab in manifest.labels if lab not in site.labels]
        if missing:
            # Per label only: the study-level thresholds (the [study] tiers), when the file has them, apply to every
            # label's score all the same, and a reader took this line to mean they did not.
            study = " (the site file's study-level thresholds still apply to them)" if site.study else ""
            log.warning("%s: no site calibration for %s; those labels keep the model's scores and per-label "
                        "thresholds%s", p, ", ".join(missing), study)
    return site


def site_for_results(
    recorded: Iterable[str | None],
    explicit: str | Path | None = None,
    *,
    results: str | Path,
    manifest: ModelManifest,
) -> SiteCalibration | None:
    """The site file a set of results was scored with, checked against ``manifest``; None when they used none.

    Args:
        recorded: the ``site_file`` values found in the results (blanks and repeats are ignored).
        explicit: a site file the user gave (``--site``); it replaces the recorded path, which may have moved.
        results: the results file; a recorded relative path is also looked up beside it, and it names the
            results in error messages.
        manifest: the model that produced the results (see ``model.registry.manifest_for_results``).

    Raises:
        ConfigError: several site files are recorded; the recorded one is not found and ``explicit`` is None;
            ``explicit`` is given for results scored without a site file; or the site file is invalid or was
            made for another model.
    """
    results = Path(results)
    paths = sorted({str(v or "").strip() for v in recorded} - {""})
    if len(paths) > 1:
        raise ConfigError(f"{results}: results were made with several site files {paths}; evaluate them separately")
    if explicit is None and not paths:
        return None
    if explicit is None:
        cand = Path(paths[0])
        for p in (cand, results.parent / cand, results.parent / cand.name):
            if p.is_file():
                explicit = p
                break
        else:
            raise ConfigError(
                f"{results}: results were scored with site file '{paths[0]}', which is not found; its thresholds are "
                "needed to read the site-calibrated scores: pass --site PATH"
            )
    elif not paths:
        raise ConfigError(
            f"{results}: results were scored without a site file, so their scores are on the model's scale; --site "
            "cannot be applied afterwards: re-run predict with --site, or drop --site here"
        )
    return load_site(explicit, manifest=manifest)


# --------------------------------------------------------------------------------------------- writing


def _toml_value(v: Any) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(float(v))  # shortest round-trip form
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Sequence):
        # TOML has no null: an undefined figure inside a list (a 95% CI without positives) is written as nan
        items = ["nan" if x is None else _toml_value(x) for x in v]
        if len(items) <= 8:
            return "[" + ", ".join(items) + "]"
        lines = [", ".join(items[i : i + 8]) for i in range(0, len(items), 8)]
        return "[\n    " + ",\n    ".join(lines) + ",\n]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(lines: list[str], header: str, d: Mapping[str, Any]) -> None:
    lines.append(f"\n[{header}]")
    for k, v in d.items():
        if v is None or isinstance(v, Mapping):
            continue
        lines.append(f"{json.dumps(k)} = {_toml_value(v)}")


def dump_site(site: SiteCalibration, *, comment: str = "") -> str:
    """The TOML text of a site file (read back exactly by ``load_site``)."""
    lines = ["# cxrtriage site calibration, written by `cxrtriage calibrate`. Apply with `cxrtriage predict --site FILE`."]
    lines += [f"# {c}" if c else "#" for c in comment.splitlines()]
    lines += [
        "# Scores: the model's calibrated score is mapped to the site score per label; thresholds are on the site score.",
        f"schema_version = {site.schema_version}",
        f"created = {_toml_value(site.created)}",
        f"method = {_toml_value(site.method)}",
        f"target_sensitivity = {_toml_value(float(site.target_sensitivity))}",
    ]
    _table(lines, "model", {"name": site.model_name, "version": site.model_version, "sha256": site.model_sha256})
    if site.source:
        _table(lines, "source", site.source)
    for label, cal in site.labels.items():
        key = f"labels.{json.dumps(label)}"
        body: dict[str, Any] = {"method": cal.method, "rule_out": cal.rule_out, "balanced": cal.balanced,
                                "n": cal.n, "n_positive": cal.n_positive}
        if cal.method == "platt":
            body |= {"a": cal.a, "b": cal.b}
        else:
            body |= {"x": list(cal.x), "y": list(cal.y)}
        _table(lines, key, body)
        if cal.stats:
            _table(lines, f"{key}.stats", cal.stats)
    if site.study:
        lines.append("\n# Study-level thresholds on the site score: a tier's study score is the highest site score among its")
        lines.append("# deciding labels over the study's images (see docs/triage.md); 'all' applies to every population.")
    for tier, st in site.study.items():
        _table(lines, f"study.{tier}.thresholds", st.thresholds)
        if st.target:
            _table(lines, f"study.{tier}.target", st.target)
        for k, v in st.stats.items():
            if isinstance(v, Mapping):
                _table(lines, f"study.{tier}.stats.{json.dumps(k)}", v)
    return "\n".join(lines) + "\n"


def write_site(path: str | Path, site: SiteCalibration, *, comment: str = "") -> Path:
    """Write ``site`` as TOML to ``path`` atomically (folders created; a failed write leaves any old file); returns the path.

    Raises:
        OutputError: the file cannot be written.
    """
    return atomic_write(path, dump_site(site, comment=comment))
