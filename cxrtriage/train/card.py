"""MODEL_CARD.md generators: everything is rendered from the manifest data and the training record."""

from __future__ import annotations

from typing import Any


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _ci(ci: Any) -> str:
    return "–" if not ci or ci[0] is None else f"{ci[0]:.3f}–{ci[1]:.3f}"


def _op(d: Any) -> str:
    if not d:
        return "–"
    return f"{_f(d.get('sensitivity'), 2)} / {_f(d.get('specificity'), 2)}"


def _rate(v: Any, ci: Any) -> str:
    return "–" if v is None else f"{v:.3f} ({_ci(ci)})"


def _thr(v: Any) -> str:
    return "– (no deciding finding)" if v is None or v >= 1.0 else f"{v:.3f}"


def _ages(p: dict[str, Any]) -> str:
    lo, hi = p["age_years"]
    return f"{lo:g} to under {hi:g} years" if hi is not None else f"{lo:g} years and older"


def study_section(m: dict[str, Any]) -> list[str]:
    """The card's triage section: populations, which labels decide for each, and the study-level operating points
    with what they give on validation and held-out test patients (all from the manifest)."""
    pops, lv, so = m.get("populations"), m.get("label_validation"), m.get("study_operating_points")
    if not pops or not lv or not so:
        return []
    names = list(pops)
    L: list[str] = ["## Triage: validated labels and study-level operating points\n"]
    add = L.append
    add("Priorities are decided per study, on thresholds chosen for the study-level decision (`docs/triage.md`); only "
        "labels validated for the patient's population move the priority. The population comes from the patient's age "
        "in DICOM (PatientAge, or birth and study dates), else from `predict --population`, else it is *unknown* and "
        "the most cautious rules apply: every label validated for any population decides, and each tier takes its "
        "lowest threshold over the populations.\n")
    add("| population | ages | validated on |")
    add("|---|---|---|")
    for name, p in pops.items():
        add(f"| {name} | {_ages(p)} | {p['description']} |")
    add("")
    add(f"**Which labels decide.** Rule: {lv['rule']}. Data: {lv['data']}.\n")
    add("| label | " + " | ".join(f"{n}: AUROC (95% CI), pos / neg" for n in names) + " | decides for |")
    add("|---|" + "---|" * len(names) + "---|")
    for lab, per in lv["labels"].items():
        cells = []
        for n in names:
            v = per.get(n, {})
            if v.get("auroc") is None:
                cells.append(f"– ({v.get('note', 'not evaluated')})")
            else:
                mark = "**yes**" if v["validated"] else "no"
                cells.append(f"{v['auroc']:.3f} ({_ci(v['ci95'])}), {v['n_pos']} / {v['n_neg']}: {mark}")
        decides = [n for n in names if per.get(n, {}).get("validated")]
        add(f"| `{lab}` | " + " | ".join(cells) + f" | {', '.join(decides) or '**none** (reported only)'} |")
    add("")
    tiers = so["tiers"]
    definition = so["definition"][0].upper() + so["definition"][1:]
    add(f"**Study score.** {definition}. Thresholds: {so['fitted_on']}. Study unit: {so['study_unit']}. Policy: "
        f"`{so['policy']}`. Unknown population: {so['unknown_population']}.\n")
    add("| tier | fitted over | target (validation, per population) | "
        + " | ".join(f"{n} threshold" for n in names) + " | age unknown |")
    add("|---|---|---|" + "---|" * len(names) + "---|")
    for t, d in tiers.items():
        tg = d["target"]
        if "sensitivity" in tg:
            target = f"sensitivity >= {tg['sensitivity']} ({tg['positives']} not called normal)"
        else:
            target = f"at most {tg['max_false_urgent']:.0%} of {tg['negatives']} flagged {t}"
        thr = d["thresholds"]
        add(f"| {t} | {', '.join(d['labels'])} | {target} | " + " | ".join(_thr(thr[n]) for n in names)
            + f" | {_thr(min(thr.values()))} |")
    add("")
    add("What the whole decision gives per study (95% Wilson CIs). `normal`: sensitivity = abnormal studies NOT called "
        "normal, specificity = normal studies called normal. `urgent`: sensitivity = studies with an urgent finding "
        "flagged urgent, specificity = studies without one not flagged urgent. *(age unknown)*: the same studies "
        "decided with the unknown-population rules, as for a PNG/JPEG without `--population`.\n")
    add("| tier | population | validation sens / spec | test n pos / neg | **test sensitivity (95% CI)** | "
        "**test specificity (95% CI)** |")
    add("|---|---|---|---|---|---|")
    for t, d in tiers.items():
        for key, st in d["test"].items():
            v = d["validation"].get(key, {})
            add(f"| {t} | {key} | {_f(v.get('sensitivity'), 2)} / {_f(v.get('specificity'), 2)} | "
                f"{st['n_pos']} / {st['n_neg']} | {_rate(st['sensitivity'], st['sensitivity_ci95'])} | "
                f"{_rate(st['specificity'], st['specificity_ci95'])} |")
    add("")
    cand = so.get("candidates") or {}
    if cand:
        add("**Why the highest calibrated probability.** Each calibrated probability of a finding is a lower bound of "
            "the probability that *something* is abnormal, so their maximum is the tightest such bound that needs no "
            "fitting. The candidates for the `normal` score below use the same deciding labels; each gets its "
            "threshold on validation for the same target (sensitivity >= 0.95 per population) and is measured on test "
            "studies (the score alone: the whole decision above also flags some studies urgent, which is why its "
            "pediatric specificity is lower). A candidate that misses the sensitivity target on test, or gains AUROC "
            "only on the data it was fitted on, is not an improvement for a rule-out.\n")
        add("| candidate | population | AUROC validation | AUROC test (95% CI) | test sensitivity | test specificity |")
        add("|---|---|---|---|---|---|")
        for name, per in cand.items():
            for pop, r in per.items():
                add(f"| {name} | {pop} | {_f(r['auroc_validation'])} | {_f(r['auroc_test'])} "
                    f"({_ci(r['auroc_test_ci95'])}) | {_f(r['test_sensitivity'])} | {_f(r['test_specificity'])} |")
        add("")
    return L


