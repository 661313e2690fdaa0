"""The report's HTML: the building blocks (numbers, tables, findings, embedded figures) and the page
they are assembled into. Pure: dicts and PNG bytes in, text out. Which sections the page holds, and in
what order, is `report.py`'s job; each family's section comes from its hook in `families.py`.

Metric names link to their entry in docs/metrics.md through a `link(name) -> (href, description)`
callable the caller passes in (`metric_doc.link`), so this module does not depend on the reference.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .report_figures import UTILITY_METRIC_LABELS
from .severity import SEVERITY_COMPONENTS, metric_z

Link = Callable[[str], "tuple[str, str] | None"]

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
    "pairing_dice_ratio": ("synthetic pairs agree with the reference segmenter better than real ones (masks "
                           "on conspicuous lesions)",
                           "the reference segmenter finds the synthetic masks' lesions less often than real ones: "
                           "masks off their lesions, or lesions too faint under them"),
    "lesion_contrast_ratio": ("lesions stand out from their surround more than real ones",
                              "lesions stand out from their surround less than real ones (faint lesions under "
                              "the masks)"),
    "kid": ("features of a fixed network are distributed differently from real (KID)", ""),
    "fd": ("features of a fixed network are distributed differently from real (Frechet distance)", ""),
    "asymmetry_ratio": ("the two hemispheres mirror each other less than in real brains (no midline, no "
                        "symmetric anatomy)", ""),
    "outline_roughness_ratio": ("brain outlines are more ragged than real ones",
                                "brain outlines are smoother than real ones"),
    "outline_solidity_ratio": ("brain outlines are more convex than real ones",
                               "brain outlines have more notches and bays than real ones"),
    "midscale_band_ratio": ("texture at 2-4 px is strong relative to the 4-8 px structures of real anatomy "
                            "(blotchy texture, structure broken up)",
                            "texture at 2-4 px is weak relative to 4-8 px structures (smoothed detail)"),
    "memorization_ratio": ("synthetic samples are no closer to training images than new real images are",
                           "synthetic samples sit closer to training images than new real images do "
                           "(possible memorisation)"),
}


@dataclass
class Section:
    """One part of the report: an <h2> title, its HTML body (figures embedded) and the figures it shows,
    which are also written as figures/<name>.png."""

    title: str
    body: str
    figures: dict[str, bytes] = field(default_factory=dict)

    def html(self) -> str:
        return f"<h2>{html.escape(self.title)}</h2>{self.body}"


@dataclass
class SectionInput:
    """What a family's section hook gets: the whole diagnostics record, its figure data, its example
    arrays (keys without the family prefix) and the metric-name linker."""

    name: str
    title: str
    diag: dict
    detail: dict | None = None
    examples: dict = field(default_factory=dict)
    link: Link | None = None

    @property
    def record(self) -> dict | None:
        """The family's own record in diagnostics.json (e.g. utility's arms and verdict), if any."""
        return self.diag.get(self.name)

    @property
    def metric_names(self) -> list[str]:
        return [n for n, r in self.diag.get("metrics", {}).items() if r.get("family") == self.name]


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


def classifier_sentence(metrics: dict) -> str | None:
    """The classifier's headline sentence: AUC, its CI and p-value, the repeats and the dithered AUC."""
    auc, auc_d = metrics.get("classifier_auc"), metrics.get("classifier_auc_dithered")
    if not auc:
        return None
    unit = f", resampling {auc['ci_unit']}" if auc.get("ci_unit") else ""
    text = (f"A small CNN separates real from synthetic images with out-of-fold AUC {_num(auc['value'])} "
            f"(95% CI {_num(auc.get('ci_low'))}–{_num(auc.get('ci_high'))}{unit}, "
            f"permutation p = {_num(auc.get('p_value'))}; "
            f"0.5 = indistinguishable, 1 = always told apart). {classifier_verdict(auc)}")
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


def classifier_verdict(auc: dict) -> str:
    """How strong the classifier's finding is, read off its CI (clustered by subject)."""
    lo, hi = auc.get("ci_low"), auc.get("ci_high")
    if lo is None or hi is None:
        return ""
    if lo >= 0.9:
        return "A severe finding: nearly every synthetic image is told from real ones."
    if lo > 0.5:
        return "A finding: the sets differ in a way the network can learn."
    if hi < 0.5:
        return ("Below chance: with few real subjects the network learned the training subjects rather than a "
                "difference; not a finding.")
    return "Not a finding: the interval holds 0.5."


