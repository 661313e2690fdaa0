"""The HTML report: headline, then each family with its figure, its numbers and a plain-language
sentence per finding. Figures are PNGs rendered with matplotlib's Agg canvas and embedded as base64,
so the page is one self-contained file. Pure: dicts in, bytes / text out (the stage writes them).

Figure data conventions (what the families' `detail` return):
- {"x", "real", "synthetic"[, "null_low", "null_high"]} with numeric x: curves (log-log for spectra);
- the same with string x (labels): bars of the synthetic / real ratio per label;
- {"real", "synthetic"} without x: per-sample values, drawn as overlaid histograms;
- a 2-D list: a map (e.g. the pixel significance map).
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from .severity import SEVERITY_COMPONENTS, metric_z

REAL_COLOUR, SYNTH_COLOUR = "#1f77b4", "#d62728"
FAMILY_TITLES = {
    "spectral": "1. Power spectrum", "wavelet": "2. Wavelet energy", "texture": "3. Texture (GLCM, gradients)",
    "boundary": "4. Lesion boundaries", "background": "5. Background", "spatial": "6. Spatial correlation",
    "pixel": "7. Pixel-wise statistics", "intensity": "8. Intensity distributions",
    "morphology": "9. Lesion-mask morphology", "classifier": "10. Real-vs-synthetic classifier",
    "memorization": "11. Memorisation", "feature_distance": "12. Feature distances (KID, FD)",
    "utility": "13. Utility (lesion segmenters trained on real / synthetic / both)",
}
# what a deviation means, per direction: (when the value is above the real level, when below)
MEANING = {
    "spectral_slope_diff": ("the synthetic power spectrum falls off at a different rate than the real one", ""),
    "spectral_js": ("the distribution of power over frequencies differs from real", ""),
    "hf_ratio_diff": ("synthetic images carry more high-frequency power (noise or artificial detail)",
                      "synthetic images carry less high-frequency power: they are smoother than real"),
    "wavelet_hh_l1_ratio": ("there is more fine diagonal detail than in real images (noise)",
                            "there is less fine diagonal detail than in real images: finest textures are lost"),
    "gradient_ratio": ("edges and textures are stronger than in real images",
                       "edges and textures are weaker than in real images (blur)"),
    "texture_ks_mean": ("texture statistics (GLCM) are distributed differently from real", ""),
    "boundary_sharpness_ratio": ("lesion edges are sharper than real", "lesion edges are blurrier than real"),
    "background_std_synth": ("the background outside the head is noisier than in real images",
                             "the background is cleaner than in real images"),
    "spatial_corr_ratio": ("texture is correlated over longer distances (smoother, blotchier) than real",
                           "texture is correlated over shorter distances (grainier) than real"),
    "pixel_frac_significant": ("a larger share of pixel positions differ in mean intensity than between "
                               "two real sets of these sizes", ""),
    "wasserstein_all": ("the overall intensity histogram differs from real", ""),
    "mask_mmd": ("lesion shapes and sizes are distributed differently from real", ""),
    "lesion_rate_diff": ("the share of slices carrying a lesion differs from real (per class)", ""),
    "lesion_count_ratio": ("lesion slices carry more lesions than real ones (fragmented lesions)",
                           "lesion slices carry fewer lesions than real ones"),
    "kid": ("features of a fixed network are distributed differently from real (KID)", ""),
    "fd": ("features of a fixed network are distributed differently from real (Frechet distance)", ""),
    "memorization_ratio": ("synthetic samples are no closer to training images than new real images are",
                           "synthetic samples sit closer to training images than new real images do "
                           "(possible memorisation)"),
}


# ------------------------------------------------------------------------------------ figures
def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


def _new_figure(n_panels: int, width: float = 3.6, height: float = 2.8):
    from matplotlib.figure import Figure

    cols = min(n_panels, 4)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def _panel(ax, key: str, entry) -> bool:
    """Draw one figure-data entry; False when its shape is not one the report knows."""
    if isinstance(entry, list) and entry and isinstance(entry[0], list):
        m = _arr(np.asarray(entry, dtype=object).ravel()).reshape(len(entry), -1)
        lim = max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0, 1e-6)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.figure.colorbar(im, ax=ax, fraction=0.046, label="signed -log10 p (FDR)")
        ax.set_xticks([])
        ax.set_yticks([])
    elif isinstance(entry, dict) and "real" in entry and "synthetic" in entry:
        real, synth = entry["real"], entry["synthetic"]
        if "x" in entry and entry["x"] and isinstance(entry["x"][0], str):
            r, s = _arr(real), _arr(synth)
            ratio = np.where(r > 0, s / np.where(r > 0, r, 1), np.nan)
            ax.bar(range(len(ratio)), ratio, color=SYNTH_COLOUR, alpha=0.8)
            ax.axhline(1.0, color="k", lw=1, ls="--")
            ax.set_xticks(range(len(ratio)), entry["x"], rotation=90, fontsize=6)
            ax.set_ylabel("synthetic / real")
        elif "x" in entry:
            x = _arr(entry["x"])
            if "null_low" in entry and "null_high" in entry:
                ax.fill_between(x, _arr(entry["null_low"]), _arr(entry["null_high"]), color="grey", alpha=0.3,
                                label="real vs real (95%)")
            ax.plot(x, _arr(real), color=REAL_COLOUR, label="real")
            ax.plot(x, _arr(synth), color=SYNTH_COLOUR, label="synthetic", ls="--")
            if key == "spectrum":
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xlabel("frequency (cycles / pixel)")
            ax.legend(fontsize=7)
        else:
            r, s = _arr(real), _arr(synth)
            r, s = r[np.isfinite(r)], s[np.isfinite(s)]
            if len(r) == 0 and len(s) == 0:
                return False
            both = np.concatenate([r, s])
            bins = np.linspace(both.min(), both.max() + 1e-12, 30)
            ax.hist(r, bins=bins, density=True, alpha=0.5, color=REAL_COLOUR, label="real")
            ax.hist(s, bins=bins, density=True, alpha=0.5, color=SYNTH_COLOUR, label="synthetic")
            ax.legend(fontsize=7)
    else:
        return False
    ax.set_title(key.replace("_", " "), fontsize=9)
    ax.tick_params(labelsize=7)
    return True


def _drawable(entry) -> bool:
    return (isinstance(entry, list) and bool(entry) and isinstance(entry[0], list)) or (
        isinstance(entry, dict) and "real" in entry and "synthetic" in entry)


def family_figure(family: str, detail: dict) -> bytes | None:
    keys = [k for k, v in detail.items() if _drawable(v)]
    if not keys:
        return None
    fig, axes = _new_figure(len(keys))
    for ax, k in zip(axes, keys):
        if not _panel(ax, k, detail[k]):
            ax.set_axis_off()
    fig.suptitle(FAMILY_TITLES.get(family, family), fontsize=10)
    return _png(fig)


def sample_grid_figure(samples: dict) -> bytes | None:
    if "real_images" not in samples or "synthetic_images" not in samples:
        return None
    n = max(len(samples["real_images"]), len(samples["synthetic_images"]))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 * n, 3.4))
    for row, side in enumerate(("real", "synthetic")):
        images, masks = samples[f"{side}_images"], samples.get(f"{side}_masks")
        for i in range(n):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.set_axis_off()
            if i >= len(images):
                continue
            img = np.asarray(images[i])
            ax.imshow(img[0] if img.shape[0] == 1 else np.clip((img.transpose(1, 2, 0) + 1) / 2, 0, 1),
                      cmap="gray", vmin=-1, vmax=1)
            if masks is not None and np.asarray(masks[i]).any():
                ax.contour(np.asarray(masks[i], dtype=float), levels=[0.5], colors="#ff3030", linewidths=0.8)
            if i == 0:
                ax.set_title(side, fontsize=9, loc="left")
    return _png(fig)


def deviation_figure(diag: dict) -> bytes | None:
    comps = (diag.get("severity") or {}).get("components") or {}
    if not comps:
        return None
    def capped(k):  # an absent component (mask collapse) is stored with z = None (inf)
        z = comps[k].get("z")
        return 50.0 if z is None else min(z, 50.0)

    names = sorted(comps, key=capped)
    z = [capped(k) for k in names]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 0.3 * len(names) + 1))
    ax = fig.add_subplot(1, 1, 1)
    z0 = (diag.get("severity") or {}).get("z0", 2.0)
    ax.barh(range(len(names)), z, color=[SYNTH_COLOUR if v > z0 else "grey" for v in z])
    ax.axvline(z0, color="k", ls="--", lw=1)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("distance from the real-vs-real level (null SDs; capped at 50)")
    return _png(fig)


def render_figures(diag: dict, details: dict, samples: dict) -> dict[str, bytes]:
    """name -> PNG bytes: one per family with figure data, the sample grid and the deviation chart."""
    out = {}
    for name in ("deviations", "samples"):
        png = deviation_figure(diag) if name == "deviations" else sample_grid_figure(samples)
        if png:
            out[name] = png
    for family, detail in details.items():
        png = family_figure(family, detail)
        if png:
            out[family] = png
    if diag.get("utility"):
        out.update(utility_figures(diag["utility"], samples))
    return out


# --------------------------------------------------------------------------------------- text
def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    v = float(v)
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def finding_sentence(name: str, rec: dict, z0: float) -> str | None:
    """One plain-language sentence about a metric, from its numbers (None if it has no null)."""
    label = name.replace("_", " ")
    z = metric_z(name, rec)
    if z is not None and math.isinf(z):
        return (f"{label}: not measurable, the synthetic set has no {rec['absent_in_synthetic']} while the real "
                "set has; counted as the largest possible deviation.")
    if z is None:
        return None
    band = f"{_num(rec['null_mean'])} ± {_num(rec['null_sd'])} between two real sets of these sizes"
    if z <= z0:
        return f"{label} = {_num(rec['value'])}: within the real-vs-real range ({band}); not a finding."
    above = rec["value"] > rec["null_mean"]
    meaning = MEANING.get(name, ("", ""))[0 if above else 1] or (
        f"the value is {'higher' if above else 'lower'} than between real halves")
    distance = f"{z:.1f} null SDs" if z < 1000 else "more than 1000 null SDs"
    return f"{label} = {_num(rec['value'])} is {distance} from the real level ({band}): {meaning}."



def _classifier_sentence(metrics: dict) -> str | None:
    auc, auc_d = metrics.get("classifier_auc"), metrics.get("classifier_auc_dithered")
    if not auc:
        return None
    text = (f"A small CNN separates real from synthetic images with out-of-fold AUC {_num(auc['value'])} "
            f"(95% CI {_num(auc.get('ci_low'))}–{_num(auc.get('ci_high'))}, "
            f"permutation p = {_num(auc.get('p_value'))}; "
            f"0.5 = indistinguishable, 1 = always told apart).")
    repeats = auc.get("repeat_aucs") or []
    if len(repeats) > 1:
        text += (f" It averages {len(repeats)} networks per fold; single networks scored "
                 f"{_num(min(repeats))}–{_num(max(repeats))}.")
    if auc_d and auc_d.get("note"):
        text += f" Dithering: {auc_d['note']}."
    elif auc_d:
        gap = (auc["value"] or 0) - (auc_d["value"] or 0)
        text += (f" After dithering both sets onto the real intensity grid it is {_num(auc_d['value'])}"
                 + ("; the gap suggests part of the signal is the quantisation fingerprint, not anatomy."
                    if gap > 0.05 else "."))
    return text


class _Html(str):
    """A table cell that is already HTML (not escaped again)."""


def _metric_cell(name: str) -> _Html:
    """The metric's name linked to its entry in docs/metrics.md, its definition as the hover text."""
    from ..metric_doc import link  # lazy: metric_doc reads this module's family titles

    found = link(name)
    if found is None:
        return _Html(html.escape(name))
    href, title = found
    return _Html(f'<a href="{html.escape(href)}" title="{html.escape(title)}">{html.escape(name)}</a>')


