"""Severity: how far a synthetic set sits from real data, in units of real-vs-real variation.

Absolute severity (comparable across runs and projects). For each component metric

    z = deviation(value, null_mean) / max(null_sd, floor)

where `deviation` is `value - null_mean` clipped at 0 for one-sided metrics (distances, divergences,
KS statistics, fractions: lower than the real-vs-real level is not worse) and `|value - null_mean|`
for two-sided ones (ratios, signed differences). The score of a component is

    s = 1 - exp(-max(z - z0, 0) / scale)        (defaults z0 = 2, scale = 4)

so anything inside z0 null SDs scores exactly 0, the score rises smoothly after that and saturates
towards 1 (z = 6 -> 0.63, z = 10 -> 0.86, z = 20 -> 0.99). `severity` is the mean over the
components present.

Why real vs real scores near 0: the null is the distribution of each metric between two disjoint
halves of the real set, so a real-vs-real comparison is a draw from that same distribution and its z
is rarely above z0. The formula does not force the zero; the test does. (The null halves are half the
size of the sets being compared, so the null is slightly wider than the sampling noise of the full
comparison: the score is conservative, never inflated.)

Relative severity (the reference study's style, for one aggregate only): each component's deviation
min-max normalised across the experiments being compared, then averaged.

The classifier AUC is not a component: it is reported next to severity in the headline, and
severity stays computable when the (slow) classifier is skipped.
"""

from __future__ import annotations

import math

import numpy as np

# component -> sidedness; "greater": only values above the null level count as worse
SEVERITY_COMPONENTS: dict[str, str] = {
    "spectral_slope_diff": "greater",
    "spectral_js": "greater",
    "hf_ratio_diff": "two-sided",
    "wavelet_hh_l1_ratio": "two-sided",
    "texture_ks_mean": "greater",
    "gradient_ratio": "two-sided",
    "boundary_sharpness_ratio": "two-sided",
    "background_std_synth": "two-sided",
    "spatial_corr_ratio": "two-sided",
    "pixel_frac_significant": "greater",
    "wasserstein_all": "greater",
    "mask_mmd": "greater",
}


def _sd_floor(null_mean: float) -> float:
    # a null SD of ~0 (a metric that does not vary between real halves) must not turn float noise
    # into an infinite z: floor it at 1e-3 of the metric's scale
    return max(1e-3 * abs(null_mean), 1e-9)


def deviation(value: float, null_mean: float, sided: str) -> float:
    """Distance of a metric from its real-vs-real level, in the metric's units."""
    d = value - null_mean
    return max(d, 0.0) if sided == "greater" else abs(d)


def null_z(value: float, null_mean: float, null_sd: float, sided: str) -> float:
    """Deviation from the null in null-SD units (the headline's 'largest deviations')."""
    sd = max(float(null_sd), _sd_floor(null_mean))
    return deviation(value, null_mean, sided) / sd


def component_score(z: float, z0: float = 2.0, scale: float = 4.0) -> float:
    return 1.0 - math.exp(-max(z - z0, 0.0) / scale)


def _usable(rec: dict | None) -> bool:
    return bool(rec) and all(
        rec.get(k) is not None and np.isfinite(rec[k]) for k in ("value", "null_mean", "null_sd")
    )


def severity(metrics: dict[str, dict], z0: float = 2.0, scale: float = 4.0,
             components: dict[str, str] | None = None) -> dict:
    """{"severity", "components": {name: {"z", "score"}}, "missing": [...]} from runner metrics."""
    components = SEVERITY_COMPONENTS if components is None else components
    parts, missing = {}, []
    for name, sided in components.items():
        rec = metrics.get(name)
        if not _usable(rec):
            missing.append(name)
            continue
        z = null_z(rec["value"], rec["null_mean"], rec["null_sd"], sided)
        parts[name] = {"z": z, "score": component_score(z, z0, scale)}
    value = float(np.mean([p["score"] for p in parts.values()])) if parts else None
    return {"severity": value, "components": parts, "missing": missing, "z0": z0, "scale": scale}


def relative_severity(metric_sets: list[dict[str, dict]],
                      components: dict[str, str] | None = None) -> list[float | None]:
    """Per experiment: mean over components of the min-max normalised deviation from the null level.

    A component missing from any experiment is left out for all, so every experiment is scored on
    the same components; a component equal across all experiments (no spread to normalise) is left
    out too. With no varying component every experiment scores 0.
    """
    components = SEVERITY_COMPONENTS if components is None else components
    if not metric_sets:
        return []
    shared = [c for c in components if all(_usable(m.get(c)) for m in metric_sets)]
    if not shared:
        return [None] * len(metric_sets)
    dev = np.array([[deviation(m[c]["value"], m[c]["null_mean"], components[c]) for c in shared]
                    for m in metric_sets])
    lo, hi = dev.min(axis=0), dev.max(axis=0)
    varying = hi - lo > 1e-12 * np.maximum(np.abs(hi), 1.0)
    if not varying.any():
        return [0.0] * len(metric_sets)
    return [float(v) for v in ((dev[:, varying] - lo[varying]) / (hi - lo)[varying]).mean(axis=1)]
