"""The metric reference: every key under `metrics` in diagnostics.json (and every row of summary.csv),
what it measures, its ideal value, its side in severity and the figure that shows it.

`docs/metrics.md` is generated from this file and from the diagnostics code itself (the family order
and titles of the registry in families.py, severity's components and sidedness, the GLCM / lesion /
tissue feature lists), and tests keep both in step: the generated text must equal the file, and the names a run-all
produces must equal the documented ones. Regenerate with

    python -m jsddpm.diagnostics.metric_doc docs/metrics.md

Names that depend on the data or the config are documented once as a pattern: `{k}`, `{level}` and
`{c}` stand for integers, `{glcm}`, `{lesion}`, `{tissue}` and `{subband}` for the words in PLACEHOLDERS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .families import NAMES, title
from .intensity import TISSUES
from .morphology import LESION_FEATURES
from .severity import SEVERITY_COMPONENTS
from .texture import GLCM_FEATURES
from .wavelet import SUBBANDS

DOC_PATH = "docs/metrics.md"
INT = r"\d+"
PLACEHOLDERS = {  # placeholder -> regex of its values
    "k": INT, "level": INT, "c": INT,
    "subband": "|".join(SUBBANDS),
    "glcm": "|".join(GLCM_FEATURES),
    "lesion": "|".join(LESION_FEATURES),
    "tissue": "|".join(TISSUES),
}


@dataclass(frozen=True)
class MetricDoc:
    name: str  # the key, or a pattern with {placeholders}
    measures: str
    ideal: str
    figure: str = ""  # panel of the family's figure (figures/<family>.png); "" = no figure

    def regex(self) -> re.Pattern:
        parts = re.split(r"\{(\w+)\}", self.name)
        body = "".join(re.escape(p) if i % 2 == 0 else f"(?:{PLACEHOLDERS[p]})" for i, p in enumerate(parts))
        return re.compile(f"^{body}$")

    @property
    def anchor(self) -> str:
        return re.sub(r"[{}]", "", self.name)


SAME_AS_REAL = "equal to the real set's value"
METRICS: dict[str, list[MetricDoc]] = {
    "spectral": [
        MetricDoc("spectral_slope_real", "slope of the real set's mean radially averaged power spectrum in a log-log "
                  "fit (brain-ROI mean removed, Hann window); positive = power falls with frequency, brain MRI "
                  "about 3", "a property of the real data (reference)", "spectrum"),
        MetricDoc("spectral_slope_synth", "the same slope for the synthetic set", SAME_AS_REAL, "spectrum"),
        MetricDoc("spectral_slope_diff", "|synthetic slope - real slope|", "0", "spectrum"),
        MetricDoc("spectral_js", "Jensen-Shannon divergence (bits) between the two mean radial spectra, each "
                  "normalised to sum 1", "0", "spectrum"),
        MetricDoc("hf_ratio_diff", "relative change of the high / low frequency power ratio (split at 0.25 "
                  "cycles per pixel): (HF/LF synthetic - HF/LF real) / HF/LF real; negative = smoother than real",
                  "0", "spectrum"),
        MetricDoc("band_power_ratio_{k}", "synthetic / real mean power in radial frequency band k of "
                  "`diagnostics.n_spectral_bands` log-spaced bands (1 = lowest frequencies)", "1", "spectrum"),
    ],
    "wavelet": [
        MetricDoc("wavelet_{subband}_l{level}_ratio", "synthetic / real mean energy (mean squared detail "
                  "coefficient, wavelet `diagnostics.wavelet`) at a level (1 = finest; up to the maximum valid "
                  "for the image size) and subband (lh: horizontal edges, hl: vertical edges, hh: diagonal "
                  "detail); hh level 1 below 1 = the finest texture is lost", "1", "energy"),
    ],
    "texture": [
        MetricDoc("glcm_{glcm}_real", "real set's mean of a GLCM feature inside the head/brain ROI (fixed "
                  "quantisation of [-1, 1] into `diagnostics.glcm_levels` levels, distances "
                  "`diagnostics.glcm_distances`, 4 angles, averaged over offsets)",
                  "a property of the real data (reference)", "glcm_{glcm}"),
        MetricDoc("glcm_{glcm}_synth", "synthetic set's mean of the same GLCM feature", SAME_AS_REAL, "glcm_{glcm}"),
        MetricDoc("glcm_{glcm}_ks", "Kolmogorov-Smirnov statistic between the per-image values of the feature",
                  "0 (small positive at finite sizes: read against null_mean)", "glcm_{glcm}"),
        MetricDoc("glcm_{glcm}_d", "Cohen's d (synthetic - real) of the per-image values of the feature", "0",
                  "glcm_{glcm}"),
        MetricDoc("texture_ks_mean", "mean of the six GLCM KS statistics",
                  "0 (small positive at finite sizes: read against null_mean)", "glcm_*"),
        MetricDoc("gradient_mean_real", "real set's Sobel gradient magnitude averaged over the ROI",
                  "a property of the real data (reference)"),
        MetricDoc("gradient_mean_synth", "the same for the synthetic set", SAME_AS_REAL),
        MetricDoc("gradient_ratio", "synthetic / real mean gradient magnitude; below 1 = blur", "1"),
    ],
    "boundary": [
        MetricDoc("boundary_sharpness_ratio", "synthetic / real lesion-edge sharpness: the largest step of the pooled "
                  "mean intensity profile across lesion edges (intensity per pixel, lesion-centred patches)", "1",
                  "profile"),
        MetricDoc("boundary_width_ratio", "synthetic / real lesion-edge width: profile contrast / sharpness "
                  "(pixels)", "1", "profile"),
    ],
    "background": [
        MetricDoc("background_std_synth", "standard deviation of the synthetic pixels outside the head/brain ROI "
                  "(real scans: background at -1)", SAME_AS_REAL + " (`background_std_real`)", "histogram"),
        MetricDoc("background_std_real", "the same for the real set", "a property of the real data (reference)",
                  "histogram"),
        MetricDoc("background_deviation", "mean |x + 1| of the synthetic background pixels (the real set's in "
                  "`real`)", SAME_AS_REAL + " (0 for a clean background)", "histogram"),
    ],
    "spatial": [
        MetricDoc("spatial_corr_ratio", "synthetic / real autocorrelation length inside the ROI (exponential fit "
                  "of the radial autocorrelation up to `diagnostics.spatial_max_lag` pixels); above 1 = blotchier, "
                  "below 1 = grainier", "1", "autocorrelation"),
    ],
    "pixel": [
        MetricDoc("pixel_frac_significant", "fraction of the pixel positions inside the brain (block means, longer "
                  "side <= `diagnostics.pixel_max_side`; positions in the brain ROI of at least one slice of either "
                  "set) whose mean intensity differs between the sets: per-pixel Welch t-test, Benjamini-Hochberg "
                  "FDR at `diagnostics.fdr_alpha`", "0", "significance_map"),
    ],
    "intensity": [
        MetricDoc("wasserstein_all", "Wasserstein-1 distance between the pooled pixel intensities of the two sets "
                  "(histograms of `diagnostics.intensity_bins` bins on [-1, 1])",
                  "0 (small positive at finite sizes)", "histogram_all"),
        MetricDoc("ks_all", "Kolmogorov-Smirnov statistic between the same pooled intensities",
                  "0 (small positive at finite sizes)", "histogram_all"),
        MetricDoc("wasserstein_{tissue}", "Wasserstein-1 distance of the pooled intensities within one tissue: lesion "
                  "(mask; only when both sets have masks), brain (ROI minus lesion), background (outside the ROI)",
                  "0 (small positive at finite sizes)", "histogram_{tissue}"),
    ],
    "morphology": [
        MetricDoc("lesion_count_diff", "mean lesions per slice, synthetic - real", "0"),
        MetricDoc("lesion_rate_diff", "fraction of slices carrying a lesion, |synthetic - real| per class, "
                  "averaged over the classes present in both sets, each class counting once (`real` / `synthetic`: "
                  "the overall fractions)",
                  "0"),
        MetricDoc("lesion_rate_diff_class{c}", "the signed per-class difference, synthetic - real, for class c "
                  "(only with two or more classes)", "0"),
        MetricDoc("lesion_count_ratio", "synthetic / real mean number of lesions per lesion-carrying slice; above 1 "
                  "= fragmented lesions", "1"),
        MetricDoc("mask_mmd", "unbiased polynomial-kernel MMD^2 (degree 3) between the standardised per-lesion shape "
                  "features (area, perimeter, circularity, solidity, extent, eccentricity, axis lengths)",
                  "0 (can be slightly negative)", "quantiles_*"),
        MetricDoc("lesion_{lesion}_wasserstein", "Wasserstein-1 distance between the real and synthetic per-lesion "
                  "values of one shape feature (pixels for area, perimeter and axis lengths; `real` / `synthetic`: "
                  "the means)", "0", "quantiles_{lesion}"),
    ],
    "classifier": [
        MetricDoc("classifier_auc", "out-of-fold AUC of a small CNN trained to tell synthetic from real "
                  "(subject-disjoint folds); CI: cluster bootstrap, real subjects resampled whole (`ci_unit`); "
                  "`p_value`: label permutations, `repeat_aucs`: one per network",
                  "0.5 (1 = always told apart)", "scores"),
        MetricDoc("classifier_auc_dithered", "the same after both sets are put onto the real data's intensity grid "
                  "with uniform dither (hides the quantisation fingerprint of integer scanners); `note` says when "
                  "the real set has no grid", "0.5", "scores_dithered"),
    ],
    "memorization": [
        MetricDoc("memorization_ratio", "median nearest-neighbour distance to the generator's training images, "
                  "synthetic / held-out real (block-mean images); below 1 = samples sit closer to training images "
                  "than new real images do (copies give 0)", "1", "nn_distance_quantiles"),
    ],
    "feature_distance": [
        MetricDoc("kid", "kernel inception distance: unbiased cubic polynomial-kernel MMD^2 between feature vectors "
                  "(`diagnostics.feature_extractor`: a fixed random-weight network, or local weights)",
                  "0 (can be slightly negative)"),
        MetricDoc("fd", "Frechet distance between Gaussians fitted to the same features", "0 (small positive at "
                  "finite sizes)"),
    ],
    "pairing": [
        MetricDoc("pairing_dice", "mean per-pair Dice of the reference lesion segmenter's prediction (trained on the "
                  "real cache's `diagnostics.utility_train_split`, stored as segmenter-<key>.pt) against the mask, "
                  "over the synthetic pairs whose mask holds a lesion (each pair's value: `fidelity` in pairing.csv)",
                  "`pairing_dice_real`", "pairing"),
        MetricDoc("pairing_dice_real", "the same on the held-out real lesion slices: the ceiling",
                  "a property of the real data (reference)", "pairing"),
        MetricDoc("pairing_dice_ratio", "`pairing_dice` / `pairing_dice_real`: do synthetic masks sit on lesions the "
                  "segmenter sees as well as real masks do? Below 1 = masks off their lesions, or lesions too faint",
                  "1", "pairing"),
        MetricDoc("lesion_contrast_real", "per real lesion (8-connected component): mean intensity inside minus the "
                  "mean over a ring 2-4 px outside it (within the brain ROI, other lesions' pixels excluded), in "
                  "units of its slice's brain intensity SD; mean over the lesions",
                  "a property of the real data (reference)"),
        MetricDoc("lesion_contrast_synth", "the same for the synthetic lesions", SAME_AS_REAL),
        MetricDoc("lesion_contrast_ratio", "synthetic / real lesion contrast; below 1 = fainter lesions than real",
                  "1"),
    ],
    "structure": [
        MetricDoc("symmetry_real", "real set's mean left-right symmetry: per image, the correlation of the "
                  "band-passed image (Gaussian sigma 1 minus sigma 4 px inside the brain, on a grid of longer side "
                  "<= `diagnostics.structure_max_side`) with its reflection about the best of the candidate "
                  "midlines through the brain's centroid (within 6 degrees of its principal axis or of the "
                  "vertical)", "a property of the real data (reference)", "symmetry"),
        MetricDoc("symmetry_synth", "the same for the synthetic set", SAME_AS_REAL, "symmetry"),
        MetricDoc("asymmetry_ratio", "(1 - symmetry synthetic) / (1 - symmetry real); above 1 = less symmetric "
                  "than real anatomy (no midline, unmatched hemispheres)", "1", "symmetry"),
        MetricDoc("outline_roughness_ratio", "excess outline length, synthetic / real: per image the brain "
                  "outline's perimeter over that of the outline smoothed at 2 px, minus 1; above 1 = ragged "
                  "outlines", "1", "outline_roughness"),
        MetricDoc("outline_solidity_ratio", "mean solidity (brain area / convex hull area), synthetic / real; "
                  "below 1 = notches and bays in the outline", "1"),
        MetricDoc("midscale_band_ratio", "(energy of the 2-4 px band / energy of the 4-8 px band) synthetic / "
                  "real: Gaussian band-passes (sigma 1-2 and 2-4 px) inside the brain, 2 px from its outline; "
                  "above 1 = blotchy texture without larger structure (also tiles shuffled within the brain), "
                  "below 1 = blur", "1", "band_2-4_over_4-8_px"),
    ],
}


def family_order() -> list[str]:
    """The documented families in the registry's (the report's) order."""
    return [f for f in NAMES if f in METRICS] + [f for f in METRICS if f not in NAMES]


def all_docs() -> list[tuple[str, MetricDoc]]:
    return [(family, doc) for family in family_order() for doc in METRICS[family]]


def find(name: str) -> MetricDoc | None:
    """The entry documenting a metric name (exact names first, then patterns)."""
    docs = [d for _, d in all_docs()]
    return next((d for d in docs if d.name == name), None) or next((d for d in docs if d.regex().match(name)), None)


def undocumented(names) -> list[str]:
    return sorted(n for n in names if find(n) is None)


def doc_url() -> str:
    """Where the report's tables link to: this checkout's docs/metrics.md when there is one (a clone or an
    editable install), else the path inside the project (an installed wheel carries no docs/)."""
    local = Path(__file__).resolve().parents[3] / DOC_PATH
    return local.as_uri() if local.is_file() else DOC_PATH


def link(name: str, base: str | None = None) -> tuple[str, str] | None:
    """(href, one-line description) of a metric's entry in the reference; None when undocumented."""
    doc = find(name)
    if doc is None:
        return None
    return f"{base or doc_url()}#{doc.anchor}", doc.measures