def _metric_table(metrics: dict[str, dict], names: list[str]) -> str:
    head = ("metric", "value", "95% CI", "real", "synthetic", "real vs real (mean ± sd)")
    rows = []
    for n in names:
        r = metrics[n]
        rows.append((_metric_cell(n), _num(r.get("value")), f"{_num(r.get('ci_low'))} – {_num(r.get('ci_high'))}",
                     _num(r.get("real")), _num(r.get("synthetic")),
                     f"{_num(r.get('null_mean'))} ± {_num(r.get('null_sd'))}"))
    return _table(head, rows)


def _table(head, rows) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Html) else html.escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _set_line(label: str, s: dict | None) -> str:
    if not s:
        return ""
    bits = [f"{s.get('n')} images", s.get("kind", "")]
    if s.get("split"):
        bits.append(f"split '{s['split']}'")
    if s.get("n_subjects"):
        bits.append(f"{s['n_subjects']} subjects")
    if s.get("inferred"):
        bits.append(s["inferred"])
    what = html.escape(", ".join(b for b in bits if b))
    return f"<li><b>{label}</b>: {html.escape(str(s.get('path')))} ({what})</li>"


def render_html(diag: dict, figures: dict[str, bytes]) -> str:
    metrics = diag.get("metrics", {})
    sev = diag.get("severity") or {}
    z0 = sev.get("z0", 2.0)
    head = diag.get("headline", {})
    parts = [f"<h1>Synthetic vs real diagnostics</h1><ul>{_set_line('Real set', diag.get('real_set'))}"
             f"{_set_line('Synthetic set', diag.get('synthetic_set'))}"
             f"{_set_line('Training set (memorisation)', diag.get('train_set'))}</ul>"]
    # headline
    s = sev.get("severity")
    verdict = ("no difference beyond real-vs-real variation" if s is not None and s < 0.05 else
               "small differences" if s is not None and s < 0.3 else
               "clear differences" if s is not None and s < 0.6 else "large differences")
    h = ['<div class="headline"><h2>Headline</h2>']
    h.append(f"<p><b>Severity {_num(s)}</b> (0 = as close as two real sets of these sizes, 1 = far outside; "
             f"mean over {len(sev.get('components', {}))} metrics): "
             f"{verdict if s is not None else 'not computed'}.</p>")
    cls = _classifier_sentence(metrics)
    if cls:
        h.append(f"<p>{html.escape(cls)}</p>")
    devs = head.get("largest_deviations") or []
    if devs:
        items = "".join(
            f"<li>{html.escape(finding_sentence(d['metric'], metrics[d['metric']], z0) or d['metric'])}</li>"
            for d in devs if d["metric"] in metrics)
        h.append(f"<p>Largest deviations from the real-vs-real null:</p><ol>{items}</ol>")
    if "deviations" in figures:
        h.append(_img(figures["deviations"], "distance of each severity component from the null"))
    h.append("</div>")
    parts.append("".join(h))
    if "samples" in figures:
        parts.append("<h2>Samples</h2><p>Top: real; bottom: synthetic (red outline: lesion mask).</p>"
                     + _img(figures["samples"], "sample grid"))
    # families
    families = diag.get("families", {})
    for fam in [*FAMILY_TITLES, *(f for f in families if f not in FAMILY_TITLES)]:  # the spec's numbering
        if fam not in families:
            continue
        st = families[fam]
        sec = [f"<h2>{html.escape(FAMILY_TITLES.get(fam, fam))}</h2>"]
        if st.get("status") != "ok":
            what = "Skipped" if st.get("status") == "skipped" else "Failed"
            sec.append(f"<p class='note'>{what}: {html.escape(str(st.get('reason')))}.</p>")
            parts.append("".join(sec))
            continue
        names = [n for n, r in metrics.items() if r.get("family") == fam]
        sentences = [finding_sentence(n, metrics[n], z0) for n in names
                     if n in SEVERITY_COMPONENTS or n in MEANING]
        if fam == "classifier":
            sentences = [_classifier_sentence(metrics)]
        if fam == "utility" and diag.get("utility"):  # its own body: verdict, arms table, figures
            sec.append(utility_section_body(diag["utility"], figures))
            sentences, names = [], []
        sentences = [x for x in sentences if x]
        if sentences:
            sec.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in sentences) + "</ul>")
        if fam in figures:
            sec.append(_img(figures[fam], fam))
        if names:
            sec.append("<details><summary>all numbers</summary>" + _metric_table(metrics, names) + "</details>")
        sec.append(f"<p class='note'>{st.get('seconds', 0):.1f} s</p>")
        parts.append("".join(sec))
    zb = diag.get("zbins") or {}
    if zb:
        bins = sorted({b for v in zb.values() for b in v}, key=int)
        rows = [(_metric_cell(m), *(_num(zb[m].get(b)) for b in bins)) for m in zb]
        parts.append("<h2>Per z-bin</h2><p>The same metrics within each z-bin (slice position), without CIs.</p>"
                     + _table(("metric", *(f"z-bin {b}" for b in bins)), rows))
    unit = (diag.get("resampling") or {}).get("real", "")
    parts.append("<h2>How to read this</h2><p>Every metric is compared with its real-vs-real null: the same "
                 "metric between two sets drawn from the real data at the sizes compared here, the real side in "
                 "whole subjects as the real set was sampled, the synthetic side as independent slices. A "
                 "difference inside that range is not a finding. Severity maps each component's distance from "
                 f"the real-vs-real level to [0, 1] (0 within {z0:g} null SDs, SDs floored at each metric's "
                 "resolution), counts a component the synthetic set cannot provide (no lesions) as 1, and "
                 "averages them. Bootstrap CIs (95%) are centred on the value: the range of the metric's "
                 "expected value at these sample sizes. The real set is resampled by "
                 f"{html.escape(unit or 'slices')}.</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
             ".headline{background:#f4f6fa;padding:0.5em 1em;border-radius:6px}.note{color:#666}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>jsddpm diagnostics</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


# ------------------------------------------------------------------------------------ utility
UTILITY_METRIC_LABELS = {"dice": "Dice (lesion slices)", "sensitivity": "lesion-wise sensitivity",
                         "fp_per_slice": "false positives per slice", "subject_dice": "per-subject Dice"}


def utility_bars_figure(util: dict) -> bytes | None:
    """One panel per metric: a bar per arm (seed mean) with its 95% CI and the per-seed values as dots."""
    arms = util.get("arms") or {}
    if not arms:
        return None
    fig, axes = _new_figure(len(UTILITY_METRIC_LABELS), width=3.4, height=3.0)
    names = list(arms)
    colours = [REAL_COLOUR if a.startswith("real") and "synthetic" not in a else
               SYNTH_COLOUR if a == "synthetic" else "#9467bd" for a in names]
    for ax, (metric, label) in zip(axes, UTILITY_METRIC_LABELS.items()):
        recs = [arms[a][metric] for a in names]
        vals = _arr([r["value"] for r in recs])
        lo, hi = _arr([r["ci_low"] for r in recs]), _arr([r["ci_high"] for r in recs])
        ax.bar(range(len(names)), np.nan_to_num(vals), color=colours, alpha=0.8,
               yerr=[np.clip(np.nan_to_num(vals - lo), 0, None), np.clip(np.nan_to_num(hi - vals), 0, None)],
               capsize=3)  # a percentile CI of a pooled ratio can miss its seed mean on tiny sets
        for i, r in enumerate(recs):
            seeds = _arr(r.get("seeds") or [])
            ax.plot(np.full(len(seeds), i), seeds, "k.", ms=3)
        ax.set_xticks(range(len(names)), [n.replace("_plus_", "+\n") for n in names], fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle("13. Utility: segmenters scored on held-out real slices (bars: 95% CI; dots: seeds)",
                 fontsize=10, y=1.04)
    return _png(fig)


def utility_examples_figure(examples: dict) -> bytes | None:
    """Held-out real lesion slices: truth (red) and the predictions of the real-trained and the
    synthetic-trained segmenter (first seed, cyan)."""
    if "utility_images" not in examples:
        return None
    from matplotlib.figure import Figure

    images = np.asarray(examples["utility_images"])
    cols = [("truth", "utility_truth"), ("real-trained", "utility_pred_real"),
            ("synthetic-trained", "utility_pred_synthetic")]
    cols = [(t, k) for t, k in cols if k in examples]
    fig = Figure(figsize=(1.9 * len(cols), 1.9 * len(images)))
    for i, img in enumerate(images):
        for j, (title, key) in enumerate(cols):
            ax = fig.add_subplot(len(images), len(cols), i * len(cols) + j + 1)
            ax.set_axis_off()
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1)
            truth = np.asarray(examples["utility_truth"][i], dtype=float)
            ax.contour(truth, levels=[0.5], colors="#ff3030", linewidths=0.8)
            if key != "utility_truth":
                pred = np.asarray(examples[key][i], dtype=float)
                if pred.any():
                    ax.contour(pred, levels=[0.5], colors="#00e5ff", linewidths=0.8)
            if i == 0:
                ax.set_title(title, fontsize=9)
    return _png(fig)


def utility_figures(util: dict | None, examples: dict) -> dict[str, bytes]:
    out = {}
    bars = utility_bars_figure(util or {})
    if bars:
        out["utility_bars"] = bars
    ex = utility_examples_figure(examples)
    if ex:
        out["utility_examples"] = ex
    return out


def utility_section_body(util: dict, figures: dict[str, bytes]) -> str:
    """The verdict, the arms table with CIs, the differences, the figures and how they were made."""
    parts = [f"<p><b>{html.escape(util.get('verdict', ''))}</b></p>"]
    head = ("arm", "real + synthetic slices", "steps (per seed)", *UTILITY_METRIC_LABELS.values())

    def cell(r):
        return f"{_num(r['value'])} ({_num(r['ci_low'])} – {_num(r['ci_high'])})"

    def steps(r):
        used = "/".join(str(s) for s in r.get("steps", []))
        return used + ("" if r.get("converged", True) else " (not converged)")

    rows = [(a, f"{r['n_real']} + {r['n_synthetic']}", steps(r), *(cell(r[m]) for m in UTILITY_METRIC_LABELS))
            for a, r in util.get("arms", {}).items()]
    rows += [(d, "paired difference", "", *(cell(r[m]) for m in UTILITY_METRIC_LABELS))
             for d, r in util.get("differences", {}).items()]
    parts.append(_table(head, rows))
    if "utility_bars" in figures:
        parts.append(_img(figures["utility_bars"], "utility metrics per arm"))
    if "utility_examples" in figures:
        parts.append("<p>Held-out real lesion slices: true lesion (red) and predictions (cyan) of the first "
                     "real-trained and synthetic-trained segmenters.</p>"
                     + _img(figures["utility_examples"], "example predictions"))
    st, te = util.get("settings", {}), util.get("test", {})
    parts.append(
        f"<p class='note'>Each arm trains {len(st.get('seeds', []))} small UNets (seeds {st.get('seeds')}) on "
        f"batches of {st.get('batch_size')} slices until their Dice on validation subjects carved from the real "
        f"training set stops improving (at most {st.get('max_steps')} steps; best weights kept); scored on "
        f"{te.get('n_slices')} held-out real slices ({te.get('n_lesion_slices')} with lesions, "
        f"{te.get('n_lesions')} lesions). Value = mean over seeds; 95% CI: t-interval with test "
        f"{html.escape(str(te.get('resampling_unit', '')))} and seeds as crossed random factors; differences "
        "are paired. Dice pools "
        "the pixels of the lesion slices; sensitivity counts true lesions touched by a prediction; false "
        "positives are predicted components touching no lesion, per slice.</p>")
    return "".join(parts)


def render_utility_page(util: dict, figures: dict[str, bytes]) -> str:
    """The report of `jsddpm diagnose utility`: one self-contained page."""
    sets = "".join(_set_line(label, util.get(key)) for label, key in
                   (("Real training set", "train_set"), ("Synthetic set", "synthetic_set"),
                    ("Real test set", "test_set")))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
             ".note{color:#666}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>jsddpm utility</title><style>{style}"
            f"</style></head><body><h1>Utility: does the synthetic data help a lesion segmenter?</h1>"
            f"<ul>{sets}</ul>{utility_section_body(util, figures)}</body></html>\n")
