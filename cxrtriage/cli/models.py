"""`cxrtriage models list|info|verify|seal`: what models are installed, what they are, whether they are intact,
and re-sealing a manifest its owner edited on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import RenderableType

    from cxrtriage.model.manifest import ModelManifest

models_app = typer.Typer(
    help="List, describe, verify and re-seal the installed models (ONNX file + sealed manifest + model card).",
    no_args_is_help=True,
)


def _sha_status(manifest: ModelManifest) -> tuple[bool, str]:
    from cxrtriage.errors import ModelError
    from cxrtriage.model.manifest import verify_onnx

    try:
        verify_onnx(manifest)
    except ModelError as exc:
        return False, str(exc)
    return True, "ok"


@models_app.command("list")
def list_cmd(
    check: bool = typer.Option(True, "--check/--no-check", help="Verify each ONNX file's sha256 (reads every file)."),
) -> None:
    """List the models in the models folder: name, version, task, labels, integrity.

    A manifest that was edited after it was sealed, or has an invalid field, is listed as invalid.
    """
    from rich.markup import escape
    from rich.table import Table

    from cxrtriage.cli.render import console, exit_on_error
    from cxrtriage.model.registry import ENV_MODELS_DIR, describe_models_path, hidden_by_env, list_models

    with exit_on_error():
        root = describe_models_path()
        entries = list_models()
        hidden = hidden_by_env()
        if not entries:
            console.print(f"No models found in {root} "
                          + (f"({hidden})." if hidden else f"(set {ENV_MODELS_DIR} or pass --model PATH to commands)."),
                          highlight=False, markup=False, soft_wrap=True)
            return
        table = Table(title=f"Models in {root}", title_justify="left")
        for col in ("name", "version", "task", "labels", "input", "sha256", "manifest integrity"):
            table.add_column(col, overflow="fold")
        for e in entries:
            m = e.manifest
            if m is None:
                table.add_row(e.name, "-", "-", "-", "-", f"[red]invalid manifest[/]: {escape(str(e.error))}", "-")
                continue
            if check:
                ok, _ = _sha_status(m)
                sha = f"[green]ok[/] {m.short_sha}" if ok else f"[red]MISMATCH[/] {m.short_sha}"
            else:
                sha = m.short_sha
            table.add_row(e.name, m.version, m.task.value, str(len(m.labels)), f"{m.preprocessing.size}px", sha,
                          f"[green]sealed[/] {m.short_integrity}")
        console.print(table)
        if hidden:
            console.print(f"Note: {hidden}.", highlight=False, markup=False, soft_wrap=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, ".4g")
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool) or (
        isinstance(value, list | tuple) and all(v is None or isinstance(v, str | int | float | bool) for v in value)
    )


MAX_COLUMNS = 12  # a wider table is split into one table per key instead


def _flat(record: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any] | None:
    """A record's scalars, with nested dicts (up to two levels) as dotted keys; None when it is deeper."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if _is_scalar(v):
            out[key] = v
        elif isinstance(v, dict) and depth < 2:
            sub = _flat(v, f"{key}.", depth + 1)
            if sub is None:
                return None
            out.update(sub)
        else:
            return None
    return out