class Html(str):
    """A table cell that is already HTML (not escaped again)."""


def metric_cell(name: str, link: Link | None) -> Html:
    """The metric's name linked to its entry in docs/metrics.md, its definition as the hover text."""
    found = link(name) if link else None
    if found is None:
        return Html(html.escape(name))
    href, title = found
    return Html(f'<a href="{html.escape(href)}" title="{html.escape(title)}">{html.escape(name)}</a>')


def metric_table(metrics: dict[str, dict], names: list[str], link=None) -> str:
    head = ("metric", "value", "95% CI", "real", "synthetic", "real vs real (mean ± sd)")
    rows = []
    for n in names:
        r = metrics[n]
        rows.append((metric_cell(n, link), _num(r.get("value")), f"{_num(r.get('ci_low'))} – {_num(r.get('ci_high'))}",
                     _num(r.get("real")), _num(r.get("synthetic")),
                     f"{_num(r.get('null_mean'))} ± {_num(r.get('null_sd'))}"))
    return table(head, rows)


def table(head, rows) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Html) else html.escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def img(png: bytes, alt: str) -> str:
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


# -------------------------------------------------------------------------------- sections
def metric_section_body(view: SectionInput, figures: dict[str, bytes], sentences=None) -> str:
    """The findings (default: one sentence per severity component or explained metric of the family),
    the family's figure and a table of all its numbers."""
    metrics = view.diag.get("metrics", {})
    z0 = (view.diag.get("severity") or {}).get("z0", 2.0)
    names = view.metric_names
    if sentences is None:
        sentences = [finding_sentence(n, metrics[n], z0) for n in names if n in SEVERITY_COMPONENTS or n in MEANING]
    sentences = [x for x in sentences if x]
    parts = []
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in sentences) + "</ul>")
    if view.name in figures:
        parts.append(img(figures[view.name], view.name))
    if names:
        parts.append("<details><summary>all numbers</summary>" + metric_table(metrics, names, view.link)
                     + "</details>")
    return "".join(parts)


LOW_CEILING = 0.2  # pairing: a reference segmenter below this Dice on real lesions is too weak to judge pairs


def pairing_section_body(view: SectionInput, figures: dict[str, bytes]) -> str:
    """Findings (pairing's components, and the morphology family's lesion count when it ran), fidelity vs
    lesion area, the worst synthetic pairs, all numbers, and which segmenter scored them."""
    metrics = view.diag.get("metrics", {})
    z0 = (view.diag.get("severity") or {}).get("z0", 2.0)
    names = [n for n in ("pairing_dice_ratio", "lesion_contrast_ratio", "lesion_count_ratio") if n in metrics]
    sentences = [finding_sentence(n, metrics[n], z0) for n in names]
    ratio = metrics.get("pairing_dice_ratio") or {}
    if ratio.get("value") is not None:
        sentences.insert(0, f"The reference segmenter's Dice against the synthetic masks is "
                            f"{_num(metrics['pairing_dice']['value'])}, against held-out real masks "
                            f"{_num(metrics['pairing_dice_real']['value'])}: ratio {_num(ratio['value'])} (95% CI "
                            f"{_num(ratio.get('ci_low'))}–{_num(ratio.get('ci_high'))}; 1 = synthetic pairs agree as "
                            "well as real pairs do).")
    ceiling = (metrics.get("pairing_dice_real") or {}).get("value")
    if ceiling is not None and ceiling < LOW_CEILING:
        sentences.insert(0, f"Caution: the reference segmenter reaches only Dice {_num(ceiling)} on held-out real "
                            "lesions, so its agreement with the synthetic masks says little; train it longer "
                            "(diagnostics.utility_steps) or check the real lesions.")
    parts = [metric_section_body(view, figures, sentences)]
    if "pairing_worst" in figures:
        parts.append("<p>The synthetic lesion pairs of lowest fidelity: mask (red) and the reference segmenter's "
                     "prediction (cyan); # = index in the synthetic set (pairing.csv).</p>"
                     + img(figures["pairing_worst"], "worst synthetic pairs"))
    seg = (view.record or {}).get("segmenter") or {}
    train = seg.get("training") or {}
    n = (view.record or {}).get("n_pairs") or {}
    parts.append(
        f"<p class='note'>Pairs = slices whose mask holds a lesion ({n.get('synthetic')} synthetic, {n.get('real')} "
        f"held-out real). Reference segmenter: {html.escape(str(seg.get('source')))}, "
        f"{html.escape(str(seg.get('path') or ''))}, trained on the real '{html.escape(str(seg.get('split')))}' split "
        f"({train.get('steps')} steps, best validation Dice {_num(train.get('val_dice'))}). Lesion contrast: inside "
        "minus a ring 2–4 px outside, within the brain, in units of the slice's brain SD. Per-pair scores of every "
        "synthetic slice: pairing.csv.</p>")
    return "".join(parts)