MAGNITUDES = {"distance": "value - null_mean", "difference": "|value - null_mean|",
              "ratio": "|ln(value / null_mean)|", "ratio_above": "ln(value / null_mean), above the null only",
              "relative": "|ln((1 + value) / (1 + null_mean))|"}


def _component_cell(comp) -> str:
    side = "one-sided" if comp.sided == "greater" else "two-sided"
    return f"{comp.group}; {side}; e = {MAGNITUDES[comp.kind]}, E = {comp.scale:.3g}"


def sidedness(doc: MetricDoc) -> str:
    """Its place in severity, from severity.SEVERITY_COMPONENTS: group, side, magnitude and scale E (for
    a pattern: the components it covers)."""
    comps = {n: c for n, c in SEVERITY_COMPONENTS.items() if doc.regex().match(n)}
    if not comps:
        return "not a component"
    if list(comps) == [doc.name]:
        return _component_cell(comps[doc.name])
    return "; ".join(f"`{n}`: {_component_cell(c)}" for n, c in comps.items()) + "; others: not components"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    lines = [
        "# Metric reference",
        "",
        "<!-- generated by `python -m jsddpm.diagnostics.metric_doc docs/metrics.md` from "
        "src/jsddpm/diagnostics/metric_doc.py and the diagnostics code; do not edit by hand -->",
        "",
        "Every key under `metrics` in `diagnostics.json` (one row each in `summary.csv`), by family in the report's "
        "order. Each entry holds `value`, `real` and `synthetic` (the two sides' underlying quantities, where they "
        "exist), `ci_low` / `ci_high` (95% bootstrap CI), `null_mean` / `null_sd` (the same metric between two "
        "sets drawn from the real data at the compared sizes: the real-vs-real null) and `family`.",
        "",
        "- **ideal**: the value for a synthetic set distributed like the real one. Distances and test statistics "
        "are biased upwards at finite sizes: judge a value against `null_mean` ± `null_sd`, not against 0. A "
        "difference inside the null band is not a finding.",
        "- **severity**: whether the metric is a component of `severity`, and if so its group, its side, its "
        "magnitude e and its scale E (module docstring of `jsddpm/diagnostics/severity.py`). A component counts only "
        "beyond `diagnostics.severity_z0` null SDs from `null_mean` (one-sided: only above it; the SD is floored only "
        "where the null does not vary at all); it then scores `1 - exp(-(e - band) / E)`, band = z0 null SDs in e's "
        "units, E times `diagnostics.severity_scale`. `severity` = the mean over groups of the mean score of each "
        "group's components. A component the synthetic set cannot provide while the real set can (no lesions) "
        "scores 1. The classifier AUC is reported beside severity, not in it.",
        "- **figure**: the panel of the family's figure in the report (also `figures/<family>.png`); the "
        "headline's `figures/deviations.png` shows every severity component's score by group.",
        "- In a name, `{k}`, `{level}` and `{c}` stand for integers (band, wavelet level, class); "
        f"`{{glcm}}` for {', '.join(GLCM_FEATURES)}; `{{lesion}}` for {', '.join(LESION_FEATURES)}; "
        f"`{{tissue}}` for {', '.join(TISSUES)}; `{{subband}}` for {', '.join(SUBBANDS)}.",
        "",
    ]
    for family in family_order():
        lines += [f"## {title(family)}", "",
                  f"Family `{family}`; figure `figures/{family}.png`.", "",
                  "| metric | what it measures | ideal | severity | figure |", "| --- | --- | --- | --- | --- |"]
        for doc in METRICS[family]:
            figure = f"`{doc.figure}`" if doc.figure else "–"
            lines.append(f'| <a id="{doc.anchor}"></a>`{doc.name}` | {_cell(doc.measures)} | {_cell(doc.ideal)} | '
                         f"{_cell(sidedness(doc))} | {figure} |")
        lines.append("")
    return "\n".join(lines)


def write(path: str | Path = DOC_PATH) -> bool:
    """Write the reference; True when the file changed."""
    path = Path(path)
    text = render()
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else DOC_PATH
    print(f"{target}: " + ("written" if write(target) else "already up to date"))
