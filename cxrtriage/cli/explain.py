"""`cxrtriage explain`: heat-map overlays (and optional faithfulness scores) for chosen or flagged findings."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from cxrtriage.explain.base import Heatmap
    from cxrtriage.model import Classifier, Segmenter

log = logging.getLogger(__name__)

CSV_NAME = "explain.csv"
CSV_FIELDS = (
    "path", "label", "method", "status", "reason", "score", "threshold", "operating_point", "flagged",
    "png", "npy", "deletion_auc", "insertion_auc", "deletion_auc_reversed", "insertion_auc_reversed",
    "deletion_auc_random", "insertion_auc_random",
    "model_name", "model_version", "model_sha256",
)


def _unique_stem(path: Path, taken: set[str]) -> str:
    from cxrtriage.explain.overlay import safe_name

    stem = safe_name(path.name.split(".")[0] if path.suffix.lower() == ".gz" else path.stem)
    candidate, k = stem, 2
    while candidate in taken:
        candidate, k = f"{stem}-{k}", k + 1
    taken.add(candidate)
    return candidate


def _fmt(v: float | None, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _explain_file(
    path: Path,
    stem: str,
    *,
    clf: Classifier,
    methods: list[str],
    labels: list[str] | None,
    options: dict[str, dict[str, Any]],
    out: Path,
    segmenter: Segmenter | None,
    evaluate: bool,
    steps: int,
    operating_point: str,
    max_side: int,
) -> list[dict[str, Any]]:
    from cxrtriage.explain.api import explain_input, flagged_labels, random_heatmap, read_any_image
    from cxrtriage.explain.base import label_index
    from cxrtriage.explain.faithfulness import deletion_insertion
    from cxrtriage.explain.gating import gate_heatmap
    from cxrtriage.explain.overlay import heatmap_filename, overlay_text, save_heatmap
    from cxrtriage.explain.registry import get_method

    m = clf.manifest
    image = read_any_image(path)
    mi = clf.preprocess(image)
    output = clf.run(mi.array[None], features=any(get_method(n).needs_features for n in methods))
    targets = labels if labels is not None else flagged_labels(clf, output.scores[0], operating_point=operating_point)
    base = {"path": str(path), "model_name": m.name, "model_version": m.version, "model_sha256": m.sha256}
    if not targets:
        return [{**base, "status": "nothing_flagged",
                 "reason": f"no finding reached its {operating_point} threshold"}]
    heatmaps: list[Heatmap] = explain_input(clf, mi, targets, methods, options=options, output=output)
    if segmenter is not None:
        mask = segmenter.segment(image)
        heatmaps = [gate_heatmap(h, mask) for h in heatmaps]
    random_scores: dict[str, tuple[float, float]] = {}
    rows: list[dict[str, Any]] = []
    for h in heatmaps:
        idx = label_index(clf.labels, h.label)
        t = m.thresholds.get(h.label)
        thr = None if t is None else getattr(t, operating_point).threshold
        row: dict[str, Any] = {
            **base, "label": h.label, "method": h.method, "score": _fmt(h.score, 4), "threshold": _fmt(thr, 4),
            "operating_point": operating_point,
            "flagged": "" if thr is None or h.score is None else str(h.score >= thr).lower(),
        }
        if h.empty:
            rows.append({**row, "status": "no_map", "reason": h.reason})
            continue
        png = out / heatmap_filename(stem, h.label, h.method)
        png_path, npy_path = save_heatmap(png, image, h, overlay_text(m, h, operating_point=operating_point), max_side=max_side)
        row.update(status="map", png=png_path.name, npy=npy_path.name if npy_path else "")
        if evaluate:
            assert h.values is not None
            f = deletion_insertion(clf, mi, h.values, idx, steps=steps)
            rev = deletion_insertion(clf, mi, h.values, idx, steps=steps, reverse=True)
            if h.label not in random_scores:
                r = deletion_insertion(clf, mi, random_heatmap(mi.geometry, label=h.label), idx, steps=steps)
                random_scores[h.label] = (r.deletion_auc, r.insertion_auc)
            row.update(deletion_auc=_fmt(f.deletion_auc, 4), insertion_auc=_fmt(f.insertion_auc, 4),
                       deletion_auc_reversed=_fmt(rev.deletion_auc, 4), insertion_auc_reversed=_fmt(rev.insertion_auc, 4),
                       deletion_auc_random=_fmt(random_scores[h.label][0], 4),
                       insertion_auc_random=_fmt(random_scores[h.label][1], 4))
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]], evaluate: bool) -> None:
    from rich.table import Table

    from cxrtriage.cli.render import console

    table = Table(title="Explanations", title_justify="left")
    cols = ["file", "finding", "method", "score", "threshold", "result"]
    cols += ["deletion AUC ↓", "insertion AUC ↑"] if evaluate else []
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        result = {"map": r.get("png", ""), "no_map": f"[yellow]no map[/]: {r.get('reason', '')}",
                  "nothing_flagged": f"[dim]{r.get('reason', '')}[/]", "failed": f"[red]failed[/]: {r.get('reason', '')}"}
        cells = [Path(r["path"]).name, r.get("label", ""), r.get("method", ""), r.get("score", ""), r.get("threshold", ""),
                 result.get(r["status"], r["status"])]
        if evaluate:
            for key in ("deletion_auc", "insertion_auc"):
                cells.append(f"{r[key]} (random {r.get(key + '_random', '')})" if r.get(key) else "")
        table.add_row(*cells)
    console.print(table)
    if evaluate:
        keys = ("deletion_auc", "deletion_auc_reversed", "deletion_auc_random", "insertion_auc", "insertion_auc_reversed",
                "insertion_auc_random")
        by_method: dict[str, list[list[float]]] = {}
        for r in rows:
            if r.get("deletion_auc"):
                by_method.setdefault(r["method"], []).append([float(r[k]) for k in keys])
        if by_method:
            agg = Table(title="Faithfulness, mean over maps. Deletion: lower is better; insertion: higher is better. "
                              "'reversed' = the map's ranking coldest first; 'random' = a random ranking.",
                        title_justify="left")
            for c in ("method", "maps", "deletion", "reversed", "random", "insertion", "reversed", "random"):
                agg.add_column(c)
            for name, vals in by_method.items():
                means = [sum(v[k] for v in vals) / len(vals) for k in range(len(keys))]
                agg.add_row(name, str(len(vals)), *(f"{m:.4f}" for m in means))
            console.print(agg)


def explain_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (DICOM, PNG, JPEG, TIFF...), walked recursively.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for overlays (PNG), raw maps (.npy) and explain.csv.")],
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="Method (repeat for several, or 'all'): gradcam (default), gradcampp, layercam, xgradcam, "
                               "hirescam, eigencam, scorecam, occlusion.")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="Finding to explain (repeat for several).")] = None,
    flagged: Annotated[bool, typer.Option("--flagged", help="Explain every finding whose score reaches its threshold.")] = False,
    operating_point: Annotated[str, typer.Option(
        "--operating-point", help="Threshold used by --flagged and shown on overlays: balanced or rule_out.")] = "balanced",
    model: Annotated[str | None, typer.Option("--model", help="Classifier name or path (default: cxr-classifier).")] = None,
    lung_mask: Annotated[bool, typer.Option("--lung-mask", help="Gate maps by the dilated lung mask of the segmenter.")] = False,
    segmenter_name: Annotated[str | None, typer.Option(
        "--segmenter", help="Segmenter for --lung-mask (default: lung-segmenter).")] = None,
    evaluate: Annotated[bool, typer.Option(
        "--evaluate", help="Also compute deletion/insertion AUC per map, with reversed and random references "
                               "(4 x (steps + 1) model passes per map).")] = False,
    steps: Annotated[int, typer.Option("--steps", min=2, help="Steps of the deletion/insertion curves.")] = 24,
    top_k: Annotated[int | None, typer.Option("--scorecam-top-k", min=1, help="Score-CAM: channels used (default 64).")] = None,
    patch: Annotated[int | None, typer.Option(
        "--occlusion-patch", min=1, help="Occlusion: patch side in model-input pixels (default S/8).")] = None,
    stride: Annotated[int | None, typer.Option(
        "--occlusion-stride", min=1, help="Occlusion: patch stride (default patch/2).")] = None,
    max_side: Annotated[int, typer.Option("--max-side", min=64, help="Downscale overlays whose long side exceeds this.")] = 1024,
    device: Annotated[str, typer.Option("--device", help="Execution device (auto, cpu, cuda, ...).")] = "auto",
) -> None:
    """Heat maps showing which image regions drive a finding's score (decision support only, not a diagnosis).

    Per image and finding: DIR/<stem>__<label>__<method>.png (radiograph, overlay, colour bar, facts).

    Beside it the .npy: the map at the original image size, float32 0..1. For all maps: DIR/explain.csv.

    A finding with no positive evidence gets "no map" (no PNG). One bad file never stops the run.
    """
    from cxrtriage.cli.render import console, exit_on_error, print_warning
    from cxrtriage.errors import ConfigError, CxrTriageError, InputError
    from cxrtriage.explain.registry import METHODS, method_availability, require_method
    from cxrtriage.io.discover import discover
    from cxrtriage.model import load_classifier, load_segmenter

    with exit_on_error():
        method = method or ["gradcam"]
        label = label or []
        if bool(label) == flagged:
            raise ConfigError("give either --label L (one or more) or --flagged, not both and not neither")
        if operating_point not in ("balanced", "rule_out"):
            raise ConfigError(f"--operating-point must be 'balanced' or 'rule_out', got '{operating_point}'")
        clf = load_classifier(model, device=device)
        if [m.lower() for m in method] == ["all"]:
            avail = method_availability(clf.manifest)
            methods = [n for n, reason in avail.items() if not reason]
            for n, reason in avail.items():
                if reason:
                    print_warning(f"method '{n}' skipped: {reason}")
        else:
            methods = [require_method(m, clf.manifest).name for m in method]
        methods = list(dict.fromkeys(methods))
        labels = None
        if label:
            from cxrtriage.explain.base import label_index

            labels = [clf.labels[label_index(clf.labels, lab)] for lab in label]
        options: dict[str, dict[str, Any]] = {"scorecam": {}, "occlusion": {}}
        if top_k is not None:
            options["scorecam"]["top_k"] = top_k
        if patch is not None:
            options["occlusion"]["patch"] = patch
        if stride is not None:
            options["occlusion"]["stride"] = stride
        options = {k: v for k, v in options.items() if v and k in METHODS}
        segmenter = load_segmenter(segmenter_name, device=device) if lung_mask else None
        files = list(discover(inputs))
        if not files:
            raise InputError(f"no files found under {', '.join(map(str, inputs))}")
        out.mkdir(parents=True, exist_ok=True)

        rows: list[dict[str, Any]] = []
        taken: set[str] = set()
        n_failed = 0
        for path in files:
            stem = _unique_stem(path, taken)
            try:
                rows += _explain_file(path, stem, clf=clf, methods=methods, labels=labels, options=options, out=out,
                                      segmenter=segmenter, evaluate=evaluate, steps=steps,
                                      operating_point=operating_point, max_side=max_side)
            except CxrTriageError as exc:
                n_failed += 1
                print_warning(f"{path}: {exc}")
                rows.append({"path": str(path), "status": "failed", "reason": str(exc)})
            except Exception as exc:  # one bad file never stops the run; the reason is kept
                n_failed += 1
                log.debug("unexpected error on %s", path, exc_info=True)
                print_warning(f"{path}: unexpected {type(exc).__name__}: {exc}")
                rows.append({"path": str(path), "status": "failed", "reason": f"{type(exc).__name__}: {exc}"})

        csv_path = out / CSV_NAME
        with open(csv_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: r.get(k, "") for k in CSV_FIELDS})
        _summary(rows, evaluate)
        n_maps = sum(r["status"] == "map" for r in rows)
        console.print(f"{len(files)} file(s), {n_maps} map(s) written to {out}, {n_failed} failed; table: {csv_path}")
        console.print("[bold]Decision support only — not a diagnosis.[/]")
        if n_failed == len(files):
            raise InputError(f"none of the {len(files)} input file(s) could be explained; see the warnings above")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)