def render_mapping(title: str, obj: Any) -> list[RenderableType]:
    """Render any JSON-like metrics structure as rich tables, whatever its nesting.

    Scalars of a dict become a key/value table; a dict of records (dicts of scalars, possibly
    with small nested dicts, shown as dotted columns) becomes one table with a row per key;
    deeper dicts recurse with the path in the title; lists of dicts become a row per item.
    """
    from rich.table import Table
    from rich.text import Text

    out: list[RenderableType] = []
    if isinstance(obj, dict):
        scalars = {k: v for k, v in obj.items() if _is_scalar(v)}
        nested = {k: v for k, v in obj.items() if not _is_scalar(v)}
        if scalars:
            t = Table(title=title, title_justify="left", show_header=False)
            t.add_column("key", style="bold")
            t.add_column("value")
            for k, v in scalars.items():
                t.add_row(str(k), _fmt(v))
            out.append(t)
        flat = {k: _flat(v) for k, v in nested.items() if isinstance(v, dict)}
        cols = list(dict.fromkeys(c for f in flat.values() if f is not None for c in f))
        if nested and len(flat) == len(nested) and all(f is not None for f in flat.values()) and len(cols) <= MAX_COLUMNS:
            t = Table(title=title if not scalars else f"{title} (by key)", title_justify="left")
            t.add_column("")
            for c in cols:
                t.add_column(str(c), justify="right", overflow="fold")
            for k, f in flat.items():
                assert f is not None
                t.add_row(str(k), *(_fmt(f.get(c)) for c in cols))
            out.append(t)
        else:
            for k, v in nested.items():
                out += render_mapping(f"{title} › {k}", v)
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        cols = list(dict.fromkeys(c for v in obj for c in v))
        t = Table(title=title, title_justify="left")
        for c in cols:
            t.add_column(str(c), overflow="fold")
        for v in obj:
            t.add_row(*(_fmt(v.get(c)) if _is_scalar(v.get(c)) else "…" for c in cols))
        out.append(t)
    else:
        out.append(Text(f"{title}: {_fmt(obj)}"))
    return out


