"""The burned-in picture for the Secondary Capture: image, main explanation map, lung outline and a legend."""

from __future__ import annotations

from cxrtriage.report import imaging
from cxrtriage.report.masks import read_mask
from cxrtriage.report.sources import StudySources
from cxrtriage.report.study import Heatmap, ImageResult, ResultsBundle

SC_MAX_SIDE = 2048
SC_MIN_SIDE = 768  # tiny images are upscaled so that the burned-in legend stays legible
MAP_FLOOR = imaging.MAP_FLOOR
RED, GREEN, GREY, WHITE = (255, 80, 80), (120, 230, 120), (190, 190, 190), (235, 235, 235)
AMBER = (255, 176, 0)  # a possible shortcut: most of the shown map's evidence lies outside the lungs


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _main_heatmap(img: ImageResult) -> Heatmap | None:
    """The map of the most relevant finding: the highest-scoring one above threshold, else the highest score."""
    ranked = sorted(img.findings, key=lambda f: (not bool(f.positive), -(f.score or 0.0)))
    by_label = {h.label: h for h in img.heatmaps}
    for f in ranked:
        if f.label in by_label:
            return by_label[f.label]
    return img.heatmaps[0] if img.heatmaps else None


def sc_picture(img: ImageResult, bundle: ResultsBundle, sources: StudySources,
               mask_names: tuple[str, ...] = ()) -> tuple[imaging.U8, list[str]]:
    """The RGB picture for one scored image, and notes on anything left out.

    The source image (as displayed) gets the main explanation map blended in from its ``.npy`` (same
    colour map and floor as the explain overlays) and the lung outline. When only the overlay PNG
    exists (it is a composite, not aligned with the image), that PNG is used as it is, without outline.
    """
    notes: list[str] = []
    full = sources.picture(img)
    base = imaging.at_least(imaging.fit(full, SC_MAX_SIDE), SC_MIN_SIDE)
    rgb = imaging.to_rgb(base)
    shown = _main_heatmap(img)
    drawn_map = False
    aligned = True
    if shown is not None and shown.map_path is not None:
        try:
            rgb = imaging.heat_blend(base, imaging.read_map(shown.map_path, base.shape), floor=MAP_FLOOR)
            drawn_map = True
        except Exception as exc:
            notes.append(f"{img.path.name}: map {shown.map_path.name} not drawn on the secondary capture: {exc}")
    if shown is not None and not drawn_map:
        try:
            rgb = imaging.at_least(imaging.fit(imaging.read_png_rgb(shown.path), SC_MAX_SIDE), SC_MIN_SIDE)
            aligned = False
        except Exception as exc:
            notes.append(f"{img.path.name}: overlay {shown.path.name} left out of the secondary capture: {exc}")
            shown = None
    mask_values: list[int] = []
    if img.mask_path is not None and aligned:
        try:
            mask = read_mask(img.mask_path, base.shape)
            rgb = imaging.draw_mask_outline(rgb, mask)
            mask_values = sorted(int(v) for v in set(mask.flatten().tolist()) if v != 0)
        except Exception as exc:
            notes.append(f"{img.path.name}: lung mask left out of the secondary capture: {exc}")

    lines = legend_lines(img, bundle, shown, drawn_map=drawn_map, mask_values=mask_values, mask_names=mask_names)
    footer = "Decision support only; not a diagnosis.\nA qualified clinician must review\nthe original image."
    picture = imaging.burn_legend(rgb, "AI RESULT - NOT FOR DIAGNOSIS", lines, footer, colour_bar=drawn_map,
                                  bar_floor=MAP_FLOOR)
    return picture, notes


def legend_lines(img: ImageResult, bundle: ResultsBundle, shown: Heatmap | None, *, drawn_map: bool,
                 mask_values: list[int], mask_names: tuple[str, ...]) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend's coloured lines: model, findings against thresholds, priority, outlines, the shown map and the
    maps whose evidence lies mostly outside the lung fields (a possible shortcut, in amber)."""
    name, version = bundle.model.name, bundle.model.version
    lines: list[tuple[str, tuple[int, int, int]]] = [
        (f"Model: {name} {version}", WHITE),
        (f"Operating point: {bundle.operating_point}", WHITE),
        ("", WHITE),
    ]
    for f in sorted(img.findings, key=lambda f: (not bool(f.positive), -(f.score or 0.0))):
        if f.score is None:
            continue
        if f.threshold is None:
            lines.append((f"{f.label}: {f.score:.2f} (threshold unknown)", GREY))
        elif f.reported_only:  # not validated for the population: shown, but neither red nor green
            sign, word = (">=", "above") if f.positive else ("<", "below")
            lines.append((f"{f.label}: {f.score:.2f} {sign} {f.threshold:.2f}  {word}, reported only", GREY))
        else:
            sign, colour, word = (">=", RED, "ABOVE") if f.positive else ("<", GREEN, "below")
            lines.append((f"{f.label}: {f.score:.2f} {sign} {f.threshold:.2f}  {word}", colour))
    unvalidated = {f.population for f in img.findings if f.reported_only and f.score is not None}
    if unvalidated:
        lines.append((_short(f"reported only: not validated for the {', '.join(sorted(map(str, unvalidated)))}"), GREY))
        lines.append(("  population; it does not move the priority", GREY))
    lines.append(("", WHITE))
    if img.priority:
        lines.append((_short(f"Priority: {img.priority}" + (f" - {img.priority_reason}" if img.priority_reason else "")), WHITE))
    for n, v in enumerate(mask_values):
        label = mask_names[v] if v < len(mask_names) else f"lung region {v}"
        lines.append((f"Outline: {label}", imaging.MASK_COLOURS[n % len(imaging.MASK_COLOURS)]))
    if img.record.lung_area_mm2 is not None:
        lines.append((f"Lung area: {img.record.lung_area_mm2 / 100:,.1f} cm2", WHITE))
    if shown is not None:
        method = f" ({shown.method})" if shown.method else ""
        what = "colour = model evidence, not a lesion outline" if drawn_map else "picture drawn by the explain step"
        lines.append((f"Map{method}: {shown.label}", WHITE))
        lines.append((f"  {what}", WHITE))
        if shown.outside_lungs is not None:
            colour = AMBER if shown.outside_lungs >= bundle.shortcut_level else WHITE
            lines.append((f"  {100 * shown.outside_lungs:.0f}% of it outside the lung fields", colour))
    shortcuts = [h for h in img.heatmaps if h.outside_lungs is not None and h.outside_lungs >= bundle.shortcut_level]
    if shortcuts:
        lines.append(("", WHITE))
        lines.append(("POSSIBLE SHORTCUT (evidence mostly", AMBER))
        lines.append(("outside the lung fields):", AMBER))
        lines += [(f"  {h.label} {100 * (h.outside_lungs or 0.0):.0f}%", AMBER)
                  for h in sorted(shortcuts, key=lambda h: -(h.outside_lungs or 0.0))]
    return lines