def status_note(status: dict) -> str:
    """Why a family has no results (skipped / failed), or how long it took."""
    if status.get("status") != "ok":
        what = "Skipped" if status.get("status") == "skipped" else "Failed"
        return f"<p class='note'>{what}: {html.escape(str(status.get('reason')))}.</p>"
    return f"<p class='note'>{status.get('seconds', 0):.1f} s</p>"


def utility_section_body(util: dict, figures: dict[str, bytes]) -> str:
    """The verdict, the arms table with CIs, the differences, the figures and how they were made."""
    parts = [f"<p><b>{html.escape(util.get('verdict', ''))}</b></p>"]
    head = ("arm", "real + synthetic slices", "steps (per seed) / cap", *UTILITY_METRIC_LABELS.values())

    def cell(r):
        return f"{_num(r['value'])} ({_num(r['ci_low'])} – {_num(r['ci_high'])})"

    def steps(r):
        used = "/".join(str(s) for s in r.get("steps", []))
        cap = f" / {r['max_steps']}" if "max_steps" in r else ""
        return used + cap + ("" if r.get("converged", True) else " (not converged)")

    rows = [(a, f"{r['n_real']} + {r['n_synthetic']}", steps(r), *(cell(r[m]) for m in UTILITY_METRIC_LABELS))
            for a, r in util.get("arms", {}).items()]
    rows += [(d, "paired difference", "", *(cell(r[m]) for m in UTILITY_METRIC_LABELS))
             for d, r in util.get("differences", {}).items()]
    parts.append(table(head, rows))
    if "utility_bars" in figures:
        parts.append(img(figures["utility_bars"], "utility metrics per arm"))
    if "utility_examples" in figures:
        parts.append("<p>Held-out real lesion slices: true lesion (red) and predictions (cyan) of the first "
                     "real-trained and synthetic-trained segmenters.</p>"
                     + img(figures["utility_examples"], "example predictions"))
    st, te = util.get("settings", {}), util.get("test", {})
    parts.append(
        f"<p class='note'>Each arm trains {len(st.get('seeds', []))} small UNets (seeds {st.get('seeds')}) on "
        f"batches of {st.get('batch_size')} slices until their Dice on validation subjects carved from the real "
        f"training set stops improving (at most {st.get('max_steps')} steps for the real arm, more for an arm "
        "with more lesion slices, so that each lesion slice can be shown as often; best weights kept); scored on "
        f"{te.get('n_slices')} held-out real slices ({te.get('n_lesion_slices')} with lesions, "
        f"{te.get('n_lesions')} lesions). Value = mean over seeds; 95% CI: t-interval with test "
        f"{html.escape(str(te.get('resampling_unit', '')))} and seeds as crossed random factors; differences "
        "are paired. Dice pools "
        "the pixels of the lesion slices; sensitivity counts true lesions touched by a prediction; false "
        "positives are predicted components touching no lesion, per slice.</p>")
    return "".join(parts)


# ------------------------------------------------------------------------------------ pages
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}")


def _page(title: str, style: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
            f"</head><body>{body}</body></html>\n")


