"""The burned-in picture for the Secondary Capture: image, lung outline, main overlay and a legend."""

from __future__ import annotations

from numpy.typing import NDArray

from cxrtriage.report import imaging
from cxrtriage.report.study import ImageResult, ResultsBundle

SC_MAX_SIDE = 2048
SC_MIN_SIDE = 768  # tiny images are upscaled so that the burned-in legend stays legible
RED, GREEN, GREY, WHITE = (255, 80, 80), (120, 230, 120), (190, 190, 190), (235, 235, 235)


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def sc_picture(img: ImageResult, bundle: ResultsBundle, mask_names: tuple[str, ...] = ()) -> tuple[NDArray, list[str]]:
    """The RGB picture for one scored image, and notes on anything left out (mask or overlay unreadable)."""
    notes: list[str] = []
    base = imaging.at_least(imaging.fit(imaging.read_display_image(img.path), SC_MAX_SIDE), SC_MIN_SIDE)
    rgb = imaging.to_rgb(base)
    shown = None
    ranked = sorted(img.findings, key=lambda f: (not bool(f.positive), -(f.score or 0.0)))
    by_label = {h.label: h for h in img.heatmaps}
    for f in ranked:
        if f.label in by_label:
            shown = by_label[f.label]
            break
    if shown is None and img.heatmaps:
        shown = img.heatmaps[0]
    if shown is not None:
        try:
            rgb = imaging.read_overlay(shown.path, base)
        except Exception as exc:
            notes.append(f"overlay {shown.path.name} left out of the secondary capture: {exc}")
            shown = None
    mask_values: list[int] = []
    if img.mask_path is not None:
        try:
            mask = imaging.read_mask(img.mask_path, base.shape)
            rgb = imaging.draw_mask_outline(rgb, mask)
            mask_values = sorted(int(v) for v in set(mask.flatten().tolist()) if v != 0)
        except Exception as exc:
            notes.append(f"lung mask left out of the secondary capture: {exc}")

    man = bundle.manifest
    name = man.name if man else str(img.row.get("model_name") or bundle.run.model_name)
    version = man.version if man else str(img.row.get("model_version") or bundle.run.model_version)
    lines: list[tuple[str, tuple[int, int, int]]] = [
        (f"Model: {name} {version}", WHITE),
        (f"Operating point: {bundle.operating_point}", WHITE),
        ("", WHITE),
    ]
    for f in ranked:
        if f.score is None:
            continue
        if f.threshold is None:
            lines.append((f"{f.label}: {f.score:.2f} (threshold unknown)", GREY))
        else:
            sign, colour, word = (">=", RED, "ABOVE") if f.positive else ("<", GREEN, "below")
            lines.append((f"{f.label}: {f.score:.2f} {sign} {f.threshold:.2f}  {word}", colour))
    lines.append(("", WHITE))
    if img.priority:
        lines.append((_short(f"Priority: {img.priority}" + (f" - {img.priority_reason}" if img.priority_reason else "")), WHITE))
    if shown is not None:
        lines.append((f"Heatmap: {shown.label} (warm = model attention)", WHITE))
    for n, v in enumerate(mask_values):
        label = mask_names[v] if v < len(mask_names) else f"lung region {v}"
        colour = imaging.MASK_COLOURS[n % len(imaging.MASK_COLOURS)]
        lines.append((f"Outline: {label}", colour))
    if img.lung_area_mm2 is not None:
        lines.append((f"Lung area: {img.lung_area_mm2 / 100:,.1f} cm2", WHITE))
    footer = "Decision support only; not a diagnosis.\nA qualified clinician must review\nthe original image."
    picture = imaging.burn_legend(rgb, "AI RESULT - NOT FOR DIAGNOSIS", lines, footer)
    return picture, notes