def manifest_renderables(m: ModelManifest, *, sha_ok: bool, sha_msg: str) -> list[RenderableType]:
    """Everything ``models info`` shows, as rich renderables (also usable by reports)."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("name", m.name)
    head.add_row("version", m.version)
    head.add_row("task", m.task.value)
    head.add_row("manifest", str(m.path))
    head.add_row("onnx file", str(m.onnx_file))
    head.add_row("sha256", f"{m.sha256} " + ("[green](verified)[/]" if sha_ok else f"[red](MISMATCH: {escape(sha_msg)})[/]"))
    head.add_row("manifest integrity", f"{m.integrity} [green](sealed, content matches)[/]")
    head.add_row("input", f"{m.input_name} {list(m.input_shape)}")
    head.add_row("outputs", ", ".join(f"{k} → {v}" for k, v in m.outputs.items()))
    if m.head is not None:
        head.add_row("CAM head", f"{m.head.pooling}, weight {m.head.weight}" + (f", bias {m.head.bias}" if m.head.bias else ""))
    card = "-" if m.model_card is None else str(m.model_card) + ("" if m.model_card.is_file() else " [red](missing)[/]")
    head.add_row("model card", card)
    if m.ignores_outputs:
        ignored = sorted(set(range(m.n_outputs)) - set(m.output_columns))
        head.add_row("ignored outputs", f"{len(ignored)} of {m.n_outputs} graph outputs (index {_fmt(ignored)}): no label")
    parts: list[RenderableType] = [Panel(head, title=f"Model {m.name}", title_align="left")]

    labels = Table(title="Labels, operating points and calibration", title_justify="left")
    for col in ("#", "label", "rule-out thr", "sens", "spec", "balanced thr", "sens", "spec", "Platt a", "Platt b"):
        labels.add_column(col, justify="left" if col == "label" else "right", overflow="fold")
    cal = m.calibration
    for i, lab in enumerate(m.labels):
        t = m.thresholds.get(lab)
        ro = (t.rule_out.threshold, t.rule_out.sensitivity, t.rule_out.specificity) if t else (None, None, None)
        ba = (t.balanced.threshold, t.balanced.sensitivity, t.balanced.specificity) if t else (None, None, None)
        a = cal.a.get(lab) if cal else None
        b = cal.b.get(lab) if cal else None
        labels.add_row(str(i), lab, *(_fmt(v) for v in (*ro, *ba, a, b)))
    parts.append(labels)
    if cal is not None and cal.method == "op_norm":
        parts.append("Calibration: op_norm (torchxrayvision: q = sigmoid(logit); each label's operating point "
                     f"maps to 0.5; points {', '.join(f'{k} {v:.4g}' for k, v in cal.op_threshs.items())}); "
                     "thresholds apply to calibrated scores.")
    elif cal is not None:
        parts.append(f"Calibration: {cal.method} (score = sigmoid(a · logit + b)); thresholds apply to calibrated scores.")
    else:
        parts.append("Calibration: none (score = sigmoid(logit)).")

    parts += study_renderables(m)
    parts += render_mapping("Preprocessing recipe", m.preprocessing.to_dict())
    parts.append(Panel(m.intended_use or "[red]not stated[/]", title="Intended use", title_align="left"))
    parts.append(Panel(m.training_data or "[red]not stated[/]", title="Training data", title_align="left"))
    if m.metrics:
        parts += render_mapping("Metrics", m.metrics)
    else:
        parts.append("Metrics: none recorded in the manifest.")
    reference = m.extra.get("reference")
    if isinstance(reference, dict):
        parts += _reference_renderables(reference, m.labels)
    other = {k: v for k, v in m.extra.items() if k != "reference"}
    if other:
        parts += render_mapping("Other manifest fields", other)
    return parts


def _reference_renderables(ref: dict[str, object], labels: tuple[str, ...]) -> list[RenderableType]:
    """The validation reference of ``cxrtriage monitor`` in brief: per population its size and sources, per label the
    median and 90th percentile of the calibrated score (the manifest holds 101 quantiles each)."""
    from rich.table import Table

    pops = ref.get("populations")
    if not isinstance(pops, dict) or not pops:
        return ["Validation reference (cxrtriage monitor): [red]malformed[/]"]
    t = Table(title=f"Validation reference for `cxrtriage monitor` (split '{ref.get('split', '?')}'): calibrated score "
                    "median / 90th percentile", title_justify="left")
    t.add_column("label")
    for name, pop in pops.items():
        n = pop.get("n", "?") if isinstance(pop, dict) else "?"
        t.add_column(f"{name} (n={n})", justify="right")
    for lab in labels:
        cells = []
        for pop in pops.values():
            q = pop.get("scores", {}).get(lab) if isinstance(pop, dict) else None
            if isinstance(q, list) and len(q) > 1:
                cells.append(f"{_fmt(q[len(q) // 2])} / {_fmt(q[(9 * (len(q) - 1)) // 10])}")
            else:
                cells.append("-")
        t.add_row(lab, *cells)
    sources = "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in (pop.get("sources") or {}).items())
                        for name, pop in pops.items() if isinstance(pop, dict))
    return [t, f"Reference sources: {sources}."]


def _rate(value: Any, ci: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and ci[0] is not None else "")


def study_renderables(m: ModelManifest) -> list[RenderableType]:
    """Populations, which labels decide for each (held-out AUROC), and the study-level operating points with the
    sensitivity/specificity measured on held-out test studies."""
    from rich.table import Table

    if not m.populations:
        return ["Triage: per-label thresholds (this manifest defines no populations or study-level operating points)."]
    parts: list[RenderableType] = []
    pops = list(m.populations)
    t = Table(title="Populations (age from DICOM; else predict --population; "
                    + ("else the image estimate when confident; " if m.population_estimate is not None else "")
                    + "else unknown = the most cautious rules)", title_justify="left")
    for col in ("population", "ages", "validated on"):
        t.add_column(col)
    for pop in m.populations.values():
        t.add_row(pop.name, pop.ages, pop.description)
    parts.append(t)
    if m.label_validation:
        t = Table(title="Which labels decide (held-out AUROC, 95% CI must lie above 0.5)", title_justify="left")
        t.add_column("label")
        for p in pops:
            t.add_column(p, overflow="fold")
        for lab in m.labels:
            cells = []
            for p in pops:
                v = m.label_validation.get(lab, {}).get(p)
                if v is None or v.auroc is None:
                    cells.append(f"[dim]no ({v.note if v is not None and v.note else 'not evaluated'})[/]")
                else:
                    verdict = "[green]decides[/]" if v.validated else "[yellow]reported only[/]"
                    cells.append(f"{verdict} {_rate(v.auroc, v.ci95)}, {v.n_pos}/{v.n_neg}")
            t.add_row(lab, *cells)
        parts.append(t)
    if m.study is not None:
        t = Table(title=f"Study-level operating points (score: {m.study.score} calibrated probability over the tier's "
                        f"deciding labels; set on {m.study.fitted_on or 'validation'})", title_justify="left")
        for col in ("tier", "target", *(f"{p} thr" for p in pops), "unknown thr"):
            t.add_column(col, overflow="fold", justify="left" if col in ("tier", "target") else "right")
        for tier in m.study.tiers.values():
            target = ", ".join(f"{k} {v}" for k, v in tier.target.items() if isinstance(v, int | float))
            t.add_row(tier.name, target, *(_fmt(tier.thresholds[p]) for p in pops), _fmt(tier.threshold("unknown")))
        parts.append(t)
        t = Table(title="Study-level sensitivity / specificity on held-out TEST studies (95% CI)", title_justify="left")
        for col in ("tier", "population", "n pos/neg", "sensitivity", "specificity"):
            t.add_column(col, justify="left" if col in ("tier", "population") else "right")
        for tier in m.study.tiers.values():
            for group, st in tier.test.items():
                t.add_row(tier.name, group, f"{st.get('n_pos')}/{st.get('n_neg')}",
                          _rate(st.get("sensitivity"), st.get("sensitivity_ci95")),
                          _rate(st.get("specificity"), st.get("specificity_ci95")))
        parts.append(t)
        parts.append("normal: sensitivity = abnormal studies not called normal, specificity = normal studies called "
                     "normal; urgent: sensitivity = studies with an urgent finding flagged urgent, specificity = studies "
                     "without one not flagged urgent. '(age unknown)': decided with the unknown-population rules.")
    parts += estimate_renderables(m)
    return parts


def _share(d: Any) -> str:
    if not isinstance(d, dict) or not d.get("n"):
        return "-"
    ci = d.get("ci95") or [None, None]
    band = f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci[0] is not None else ""
    return f"{d.get('estimated_pediatric')}/{d.get('n')} = {d.get('share', 0):.3f}{band}"


def estimate_renderables(m: ModelManifest) -> list[RenderableType]:
    """The image population estimate: what it is, its threshold, and what it gave on held-out images."""
    from rich.table import Table

    est = m.population_estimate
    if est is None:
        return []
    d = est.details
    parts: list[RenderableType] = [
        f"Population estimate from the image: logistic regression on the {est.pooling} pooled '{est.features_output}' "
        f"output ({len(est.weights)} channels), P({est.estimates}) vs {est.versus}; {est.estimates} when P >= "
        f"{est.threshold:g}, else unknown. Used only when neither the DICOM age nor --population says who the patient "
        f"is; `predict --population unknown` turns it off. Threshold: {d.get('threshold_rule', '-')}. Fitted on: "
        f"{d.get('fitted_on', '-')}."]
    t = Table(title=f"Estimated {est.estimates} on held-out images (95% Wilson CI)", title_justify="left")
    for col in ("split", "Kermany children 1-5", "adults (NIH 18+, ieee)", "NIH children <6", "NIH 6-17", "AUROC"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for name in ("validation", "test"):
        f = d.get(name)
        if isinstance(f, dict):
            t.add_row(name, _share(f.get("children_1_5_kermany")), _share(f.get("adults")),
                      _share(f.get("nih_children_under_6")), _share(f.get("nih_aged_6_17")),
                      _rate(f.get("auroc"), f.get("auroc_ci95")))
    parts.append(t)
    return parts


@models_app.command("info")
def info_cmd(
    model: str = typer.Argument(..., help="Model name in the models folder, or path to its ONNX file, manifest or folder."),
) -> None:
    """Show a model's manifest: labels, preprocessing, thresholds, calibration, intended use, metrics."""
    from cxrtriage.cli.render import console, exit_on_error
    from cxrtriage.model.registry import resolve_manifest

    with exit_on_error():
        m = resolve_manifest(model)
        ok, msg = _sha_status(m)
        for part in manifest_renderables(m, sha_ok=ok, sha_msg=msg):
            console.print(part)


