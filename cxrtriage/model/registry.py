"""Find models: by name in the models folder, or by path to an ONNX file, its manifest or its folder.

Models are looked up by name along a search path: ``$CXRTRIAGE_MODELS_DIR`` when set (one folder, or several
separated by ``os.pathsep``; it replaces the rest), else ``./models`` in the current directory when it exists, then
the ``models/`` folder shipped with cxrtriage. A user's ``./models`` therefore adds models beside the shipped ones
instead of hiding them; a name found in an earlier folder wins. A model named ``NAME`` is the folder
``<folder>/NAME/`` holding ``manifest.json`` (and the ONNX file it names).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cxrtriage.errors import ConfigError, CxrTriageError, ModelError
from cxrtriage.model.manifest import ModelManifest, load_manifest

DEFAULT_CLASSIFIER = "cxr-classifier"
DEFAULT_SEGMENTER = "lung-segmenter"
MANIFEST_NAME = "manifest.json"
ENV_MODELS_DIR = "CXRTRIAGE_MODELS_DIR"


SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"


def models_path() -> tuple[Path, ...]:
    """The folders where models are looked up by name, in order (see the module docstring)."""
    env = os.environ.get(ENV_MODELS_DIR, "").strip()
    if env:
        return tuple(dict.fromkeys(Path(part).expanduser() for part in env.split(os.pathsep) if part.strip()))
    local = Path.cwd() / "models"
    found = [local] if local.is_dir() and local.resolve() != SHIPPED_MODELS else []
    return (*found, SHIPPED_MODELS)


def models_dir() -> Path:
    """The first folder of the search path (``models_path``): where a new model is installed by default."""
    return models_path()[0]


def describe_models_path() -> str:
    """The search path in words, for messages."""
    return " and ".join(str(p) for p in models_path())


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model folder found in the models dir: its manifest, or why it could not be read."""

    name: str
    manifest_path: Path
    manifest: ModelManifest | None
    error: str | None = None


def list_models(directory: Path | None = None) -> list[ModelEntry]:
    """Every sub-folder holding a ``manifest.json`` in ``directory`` (default: every folder of the search path; a
    name found in an earlier folder hides the same name later, as lookup does), sorted by name."""
    roots = models_path() if directory is None else (Path(directory),)
    entries: dict[str, ModelEntry] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            mpath = folder / MANIFEST_NAME
            if folder.name in entries or not mpath.is_file():
                continue
            try:
                entries[folder.name] = ModelEntry(folder.name, mpath, load_manifest(mpath))
            except Exception as exc:  # a broken manifest is listed with its error, not fatal to the listing
                entries[folder.name] = ModelEntry(folder.name, mpath, None, str(exc))
    return [entries[k] for k in sorted(entries)]


def _manifest_for_onnx(onnx_path: Path) -> Path:
    """``<stem>.json`` beside the ONNX file, else ``manifest.json`` in its folder (when it names this file)."""
    candidates = [onnx_path.with_suffix(".json"), onnx_path.parent / MANIFEST_NAME]
    for cand in candidates:
        if cand.is_file():
            man = load_manifest(cand)
            if man.onnx_file == onnx_path.resolve():
                return cand
    raise ModelError(
        f"{onnx_path}: no manifest found for this ONNX file (looked for "
        f"{' and '.join(str(c) for c in candidates)} naming it in 'onnx_file'); a model is only usable with "
        "its manifest: export both together"
    )


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.lower().endswith((".onnx", ".json")) or text.startswith(".")


def resolve_manifest_path(name_or_path: str | Path | None = None, *, default: str = DEFAULT_CLASSIFIER,
                          option: str = "--model") -> Path:
    """Return the manifest file for a model name, a model folder, an ONNX file or a manifest path.

    ``None`` means the ``default`` name. Unknown names raise ``ModelError`` listing the valid ones; ``option`` is the
    command-line option messages tell the user to change.
    """
    target: str | Path = default if name_or_path is None else name_or_path
    if isinstance(target, Path) or _looks_like_path(str(target)):
        p = Path(target).expanduser()
        if p.is_dir():
            if (p / MANIFEST_NAME).is_file():
                return p / MANIFEST_NAME
            raise ModelError(f"{p}: this folder has no {MANIFEST_NAME}; point {option} at a model folder, ONNX file or "
                             "manifest (`cxrtriage models import` makes a model folder from an ONNX or PyTorch model)")
        if not p.exists():
            raise ModelError(f"{p}: model file not found; give a model name, or an existing .onnx or manifest .json path")
        if p.suffix.lower() == ".onnx":
            return _manifest_for_onnx(p)
        return p
    name = str(target)
    roots = models_path()
    for root in roots:
        mpath = root / name / MANIFEST_NAME
        if mpath.is_file():
            return mpath
    local = Path(name)
    if local.is_dir() and (local / MANIFEST_NAME).is_file():
        return local / MANIFEST_NAME
    half = next((root / name for root in roots if (root / name).is_dir()), None)
    if half is not None:
        raise ModelError(
            f"model '{name}': {half} has no {MANIFEST_NAME} (not trained/exported yet, or an incomplete copy); "
            f"install the model folder with its ONNX file and manifest, or pass {option} with another name or path"
        )
    known = [e.name for e in list_models()]
    hint = f"available models: {', '.join(known)}" if known else "no models are installed there"
    hidden = hidden_by_env(name)
    if hidden is not None:
        raise ModelError(f"model '{name}' not found in {describe_models_path()} ({hint}): {hidden}")
    raise ModelError(
        f"model '{name}' not found in {describe_models_path()} ({hint}); pass {option} with one of those names or a "
        f"path to a model folder, .onnx file or manifest, or set {ENV_MODELS_DIR}"
    )