def _headline(diag: dict, figures: dict[str, bytes]) -> str:
    metrics = diag.get("metrics", {})
    sev = diag.get("severity") or {}
    z0 = sev.get("z0", 2.0)
    head = diag.get("headline", {})
    s = sev.get("severity")
    # on the scale of benchmarks/severity_blur_bench.py: a Gaussian blur of 0.45 / 0.8 / 1.2 / 2 px of real
    # slices scores about 0.07 / 0.21 / 0.35 / 0.51
    verdict = ("no difference beyond real-vs-real variation" if s is not None and s < 0.05 else
               "small differences" if s is not None and s < 0.15 else
               "clear differences" if s is not None and s < 0.4 else "large differences")
    h = ['<div class="headline"><h2>Headline</h2>']
    groups = sev.get("groups") or {}
    over = (f"mean over {len(groups)} groups of {len(sev.get('components', {}))} metrics" if groups else
            f"mean over {len(sev.get('components', {}))} metrics")
    h.append(f"<p><b>Severity {_num(s)}</b> (0 = as close as two real sets of these sizes, 1 = far outside; "
             f"{over}): {verdict if s is not None else 'not computed'}.</p>")
    if groups:
        h.append("<p>By group: " + ", ".join(f"{html.escape(g.replace('_', ' '))} {_num(v['score'])}"
                                              for g, v in groups.items()) + ".</p>")
    cls = classifier_sentence(metrics)
    if cls:
        h.append(f"<p>{html.escape(cls)}</p>")
    devs = head.get("largest_deviations") or []
    if devs:
        items = "".join(
            f"<li>{html.escape(finding_sentence(d['metric'], metrics[d['metric']], z0) or d['metric'])}</li>"
            for d in devs if d["metric"] in metrics)
        h.append(f"<p>Largest deviations from the real-vs-real null:</p><ol>{items}</ol>")
    if "deviations" in figures:
        h.append(img(figures["deviations"], "each severity component's score, by group"))
    h.append("</div>")
    return "".join(h)


def render_page(diag: dict, figures: dict[str, bytes], family_sections: Sequence[Section],
                extra_sections: Sequence[Section] = (), link: Link | None = None) -> str:
    """The diagnostics report: the sets, the headline, the sample grid, the family sections, the z-bin
    table, any extra sections (e.g. the demo's inpainted lesions) and how to read it."""
    z0 = (diag.get("severity") or {}).get("z0", 2.0)
    parts = [f"<h1>Synthetic vs real diagnostics</h1><ul>{_set_line('Real set', diag.get('real_set'))}"
             f"{_set_line('Synthetic set', diag.get('synthetic_set'))}"
             f"{_set_line('Training set (memorisation)', diag.get('train_set'))}</ul>", _headline(diag, figures)]
    if "samples" in figures:
        parts.append("<h2>Samples</h2><p>Top: real; bottom: synthetic (red outline: lesion mask).</p>"
                     + img(figures["samples"], "sample grid"))
    parts += [s.html() for s in family_sections]
    zb = diag.get("zbins") or {}
    if zb:
        bins = sorted({b for v in zb.values() for b in v}, key=int)
        rows = [(metric_cell(m, link), *(_num(zb[m].get(b)) for b in bins)) for m in zb]
        parts.append("<h2>Per z-bin</h2><p>The same metrics within each z-bin (slice position), without CIs.</p>"
                     + table(("metric", *(f"z-bin {b}" for b in bins)), rows))
    parts += [s.html() for s in extra_sections]
    unit = (diag.get("resampling") or {}).get("real", "")
    parts.append("<h2>How to read this</h2><p>Every metric is compared with its real-vs-real null: the same "
                 "metric between two sets drawn from the real data at the sizes compared here, the real side in "
                 "whole subjects as the real set was sampled, the synthetic side as independent slices. A "
                 "difference inside that range is not a finding. Severity counts a component only beyond "
                 f"{z0:g} null SDs from the real-vs-real level, scores the size of its deviation beyond that band "
                 "in the metric's own units on a fixed scale (0 to 1; a component the synthetic set cannot provide, "
                 "such as lesion shapes without lesions, scores 1), averages the scores within groups (fine "
                 "detail, intensity, background, spatial, mask morphology, pairing), then the groups: a Gaussian "
                 "blur of real slices by 0.45 / 0.8 / 1.2 / 2 px scores about 0.07 / 0.21 / 0.35 / 0.51. "
                 "Bootstrap CIs (95%) are centred on the value: the range of the metric's "
                 "expected value at these sample sizes. The real set is resampled by "
                 f"{html.escape(unit or 'slices')}.</p>")
    return _page("jsddpm diagnostics", STYLE + ".headline{background:#f4f6fa;padding:0.5em 1em;border-radius:6px}"
                 ".note{color:#666}img{max-width:100%}", "".join(parts))


def utility_page(util: dict, section: Section) -> str:
    """The report of `jsddpm diagnose utility`: one self-contained page around the utility section."""
    sets = "".join(_set_line(label, util.get(key)) for label, key in
                   (("Real training set", "train_set"), ("Synthetic set", "synthetic_set"),
                    ("Real test set", "test_set")))
    return _page("jsddpm utility", STYLE + ".note{color:#666}img{max-width:100%}",
                 f"<h1>Utility: does the synthetic data help a lesion segmenter?</h1><ul>{sets}</ul>{section.body}")