def population_section(m: dict[str, Any]) -> list[str]:
    """The card's section on the population estimate from the image: what it is, its figures and how it fails."""
    pe = m.get("population_estimate")
    if not pe:
        return []
    L: list[str] = ["## Population estimate from the image\n"]
    add = L.append
    add(f"PNG and JPEG files carry no age. When neither the DICOM age nor `predict --population` says who the patient "
        f"is, a logistic regression on the {pe['pooling'].replace('_', ' ')} pooled `{pe['features_output']}` output "
        f"(the Grad-CAM layer, computed by the same inference call) estimates P({pe['estimates']}) against "
        f"{pe['versus']}. At or above the threshold **{pe['threshold']:g}** the image is triaged as {pe['estimates']} "
        f"(its validated labels and operating points; the row's `population_source` is `image-estimate` and the "
        f"priority reason says so); below it the population stays *unknown* (the most cautious rules). "
        f"`predict --population unknown` turns it off; an age in DICOM or `--population` always wins.\n")
    add(f"Fitted on: {pe['fitted_on']}. Threshold: {pe['threshold_rule']} (validation: highest adult probability "
        f"{_f(pe['validation'].get('highest_adult_probability'), 4)}, lowest child probability "
        f"{_f(pe['validation'].get('lowest_child_probability'), 4)}).\n")

    def share(d: Any) -> str:
        if not d or not d.get("n"):
            return "–"
        return f"{d['estimated_pediatric']} / {d['n']} = {_f(d['share'])} ({_ci(d['ci95'])})"

    add(f"| split | Kermany children 1–5 estimated {pe['estimates']} | adults estimated {pe['estimates']} | NIH adults | "
        "ieee adults | NIH children < 6 | NIH 6–17 | AUROC (95% CI) |")
    add("|---|---|---|---|---|---|---|---|")
    for name in ("validation", "test"):
        f = pe[name]
        by = f.get("adults_by_source", {})
        add(f"| {name} | {share(f['children_1_5_kermany'])} | {share(f['adults'])} | {share(by.get('nih14'))} | "
            f"{share(by.get('ieee_lungs'))} | {share(f['nih_children_under_6'])} | {share(f['nih_aged_6_17'])} | "
            f"{_f(f['auroc'])} ({_ci(f['auroc_ci95'])}) |")
    add("\n(95% Wilson intervals; the test split was measured once, after the threshold was set.)\n")
    young = pe.get("nih_under_18_all_splits") or []
    if young:
        add("NIH patients under 18 (no population of the manifest; never fitted on), probability of "
            f"{pe['estimates']}: " + ", ".join(f"{y['age']:g} y ({y['split']}) {_f(y['probability'])}" for y in young)
            + ".\n")
    others = pe.get("other_adult_images") or {}
    if others:
        add("Other adult images, outside the splits: " + ", ".join(f"`{k}` {_f(v['probability'])}"
                                                                   for k, v in others.items()) + ".\n")
    add("**How it fails.** It separates the Kermany source from the adult sources rather than children from adults: "
        "the NIH children aged 2–4 are NOT estimated pediatric, so a child from another hospital is most likely left "
        "*unknown* (the cautious rules: the safe direction, more studies flagged). The danger is the other way: an "
        "adult image that looks like the Kermany data (small, square-resized, low-contrast JPEG) estimated pediatric "
        "would lose the adult-only findings from its priority decision. The threshold sits a margin above every "
        "validation adult and no held-out adult reached it, but the adult data are few (about 110 per split, 95% "
        "upper bound of the false-pediatric rate about 3%). Give the age (DICOM) or `--population adult` at a site "
        "whose images are all adults, or turn the estimate off with `--population unknown`.\n")
    return L


