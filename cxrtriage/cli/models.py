"""`cxrtriage models list|info|verify|seal`: what models are installed, what they are, whether they are intact,
and re-sealing a manifest its owner edited on purpose."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    from cxrtriage.model.registry import ENV_MODELS_DIR, list_models, models_dir

    with exit_on_error():
        root = models_dir()
        entries = list_models(root)
        if not entries:
            console.print(f"No models found in {root} (set {ENV_MODELS_DIR} or pass --model PATH to commands).")
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
    if cal is not None:
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
    if m.extra:
        parts += render_mapping("Other manifest fields", m.extra)
    return parts


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
    t = Table(title="Populations (age from DICOM; else predict --population; else unknown = the most cautious rules)",
              title_justify="left")
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
    from cxrtriage.model.registry import MANIFEST_NAME, models_dir, resolve_manifest_path
    from cxrtriage.model.verify import ModelVerification, verify_model

    with exit_on_error():
        results: list[ModelVerification] = []
        if model is not None:
            results.append(verify_model(resolve_manifest_path(model)))
        else:
            root = models_dir()
            paths = sorted(p / MANIFEST_NAME for p in root.iterdir() if (p / MANIFEST_NAME).is_file()) \
                if root.is_dir() else []
            if not paths:
                raise ModelError(f"no models found in {root}; nothing to verify")
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


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