@models_app.command("verify")
def verify_cmd(
    model: str | None = typer.Argument(None, help="Verify only this model (name or path); default: all installed models."),
) -> None:
    """Check every part of each model; exit 3 when any part fails.

    The parts: the manifest (readable JSON), its integrity (the content matches its seal: no edit since),
    its fields (thresholds, calibration, labels, paths, preprocessing valid), the ONNX file's sha256, and the
    graph (names, input size and label count agree with the manifest).
    """
    from rich.markup import escape
    from rich.table import Table

    from cxrtriage.cli.render import console, exit_on_error, print_error
    from cxrtriage.errors import ModelError
    from cxrtriage.model.registry import describe_models_path, list_models, resolve_manifest_path
    from cxrtriage.model.verify import ModelVerification, verify_model

    with exit_on_error():
        results: list[ModelVerification] = []
        if model is not None:
            results.append(verify_model(resolve_manifest_path(model)))
        else:
            paths = [e.manifest_path for e in list_models()]
            if not paths:
                raise ModelError(f"no models found in {describe_models_path()}; nothing to verify")
            results = [verify_model(p) for p in paths]
        table = Table(title="Model integrity (manifest seal, fields, ONNX sha256, graph)", title_justify="left")
        table.add_column("model", overflow="fold")
        table.add_column("part")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for r in results:
            label = r.name if r.manifest_path.parent.name == r.name else f"{r.manifest_path.parent.name} ({r.name})"
            for i, c in enumerate(r.checks):
                status = "[green]ok[/]" if c.ok else "[red]FAILED[/]" if c.ok is False else "[dim]-[/]"
                table.add_row(label if i == 0 else "", c.part, status, escape(c.detail))
            table.add_section()
        console.print(table)
        bad = [r for r in results if not r.ok]
        if bad:
            for r in bad:
                print_error(f"{r.manifest_path}: {', '.join(c.part for c in r.failed)} failed")
            print_error(f"{len(bad)} model(s) failed verification: {', '.join(r.manifest_path.parent.name for r in bad)}")
            raise typer.Exit(ModelError.exit_code)