def classifier_card(m: dict[str, Any], info: dict[str, Any], nih_counts: dict[str, int], experiments: str | None = None) -> str:
    """Render the classifier MODEL_CARD.md from its manifest data, training record and NIH label counts.

    ``experiments``: Markdown of other attempts (the model folder's ``experiments.md``), included verbatim as its
    own section before the limitations, so a regenerated card keeps it.
    """
    met = m["metrics"]
    arch = m["architecture"]
    cfg = info["config"]
    speed = met.get("speed") or {}
    labels = m["labels"]
    L: list[str] = []
    add = L.append
    add(f"# Model card: {m['name']} {m['version']}\n")
    add(f"**Intended use.** {m['intended_use']}\n")
    add("**Out of scope.** Autonomous diagnosis or reporting; lateral views; non-chest images; images from "
        "populations or devices unlike the training data without local validation; any use where a missed "
        "finding is not caught by a human reader.\n")
    add("## Model\n")
    add(f"- Architecture: {arch['name']} (single-channel ResNet-style CNN; stem /4, residual stages of widths "
        f"{arch['widths']} with depths {arch['depths']}, overall stride 32), global average pooling, ONE linear layer "
        f"→ {len(labels)} logits. Trained from scratch (no pretrained weights are reachable offline).")
    add(f"- ONNX outputs: `logits` [N, {len(labels)}] and `features` = {arch['feature_map']} "
        f"[N, {arch['widths'][-1]}, {m['input']['shape'][2] // 32}, {m['input']['shape'][3] // 32}], so Grad-CAM from the head "
        f"weights is exact. Head initializers: weight `{m['head']['weight']}`, bias `{m['head']['bias']}`, "
        f"transposed={m['head']['transposed']} (checked against the exported graph by value and shape).")
    add(f"- Input: `image` [N, 1, {m['input']['shape'][2]}, {m['input']['shape'][3]}] float32; preprocessing "
        f"(the same `cxrtriage.preprocess.to_model_input` in training and inference; training shrinks with OpenCV's "
        f"one-pass area resize, inference with sparse products equal to it to float32 rounding): "
        f"`{m['preprocessing']}`.")
    add(f"- ONNX size: {met.get('onnx_mb')} MB. Speed (model only, onnxruntime CPU, {speed.get('threads', '?')} threads, "
        f"batch {speed.get('batch', '?')}, `benchmarks/bench_model_speed.py`): "
        f"**{speed.get('images_per_s', 'not measured')} images/s** (median batch {speed.get('batch_ms_median', '?')} ms).")
    add("- Scores: one calibrated probability per label, p = sigmoid(a·logit + b) (Platt scaling fitted per label on the "
        "validation split).\n")
    add("## Labels and label mapping\n")
    add("Labels: " + ", ".join(f"`{x}`" for x in labels) + ".\n")
    add("| label | nih14 | kermany224 | ieee_lungs |\n|---|---|---|---|")
    for lab in labels:
        mp = m["label_mapping"].get(lab, {})
        add(f"| `{lab}` | {mp.get('nih14', '–')} | {mp.get('kermany224', '–')} | {mp.get('ieee_lungs', '–')} |")
    add("\nWhere a source does not define a label, that label's loss is masked for its images (no guessing).\n")
    add("**Which NIH findings became labels, and why.** The NIH subset has 486 patients; a finding is a label only "
        "with >= 40 positive patients, so that the patient-level 60/20/20 split leaves roughly 8+ positives each in "
        "validation (thresholds, calibration) and test. Positive counts: "
        + ", ".join(f"{k} {v}" for k, v in sorted(nih_counts.items(), key=lambda kv: -kv[1]) if k != "no_finding")
        + f" (and {nih_counts.get('no_finding')} with No Finding). Excluded for too few positives: "
        "Pneumothorax (33), Emphysema (33), Hernia (14), Edema (12) — these are "
        "NOT detected by this model and a negative score says nothing about them. NIH `Pneumonia` (23) is merged "
        "into the `pneumonia` label together with Kermany and ieee.\n")
    add("## Training data and splits\n")
    add(f"{m['training_data']}.\n")
    add("Splits are by patient, never by image (`splits/splits.csv`: relative image path, patient id, source, split). "
        "NIH and ieee: 60/20/20 by patient (stratified by abnormal). Kermany: the published test split is the test set; "
        "10% of the published-training patients are validation. Kermany patient ids (`personN`) recur across the "
        "published train and test folders (170 ids): their training images (457) were dropped so no test id is trained on.\n")
    add("| split | nih14 | kermany224 | ieee_lungs |\n|---|---|---|---|")
    for s, c in met["images"].items():
        add(f"| {s} | {c.get('nih14')} | {c.get('kermany224')} | {c.get('ieee_lungs')} |")
    add("")
    add(f"Recipe (`cxrtriage train classifier --data ../shared/data --out models/cxr-classifier --seed {cfg['seed']}`): "
        f"{cfg['epochs']} epochs of {cfg['samples_per_epoch']} images drawn per epoch with source shares "
        f"{dict(cfg['source_share'])} (the large pediatric set acts as the pre-training signal, the "
        f"adult sets are over-sampled), batch {cfg['batch']}, AdamW lr {cfg['lr']} (cosine, {cfg['warmup_epochs']} warm-up "
        f"epoch), weight decay {cfg['weight_decay']}, dropout {cfg['dropout']}, masked binary cross-entropy; augmentation "
        "on the preprocessed tensors: random rotation ±8°, scale ±10%, shift ±6%, gamma/contrast/brightness jitter (no "
        f"flips: laterality matters). Best epoch by validation mean AUROC: {info['best_epoch']} "
        f"(val {_f(info['best_val_score'])}). Training wall time {info['train_seconds'] / 60:.1f} min on 2 CPU cores "
        f"(torch {info['torch']}, seed {cfg['seed']}).\n")
    if cfg.get("init_from") or cfg.get("select_by", "mean") != "mean":
        add(f"**This run differs from the recipe above:** fine-tuned from `{cfg.get('init_from') or 'scratch'}`, best "
            f"epoch selected by validation `{cfg.get('select_by', 'mean')}` AUROC (the reported `val` above is that "
            f"metric), source shares {dict(cfg['source_share'])}, lr {cfg['lr']}, {cfg['epochs']} epochs.\n")
    add("## Results on held-out test patients\n")
    add("AUROC with 95% bootstrap CI (1000 resamples of cases); ECE of the calibrated score (10 bins); "
        "sensitivity / specificity at the manifest thresholds (set on validation, never on test).\n")
    for setname, per in met["test"].items():
        add(f"### {setname}\n")
        add("| label | n pos / neg | AUROC | 95% CI | ECE | rule-out sens / spec | balanced sens / spec |\n"
            "|---|---|---|---|---|---|---|")
        for lab, r in per.items():
            add(f"| `{lab}` | {r['n_pos']} / {r['n_neg']} | {_f(r['auroc'])} | {_ci(r['ci95'])} | {_f(r['ece'])} | "
                f"{_op(r.get('rule_out'))} | {_op(r.get('balanced'))} |")
        add("")
    ds = met["domain_shift"]
    add("## Targets (held-out test patients)\n")
    add("| target | required | achieved | met? |\n|---|---|---|---|")
    # the NIH bar is issue 15's (>= 0.72, with pediatric pneumonia kept >= 0.95); the first issue had asked for 0.75
    nih_target = 0.72
    for what, val, req in (("`pneumonia` vs normal, Kermany pediatric test", ds["pneumonia_auroc_kermany224_test"], 0.95),
                           ("`abnormal`, held-out NIH patients", ds["abnormal_auroc_nih14_test"], nih_target)):
        ok = val is not None and val >= req
        add(f"| {what} | AUROC >= {req} | {_f(val)} | {'yes' if ok else '**no**'} |")
    add("")
    if (ds["abnormal_auroc_nih14_test"] or 0) < nih_target:
        add("**The NIH `abnormal` target is not met.** The NIH subset offers only 48 No-Finding training patients (16 in "
            "validation, 16 in test) against 244 abnormal ones, and no pretrained weights are available offline, so the "
            "network learns adult findings from ~300 images. What was tried: masked multi-label training with the large "
            "pediatric set as auxiliary signal and the adult sets over-sampled (40% NIH per epoch), strong geometric and "
            "intensity augmentation, dropout and weight decay, checkpoint selection on validation AUROC (never on test). "
            "The 95% CI is wide (see above); the `abnormal` score on adults should be treated as weak evidence and the "
            "thresholds set on the pooled validation split (dominated by pediatric images) do not transfer to adults "
            "(NIH test rule-out specificity is very low). Next steps: more adult normal studies (e.g. the full NIH "
            "ChestX-ray14 release) or pretrained CXR weights."
            + (" Other attempts (an adult fine-tune; test-time augmentation, lung-cropped input and a two-model ensemble; "
               "320 px input; a linear probe for adult `abnormal` on the frozen features; self-supervised pre-training) "
               "are reported under \"What else was tried\" below." if experiments else "")
            + "\n")
    add("## Pediatric → adult domain shift (stated plainly)\n")
    add(f"`pneumonia` AUROC is {_f(ds['pneumonia_auroc_kermany224_test'])} on the pediatric Kermany test split but "
        f"{_f(ds['pneumonia_auroc_adult_test'])} on adult test patients (NIH + ieee pooled; NIH alone "
        f"{_f(ds['pneumonia_auroc_nih14_test'])}, on very few positives). `abnormal` AUROC is "
        f"{_f(ds['abnormal_auroc_kermany224_test'])} on Kermany test vs {_f(ds['abnormal_auroc_nih14_test'])} on NIH "
        "test patients. Most of the pneumonia signal was learned from children aged 1–5; pneumonia scores on adults "
        "must not be read as if they had the pediatric performance. The pooled adult pneumonia AUROC mixes sources "
        "(ieee is mostly COVID-19 positives) and partly measures source identity.\n")
    add("## Subgroups (test split, all sources pooled)\n")
    for lab, groups in met["subgroups"].items():
        add(f"**`{lab}`**\n\n| subgroup | n pos / neg | AUROC | 95% CI |\n|---|---|---|---|")
        for g, r in groups.items():
            add(f"| {g} | {r['n_pos']} / {r['n_neg']} | {_f(r['auroc'])} | {_ci(r['ci95'])} |")
        add("")
    add("Sex, age and view are unknown for Kermany images (children aged 1–5, presumably AP); subgroup AUROCs on a "
        "handful of cases have wide intervals and are shown for transparency, not as evidence of equity.\n")
    L.extend(study_section(m))
    L.extend(population_section(m))
    add("## Thresholds (validation split, calibrated score)\n")
    if m.get("study_operating_points"):
        add("Per-label operating points, reported for each finding (reports, per-label evaluation); triage priorities "
            "are decided on the study-level operating points above, not on these.\n")
    add("`balanced` is Youden's point; `rule_out` the highest threshold with validation sensitivity >= 0.95, but never "
        "above `balanced` (where Youden's point already reaches 0.95, rule-out is that point: it is never the less "
        "sensitive of the two).\n")
    add("| label | rule_out thr (sens / spec on val) | balanced thr (sens / spec on val) | Platt a | Platt b |\n"
        "|---|---|---|---|---|")
    for lab in labels:
        t = m["thresholds"].get(lab)
        a, b = m["calibration"]["a"][lab], m["calibration"]["b"][lab]
        if t:
            add(f"| `{lab}` | {_f(t['rule_out']['threshold'])} ({_op(t['rule_out'])}) | "
                f"{_f(t['balanced']['threshold'])} ({_op(t['balanced'])}) | {a:.3f} | {b:.3f} |")
        else:
            add(f"| `{lab}` | – | – | {a:.3f} | {b:.3f} |")
    add("\nValidation positives are few for NIH-only labels (7–18), so the thresholds carry real uncertainty; "
        "pooled validation for `abnormal`/`pneumonia` is dominated by pediatric images, so calibration for adults is weaker "
        "(see `reliability_test.png`, `reliability_val.png`).\n")
    if experiments:
        add(experiments.strip() + "\n")
    add("## Limitations\n")
    add("- Small adult training set (292 NIH + 65 ieee training images), trained from scratch: adult finding AUROCs are "
        "modest and their confidence intervals wide; several test labels have < 15 positives.\n"
        "- NIH labels were mined from reports by NLP (noisy); Kermany images were resized to 224x224 without keeping "
        "aspect ratio by the uploader; ieee images are heterogeneous web/paper figures.\n"
        "- Source identity is learnable (image size, padding, contrast): pooled AUROCs can overstate performance.\n"
        "- Not evaluated on DICOM from real scanners beyond smoke tests; no prospective validation.\n")
    add("## Files\n")
    add("`model.onnx` (sha256 in `manifest.json`), `model.pt` (PyTorch state_dict for parity tests), `manifest.json`, "
        "`splits/splits.csv`, `train_config.json` (full recipe and per-epoch history), `train_log.txt`, "
        "`reliability_test.png`, `reliability_val.png`"
        + (", `experiments.md` (other attempts; source of \"What else was tried\")" if experiments else "") + ".\n")
    add("Data credits: NIH Clinical Center (Wang et al., CVPR 2017, ChestX-ray8); Kermany et al. 2018 (CC BY 4.0); "
        "Cohen et al. covid-chestxray-dataset with v7labs lung masks (CC BY / CC BY-SA per image).")
    return "\n".join(L) + "\n"