def hidden_by_env(name: str | None = None) -> str | None:
    """When ``$CXRTRIAGE_MODELS_DIR`` is set and leaves out the shipped models folder, that in words and how to get
    them back (None otherwise). ``name``: the model looked for, named when it is a shipped one.

    Why: the variable replaces the whole search path, so a user who set it for their own models loses
    ``cxr-classifier`` and ``lung-segmenter`` (the defaults of predict) and is told to set what is already set.
    """
    env = os.environ.get(ENV_MODELS_DIR, "").strip()
    roots = models_path()
    if not env or any(r.resolve() == SHIPPED_MODELS for r in roots if r.is_dir()):
        return None
    what = f"the shipped models are in {SHIPPED_MODELS}"
    if name is not None and (SHIPPED_MODELS / name / MANIFEST_NAME).is_file():
        what = f"'{name}' is a shipped model, in {SHIPPED_MODELS / name}"
    return (f"{ENV_MODELS_DIR} is set to {env}, which replaces the default search path, and {what}; add that folder "
            f"to it ({ENV_MODELS_DIR}={env}{os.pathsep}{SHIPPED_MODELS}), unset it, or give the model's folder as a "
            "path")


def command_name(manifest: ModelManifest) -> str:
    """How to name ``manifest``'s model on a command line, for messages that say what to run next: its folder's name
    when lookup by name finds this very manifest, else the folder's path (a model imported with ``--name``, or kept
    outside the search path)."""
    if manifest.path is None:
        return manifest.name
    folder = manifest.path.parent
    try:
        if resolve_manifest_path(folder.name).resolve() == manifest.path.resolve():
            return folder.name
    except (ModelError, ConfigError, OSError):
        pass
    return str(folder)


def resolve_manifest(name_or_path: str | Path | None = None, *, default: str = DEFAULT_CLASSIFIER,
                     option: str = "--model") -> ModelManifest:
    """Load the manifest that ``resolve_manifest_path`` finds."""
    return load_manifest(resolve_manifest_path(name_or_path, default=default, option=option))


def _distinct(values: Iterable[str | None]) -> list[str]:
    return sorted({str(v or "").strip() for v in values} - {""})


def manifest_for_results(
    names: Iterable[str | None],
    sha256s: Iterable[str | None],
    explicit: str | Path | None = None,
    *,
    where: str | Path,
    integrities: Iterable[str | None] = (),
    recorded: str | Path | None = None,
) -> ModelManifest:
    """The manifest of the model that produced a set of results, checked against the sha256 they record and, when
    they record one, the manifest's integrity (its seal).

    Why the seal: a manifest edited and re-sealed since the results were made (``models validate``, new thresholds)
    describes the same ONNX file but other thresholds, calibration and labels; evaluating the results against it
    gives figures for operating points that did not decide them.

    Args:
        names: the ``model_name`` values found in the results (blanks and repeats are ignored).
        sha256s: the ``model_sha256`` values found in the results (blanks and repeats are ignored).
        explicit: a model name or path the user gave (``--model``); else ``recorded``, then the one name in the
            results, is looked up.
        where: the results, as named in error messages (e.g. the results.csv path).
        integrities: the ``model_integrity`` values found in the results.
        recorded: the manifest path the run recorded (run.json ``model.manifest``), tried first when it exists.

    Raises:
        ConfigError: the results name several models (or seals), or none and ``explicit`` is None, or the manifest
            found describes another ONNX file (sha256) or carries another seal than the results record.
        ModelError: the model cannot be found or its manifest is invalid.
    """
    names_, shas, seals = _distinct(names), _distinct(sha256s), _distinct(integrities)
    if len(names_) > 1 or len(shas) > 1:
        raise ConfigError(f"{where}: results come from several models ({names_ or shas}); evaluate one model at a time")
    if len(seals) > 1:
        raise ConfigError(f"{where}: results were scored with {len(seals)} differently sealed manifests of the model "
                          f"({', '.join(s[:12] for s in seals)}: other thresholds or calibration); evaluate the "
                          "results of one at a time")
    if explicit is not None:
        targets: list[str | Path] = [explicit]
    else:
        targets = [recorded] if recorded is not None and Path(recorded).is_file() else []
        targets += names_[:1]
    if not targets:
        raise ConfigError(f"{where}: results name no model (empty model_name); pass --model NAME_OR_PATH")
    first: CxrTriageError | None = None
    for target in targets:
        try:
            manifest = resolve_manifest(target)
        except ModelError as exc:
            first = first or exc
            continue
        problem = _not_the_results_model(manifest, shas, seals, where)
        if problem is None:
            return manifest
        first = first or ConfigError(problem)
    assert first is not None
    raise first


def _not_the_results_model(manifest: ModelManifest, shas: list[str], seals: list[str], where: str | Path) -> str | None:
    """Why ``manifest`` is not the one that produced the results (None when it is)."""
    if shas and shas[0].lower() != manifest.sha256.lower():
        return (f"{where}: results were produced by model sha256 {shas[0][:12]}…, but {manifest.path} describes sha256 "
                f"{manifest.sha256[:12]}… (model '{manifest.name}' {manifest.version}); pass --model pointing at the "
                "model that produced these results")
    if seals and manifest.integrity and seals[0].lower() != manifest.integrity.lower():
        return (f"{where}: results were scored with the manifest sealed {seals[0][:12]}…, but {manifest.path} "
                f"('{manifest.name}' {manifest.version}) is sealed {manifest.short_integrity}: the same ONNX file with "
                "other thresholds, calibration or labels (edited and re-sealed since, or another version of it); "
                "pass --model pointing at the model folder that produced these results")
    return None