@models_app.command("seal")
def seal_cmd(
    model: str = typer.Argument(..., help="Model name in the models folder, or path to its folder or manifest."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what changed since the last seal; write nothing."),
) -> None:
    """Re-seal a manifest you edited on purpose (e.g. a site's own thresholds), after validating it.

    Recomputes the manifest's integrity and prints which fields changed since it was last sealed. Refuses a
    manifest with an invalid field, one whose ONNX file no longer matches its sha256 (re-export the model
    instead) and one that disagrees with the graph. The new integrity value is recorded with every result, so
    results of the edited manifest can be told apart from those of the original.
    """
    from cxrtriage.cli.render import console, exit_on_error
    from cxrtriage.model.registry import resolve_manifest_path
    from cxrtriage.model.verify import seal_manifest

    with exit_on_error():
        res = seal_manifest(resolve_manifest_path(model), dry_run=dry_run)

        def say(text: str) -> None:  # hashes and paths: no markup, no line breaks inside them
            console.print(text, highlight=False, markup=False, soft_wrap=True)

        if not res.changed:
            say(f"{res.path}: already sealed, nothing changed (integrity {res.after})")
            return
        say(f"{res.path}: changed since the last seal: {', '.join(res.changed)}")
        before = res.before or "none"
        if res.written:
            say(f"sealed: integrity {before} → {res.after}")
        else:
            say(f"not written (--dry-run): integrity would change {before} → {res.after}")


def _recipe(recipe_file: Path | None, size: int | None, preset: str | None) -> tuple[Any, list[str | None] | None]:
    """The preprocessing recipe (and labels, when the TOML file gives them) of ``models import``."""
    import tomllib

    from cxrtriage.errors import ConfigError
    from cxrtriage.model.importer import label_name
    from cxrtriage.preprocess import GeometryMode, IntensityMode, PreprocessRecipe, ResizeMode

    labels: list[str | None] | None = None
    table: dict[str, Any] = {}
    if preset == "xrv":
        table = {"geometry": GeometryMode.CENTER_CROP.value, "intensity": IntensityMode.NOMINAL.value,
                 "output_range": [-1024.0, 1024.0], "resize": ResizeMode.SKIMAGE.value}
    elif preset not in (None, "default"):
        raise ConfigError(f"--preprocessing {preset}: use 'xrv' (torchxrayvision's) or 'default'")
    if recipe_file is not None:
        try:
            doc = tomllib.loads(recipe_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--recipe {recipe_file}: cannot read it ({exc})") from exc
        pre = doc.get("preprocessing", {})
        if not isinstance(pre, dict):
            raise ConfigError(f"--recipe {recipe_file}: [preprocessing] must be a table of recipe fields")
        table.update(pre)
        if "labels" in doc:
            labels = [label_name(x) if x not in ("", "-") else None for x in doc["labels"]]
    if size is not None:
        table["size"] = size
    return PreprocessRecipe.from_dict(table, where=f"--recipe {recipe_file}" if recipe_file else "preprocessing"), labels


@models_app.command("import")
def import_cmd(
    out: Annotated[Path, typer.Option("--out", help="New model folder to write (e.g. models/my-model); its name is the "
                                                "model name unless --name is given.")],
    xrv_arch: Annotated[str | None, typer.Option("--xrv", metavar="WEIGHTS_NAME",
                                        help="torchxrayvision weights name (densenet121-res224-all, "
                                             "resnet50-res512-all...) or architecture (densenet121, resnet50) with "
                                             "--labels. Needs --weights.")] = None,
    pytorch: Annotated[str | None, typer.Option("--pytorch", metavar="MODULE:FACTORY",
                                       help="A callable returning your nn.Module; --weights is its state dict.")] = None,
    torchscript: Annotated[Path | None, typer.Option("--torchscript", help="A TorchScript file (no heat maps).")] = None,
    onnx_file: Annotated[Path | None, typer.Option("--onnx", help="A plain ONNX file (exported already).")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="The weights file (state dict or pickled model).")] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="Labels in output order, comma-separated or @FILE (one a "
                                                             "line); '-' marks an output to ignore.")] = None,
    recipe_file: Annotated[Path | None, typer.Option("--recipe", help="TOML file: \\[preprocessing] recipe fields "
                                                                   "and optionally labels = \\[...].")] = None,
    preprocessing: Annotated[str | None, typer.Option("--preprocessing", help="Recipe preset: xrv or default.")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Model input size (pixels per side).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: the --out folder's name).")] = None,
    version: Annotated[str, typer.Option("--version", help="Model version.")] = "1.0.0",
    images: Annotated[list[Path] | None, typer.Option("--images", help="Folder or file of real images for the parity "
                                                                    "check (repeatable); default: sample_data.")] = None,
    task: Annotated[str, typer.Option("--task", help="classification or segmentation (--onnx only).")] = "classification",
    logits: Annotated[str | None, typer.Option(
        "--logits", help="ONNX output with the logits/masks (default: the first).")] = None,
    features: Annotated[str | None, typer.Option("--features", help="ONNX output with the last post-ReLU feature map "
                                                                 "(enables exact Grad-CAM; the head is found).")] = None,
    no_features: Annotated[bool, typer.Option(
        "--no-features", help="PyTorch: export no feature map (no GAP+linear head).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
) -> None:
    """Import your own model into a sealed model folder: ONNX, manifest (sha256, labels, recipe, head, operating points),
    model card skeleton, and a parity check on real images (framework vs cxrtriage, in the card).

    torchxrayvision and PyTorch sources need the train extra (torch); a plain ONNX file does not.
    """
    import tempfile

    from cxrtriage.cli.render import console, exit_on_error
    from cxrtriage.errors import ConfigError
    from cxrtriage.model.importer import import_onnx, parse_labels
    from cxrtriage.model.manifest import Task, load_manifest
    from cxrtriage.model.registry import command_name

    with exit_on_error():
        sources = [x for x in (xrv_arch, pytorch, torchscript, onnx_file) if x is not None]
        if len(sources) != 1:
            raise ConfigError("give exactly one of --xrv, --pytorch, --torchscript, --onnx")
        if xrv_arch is not None and weights is None:
            raise ConfigError("--xrv needs --weights (the torchxrayvision weights file you downloaded)")
        recipe, toml_labels = _recipe(recipe_file, size, preprocessing)
        label_list = parse_labels(labels) if labels else toml_labels
        parity = list(images) if images else [Path(__file__).resolve().parents[2] / "sample_data"]
        model_name = name or out.name
        if onnx_file is not None:
            if label_list is None:
                raise ConfigError("--onnx needs --labels (or labels in --recipe)")
            manifest = import_onnx(onnx_file, out, name=model_name, version=version, labels=label_list, recipe=recipe,
                                   images=parity, task=task, logits_output=logits, features_output=features, force=force)
        else:
            try:
                from cxrtriage.train import byo
            except ImportError as exc:
                raise ConfigError(f"importing a PyTorch or torchxrayvision model needs torch (pip install -e '.[train]'):"
                                  f" {exc}") from exc
            with tempfile.TemporaryDirectory(prefix="cxrtriage-import-") as tmp:
                if xrv_arch is not None:
                    assert weights is not None
                    manifest = byo.import_xrv(xrv_arch, weights, out, name=model_name, version=version, images=parity,
                                              labels=label_list, force=force, work=Path(tmp))
                else:
                    if label_list is None:
                        raise ConfigError("--pytorch/--torchscript need --labels (or labels in --recipe)")
                    manifest = byo.import_pytorch(pytorch, weights, torchscript, out, name=model_name, version=version,
                                                  labels=label_list, recipe=recipe, images=parity,
                                                  features=not no_features, force=force, work=Path(tmp))
        m = load_manifest(manifest)
        parity_info = m.extra.get("imported", {}).get("parity", {})
        say = lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
        say(f"imported {m.name} {m.version}: {manifest} ({len(m.labels)} labels, "
            f"{m.n_outputs - len(m.labels)} outputs ignored, input {m.preprocessing.size}px, "
            f"heat maps: {'exact Grad-CAM' if m.head else 'no GAP+linear head'})")
        for key, what in (("graph", "ONNX vs framework, same input"), ("pipeline", "whole pipeline vs torchxrayvision's")):
            p = parity_info.get(key)
            if p:
                say(f"parity, {what}: max |logit difference| {p['max_abs_logit_difference']:.3g}, median "
                    f"{p['median_abs_logit_difference']:.3g} over {p['images']} image(s)"
                    + (f" ({p['not_compared']} not compared, see the card)" if p.get("not_compared") else ""))
        say(f"model card: {m.model_card} (performance UNKNOWN until `cxrtriage models validate`)")
        if m.task is Task.CLASSIFICATION and not m.thresholds:
            say(f"operating points: none yet, so predict gives scores without priorities until `cxrtriage models "
                f"validate {command_name(m)} IMAGES --labels LABELS.csv --out DIR` sets them on labelled images")


@models_app.command("validate")
def validate_cmd(
    model: Annotated[str, typer.Argument(help="Model name, or path to its folder or manifest.")],
    images: Annotated[list[Path], typer.Argument(help="The labelled images (files or folders).")],
    labels: Annotated[Path, typer.Option("--labels", help="LABELS.csv of the images (see `cxrtriage evaluate --help`).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the predict run and evaluation.json.")],
    by: Annotated[str, typer.Option("--by", help="Comma-separated label-file columns for subgroups (e.g. sex,view).")] = "",
    n_boot: Annotated[int, typer.Option("--n-boot", min=50, help="Bootstrap resamples for the 95% CIs.")] = 1000,
    workers: Annotated[int | None, typer.Option("--workers", help="Decode processes (0: in this process).")] = None,
    target_sensitivity: Annotated[float, typer.Option(
        "--target-sensitivity", help="For a label without operating points (e.g. a plain ONNX import): the "
                                     "sensitivity its rule-out threshold is set for on these images.")] = 0.95,
) -> None:
    """Validate a model on your own labelled images: predict + evaluate, then write the measured metrics (AUROC with
    95% CIs, operating points, calibration, subgroups) into a new, sealed version of its manifest and model card.

    A label without operating points gets them here, set on these same images (rule-out at --target-sensitivity,
    balanced at Youden's point) and written into the manifest, so that predict can triage with the model afterwards.
    Operating points the manifest already has are kept (move them with `cxrtriage calibrate`)."""
    from cxrtriage.cli.render import console, exit_on_error, print_warning
    from cxrtriage.model.manifest import load_manifest
    from cxrtriage.pipeline.validate import validate_model
    from cxrtriage.triage import has_operating_points

    with exit_on_error():
        res = validate_model(model, labels, images, out, by=tuple(c for c in by.split(",") if c.strip()),
                             n_boot=n_boot, workers=workers, target_sensitivity=target_sensitivity)
        say = lambda text: console.print(text, highlight=False, markup=False, soft_wrap=True)  # noqa: E731
        for lab, m in res.evaluation.labels.items():
            say(f"{lab}: AUROC {m.auroc:.3f} ({m.auroc_ci[0]:.3f}-{m.auroc_ci[1]:.3f}), n {m.n}, positives {m.n_positive}, "
                f"ECE {m.ece:.3f}")
        for lab, why in res.evaluation.not_evaluated.items():
            say(f"{lab}: not evaluated ({why})")
        points = res.operating_points
        if points is not None:
            for lab, t in points.thresholds.items():
                say(f"{lab}: operating points set (it had none): " + ", ".join(
                    f"{kind} {_fmt(op.threshold)} (sensitivity {_fmt(op.sensitivity)}, specificity "
                    f"{_fmt(op.specificity)})" for kind, op in (("rule_out", t.rule_out), ("balanced", t.balanced))))
            for lab, why in points.not_set.items():
                if lab in res.evaluation.labels:  # one not evaluated at all is said above, and in the last warning
                    print_warning(f"{lab}: no operating point set ({why})")
            for w in points.warnings:
                print_warning(w)
        say(f"{res.manifest}: version {res.version_before} -> {res.version_after}, integrity "
            f"{res.integrity_before[:12]} -> {res.integrity_after[:12]} (previous manifest kept as {res.history})")
        if points is not None and points.thresholds:
            say("the operating points were set and measured on the same images: their figures are optimistic; check "
                "them on other labelled images before relying on them")
        after = load_manifest(res.manifest)
        lacking = [lab for lab in after.labels if lab not in after.thresholds]
        if lacking and after.study is None and after.thresholds:
            print_warning(f"predict refuses to triage with this model while {', '.join(lacking)} lack operating "
                          "points: validate again with a column for them, or list them under [labels] ignore in a "
                          "--policy file")
        elif lacking and not has_operating_points(after):
            print_warning("no operating point could be set, so predict still gives scores without priorities")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