_SEG_AUG = {  # SegmenterConfig.aug → what the recipe does (cxrtriage/train/augment.py for "heavy")
    "basic": "rotation ±10°, scale ±12%, shift ±6% (image and mask warped together), gamma/contrast/brightness jitter",
    "heavy": ("rotation ±15°, scale ±20%, aspect ±10%, shear ±0.08, shift ±10% (image and mask warped together); "
              "gamma (x e^±0.5), contrast ±35%, brightness ±0.15, Gaussian blur (p 0.3, sigma 0.5–2 px), "
              "low resolution (p 0.2, 1.5–3x down and up), 8x8 JPEG-like blocks (p 0.1), Gaussian noise (p 0.3, "
              "sd 0.01–0.06) and inverted grey scale as from a mishandled MONOCHROME1 image (p 0.05)"),
}


def segmenter_card(m: dict[str, Any], info: dict[str, Any], per_image: dict[str, Any], experiments: str | None = None) -> str:
    """Render the segmenter MODEL_CARD.md from its manifest data and training record.

    ``experiments``: Markdown written by hand (the model folder's ``experiments.md``: the by-eye check and the other
    candidates), included verbatim before the limitations.
    """
    met = m["metrics"]
    cfg = info["config"]
    speed = met.get("speed") or {}
    arch = m["architecture"]
    L: list[str] = []
    add = L.append
    add(f"# Model card: {m['name']} {m['version']}\n")
    add(f"**Intended use.** {m['intended_use']}\n")
    add("**Out of scope.** Diagnosis; lateral views; pediatric images (not in the training data); images with "
        "devices, large effusions or collapse may give wrong masks — always overlay and review.\n")
    add("## Model\n")
    parts = arch.get("members") or [arch]
    unet = (f"compact U-Net (base {parts[0]['base']} channels, 4 down-samplings, stem stride {parts[0]['stem_stride']} "
            "with a learned 2x up-sampling back to full resolution)")
    if arch.get("members"):
        add(f"- Architecture: {len(parts)} {unet.replace('U-Net', 'U-Nets', 1)}, each trained from scratch with its own "
            f"recipe ({', '.join(a['recipe'] for a in parts)}), exported as one graph: their class probabilities are "
            "averaged, and `masks` is the log of that mean (valid logits: softmax gives the mean back).")
    else:
        add(f"- Architecture: {unet}, trained from scratch.")
    add(f"- Input `image` [N, 1, {m['input']['shape'][2]}, {m['input']['shape'][3]}]; output `masks` = per-class logits "
        f"[N, 3, S, S] for labels {m['labels']} (argmax gives the label map; map it back to the image with "
        "`cxrtriage.preprocess.to_original(..., nearest=True)`).")
    add(f"- Preprocessing (same in training and inference): `{m['preprocessing']}`.")
    add(f"- Label definition: {m['label_definition']} This was checked on every mask: 89 of 90 masks have exactly two "
        "components, one has a small third fragment.")
    add(f"- ONNX size {met['onnx_mb']} MB; speed (onnxruntime CPU, {speed.get('threads', '?')} threads, batch "
        f"{speed.get('batch', '?')}): **{speed.get('images_per_s', 'not measured')} images/s**.\n")
    add("## Data and splits\n")
    add(f"{m['training_data']}. Images per split: {met['images']} (ieee patients split 60/20/20 exactly as for the "
        "classifier; masked images only). Several images can share a patient: splits are by patient.\n")
    threads = info.get("threads", 2)
    env = f"CXRTRIAGE_TRAIN_THREADS={threads} " if threads != 2 else ""  # thread count changes float sums: keep it
    command = f"{env}cxrtriage train segmenter --data ../shared/data --out models/lung-segmenter --seed {cfg['seed']}"
    wall = (f"Training wall time {info['train_seconds'] / 60:.1f} min with {info.get('threads', 2)} torch thread(s) on a "
            "shared 2-core machine.\n")
    if info.get("members"):
        each = "; ".join(f"**{mb['name']}**: {mb['config']['epochs']} epochs, augmentation: "
                         f"{_SEG_AUG[mb['config']['aug']]}; best epoch by validation Dice {mb['best_epoch']}"
                         for mb in info["members"])
        add(f"Recipe (`{command}`, input {cfg['size']} px): {len(info['members'])} members trained one after the other "
            f"on the same split, each seeded afresh as if trained alone, batch {cfg['batch']}, AdamW lr {cfg['lr']} "
            f"cosine, cross-entropy + soft Dice, no flips (they would swap right and left). {each}. " + wall)
    else:
        add(f"Recipe (`{command} --single`, input {cfg['size']} px): "
            f"{cfg['epochs']} epochs, batch {cfg['batch']}, AdamW lr {cfg['lr']} cosine, cross-entropy + soft Dice; "
            f"augmentation: {_SEG_AUG[cfg.get('aug', 'basic')]}; no flips (they would swap right and left). "
            f"Best epoch by validation Dice: {info['best_epoch']}. " + wall)
    add("## Results (Dice at the ORIGINAL image size, held-out patients)\n")
    add("| split | structure | mean Dice | 5th percentile | min | n |\n|---|---|---|---|---|---|")
    for s, d in met["dice"].items():
        for k, v in d.items():
            add(f"| {s} | {k} | {_f(v['mean'])} | {_f(v['p5'])} | {_f(v['min'])} | {v['n']} |")
    add("\n`lungs` = both lungs as one structure (issue 15 target on test: mean >= 0.94 and 5th percentile >= 0.88); "
        "right/left also require the side to be right.\n")
    if experiments:
        add(experiments.strip() + "\n")
    add("## Limitations\n")
    add("- Very small training set (adult, mostly COVID-19 AP/PA images from web and paper figures); test set of "
        f"{met['images'].get('test')} images: the 5th percentile is close to the minimum.\n"
        "- The masks include the retrocardiac lung; other datasets (e.g. JSRT/Montgomery) exclude it, so areas are "
        "not comparable across definitions.\n"
        "- Not validated on pediatric images, lateral views or post-operative chests.\n")
    add("Data credits: Cohen et al. covid-chestxray-dataset (CC BY / CC BY-SA per image), v7labs lung masks (CC BY 4.0).")
    return "\n".join(L) + "\n"
