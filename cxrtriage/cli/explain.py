"""`cxrtriage explain`: heat-map overlays (and optional faithfulness scores) for chosen or flagged findings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cxrtriage.explain.batch import ExplainedFile, ExplainSummary


def _summary(summary: ExplainSummary, evaluate: bool) -> None:
    from rich.table import Table

    from cxrtriage.cli.render import console
    from cxrtriage.explain.batch import faithfulness_means

    table = Table(title="Explanations", title_justify="left")
    measured = any(row.outside_lungs is not None for row in summary.rows)
    cols = ["file", "finding", "method", "score", "threshold", "result"]
    cols += ["outside lungs"] if measured else []
    cols += ["deletion AUC ↓", "insertion AUC ↑"] if evaluate else []
    for c in cols:
        table.add_column(c, overflow="fold")
    for row in summary.rows:
        r = row.csv_row()
        result = {"map": r["png"], "no_map": f"[yellow]no map[/]: {r['reason']}",
                  "nothing_flagged": f"[dim]{r['reason']}[/]", "failed": f"[red]failed[/]: {r['reason']}",
                  "excluded": f"[dim]excluded: {r['reason']}[/]"}
        cells = [Path(r["path"]).name, r["label"], r["method"], r["score"], r["threshold"], result.get(r["status"], r["status"])]
        if measured:
            share = "" if row.outside_lungs is None else f"{100 * row.outside_lungs:.0f}%"
            cells.append(f"[bold orange1]{share} possible shortcut[/]" if row.shortcut else share)
        if evaluate:
            for key in ("deletion_auc", "insertion_auc"):
                cells.append(f"{r[key]} (random {r[key + '_random']})" if r[key] else "")
        table.add_row(*cells)
    console.print(table)
    means = faithfulness_means(summary.rows) if evaluate else {}
    if means:
        agg = Table(title="Faithfulness, mean over maps. Deletion: lower is better; insertion: higher is better. "
                          "'reversed' = the map's ranking coldest first; 'random' = a random ranking.",
                    title_justify="left")
        for c in ("method", "maps", "deletion", "reversed", "random", "insertion", "reversed", "random"):
            agg.add_column(c)
        for name, (n, f) in means.items():
            values = (f.deletion_auc, f.deletion_auc_reversed, f.deletion_auc_random, f.insertion_auc,
                      f.insertion_auc_reversed, f.insertion_auc_random)
            agg.add_row(name, str(n), *(f"{v:.4f}" for v in values))
        console.print(agg)


def explain_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (DICOM, PNG, JPEG, TIFF...), walked recursively.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for overlays (PNG), raw maps (.npy) and explain.csv.")],
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="Method (repeat for several, or 'all'): gradcam (default), gradcampp, layercam, xgradcam, "
                               "hirescam, eigencam, scorecam, occlusion.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", help="Finding to explain (repeat for several); this or --flagged is required.")] = None,
    flagged: Annotated[bool, typer.Option(
        "--flagged", help="Explain every finding whose score reaches its threshold (or name them with --label).")] = False,
    operating_point: Annotated[str, typer.Option(
        "--operating-point", help="Threshold used by --flagged and shown on overlays: balanced or rule_out.")] = "balanced",
    model: Annotated[str | None, typer.Option("--model", help="Classifier name or path (default: cxr-classifier).")] = None,
    lung_mask: Annotated[bool, typer.Option(
        "--lung-mask", help="Segment the lungs: each map's share of evidence outside the lung fields (explain.csv "
                            "outside_lungs, shortcut; a note on the overlay at 50% or more) and their outline on the "
                            "overlay. The maps stay ungated.")] = False,
    gate: Annotated[bool, typer.Option(
        "--gate", help="Multiply each map by the dilated lung mask (implies --lung-mask). Hides the evidence outside "
                       "the lungs, where shortcuts live.")] = False,
    segmenter_name: Annotated[str | None, typer.Option(
        "--segmenter", help="Segmenter for --lung-mask / --gate (default: lung-segmenter).")] = None,
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
    rules: Annotated[Path | None, typer.Option(
        "--rules", help="Selection rules TOML, as for predict: files they exclude (lateral views, non-chest images, "
                        "non-images) get an 'excluded' row and no map. Default: the built-in frontal-CXR rules.")] = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", metavar="FILE.toml", help="Triage policy, as for predict: its [labels] decide_unvalidated makes a "
                                              "finding decide where it is not validated. Default: the packaged policy.")
    ] = None,
    population: Annotated[str | None, typer.Option(
        "--population", metavar="NAME",
        help="Population of the patients whose age the files do not tell, as for predict (an age in DICOM wins; "
             "default: the model's confident estimate from the image, else unknown). A map of a finding not validated "
             "for the population says 'reported only' instead of 'FLAGGED', as predict's do.")] = None,
) -> None:
    """Heat maps showing which image regions drive a finding's score (decision support only, not a diagnosis).

    Per image and finding: DIR/<stem>__<label>__<method>.png (radiograph, overlay, colour bar, facts).

    Beside it the .npy: the map at the original image size, float32 0..1. For all maps: DIR/explain.csv.

    A finding with no positive evidence gets "no map" (no PNG). One bad file never stops the run.
    """
    from cxrtriage.cli.render import console, exit_on_error, print_warning
    from cxrtriage.errors import InputError
    from cxrtriage.explain.batch import ExplainConfig, run_explain

    def on_file(done: ExplainedFile) -> None:
        if done.warning:
            print_warning(done.warning)

    with exit_on_error():
        config = ExplainConfig(
            inputs=tuple(inputs), out=out, methods=tuple(method or ["gradcam"]), labels=tuple(label or ()), flagged=flagged,
            operating_point=operating_point, model=model, lung_mask=lung_mask, gate=gate, segmenter=segmenter_name,
            evaluate=evaluate,
            steps=steps, scorecam_top_k=top_k, occlusion_patch=patch, occlusion_stride=stride, max_side=max_side,
            device=device, rules=rules, policy=policy, population=population,
        )
        summary = run_explain(config, on_file=on_file)
        for note in summary.notes:
            print_warning(note)
        _summary(summary, evaluate)
        console.print(f"{summary.n_files} file(s), {summary.n_maps} map(s) written to {summary.out}, {summary.n_failed} "
                      f"failed; table: {summary.csv_path}")
        console.print("[bold]Decision support only — not a diagnosis.[/]")
        if summary.all_failed:
            raise InputError(f"none of the {summary.n_files} input file(s) could be explained; see the warnings above")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)
