"""Severity: how far a synthetic set sits from real data, in units of real-vs-real variation.

Absolute severity (comparable across runs and projects). For each component metric

    z = deviation(value, null_mean) / max(null_sd, floor)

where `null_mean` / `null_sd` describe the metric between two sets drawn from the real data at the
sizes actually compared (n_real real slices, clustered by subject as the real set is, against n_synth
independent slices; runner.py), and `deviation` is `value - null_mean` clipped at 0 for one-sided
metrics (distances, divergences, KS statistics, fractions: lower than the real-vs-real level is not
worse) and `|value - null_mean|` for two-sided ones (ratios, signed differences). `floor` is an
absolute SD floor at the metric's natural resolution (SD_FLOORS), so a null that does not vary at all
(a background exactly at -1, no pixel ever significant) does not turn float noise into a huge z. The
score of a component is

    s = 1 - exp(-max(z - z0, 0) / scale)        (defaults z0 = 2, scale = 4)

so anything inside z0 null SDs scores exactly 0, the score rises smoothly after that and saturates
towards 1 (z = 6 -> 0.63, z = 10 -> 0.86, z = 20 -> 0.99). A component the synthetic set cannot
provide although the real set can (no lesions, hence no lesion shapes or boundaries) scores 1: mask
collapse is a maximal deviation, never a missing value. `severity` is the mean over the components;
`component_set` records which ones, and severities over different sets (or older definitions) are
not comparable: `aggregate` and `criteria` refuse to rank them.

Why real vs real scores near 0: a real-vs-real comparison at these sizes is a draw from the null
itself, so its z is rarely above z0. The formula does not force the zero; the test does.

Mask components: `mask_mmd` (lesion shapes), `boundary_sharpness_ratio` (lesion edges),
`lesion_rate_diff` (per class, |synthetic - real| fraction of slices carrying a lesion, averaged over
the classes) and `lesion_count_ratio` (lesions per lesion-carrying slice, synthetic / real).

Relative severity (the reference study's style, for one aggregate only): each component's deviation
min-max normalised across the experiments being compared, then averaged.

The classifier AUC is not a component: it is reported next to severity in the headline, and
severity stays computable when the (slow) classifier is skipped.
"""

from __future__ import annotations

import math

import numpy as np

SEVERITY_VERSION = 2  # 1: null from real halves, relative SD floor, mask collapse dropped

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
    "lesion_rate_diff": "greater",
    "lesion_count_ratio": "two-sided",
    # structure family (anatomy): less symmetric or more ragged than real counts, more symmetric or smoother
    # does not (a blur does both; it is the fine-detail components' finding); the 2-4 / 4-8 px balance both ways
    "asymmetry_ratio": "greater",
    "outline_roughness_ratio": "greater",
    "midscale_band_ratio": "two-sided",
}

# absolute null-SD floors, in each metric's own units: the smallest difference the metric resolves
INTENSITY_FLOOR = 2e-3  # 0.1 % of the [-1, 1] intensity range (a quarter of an 8-bit grey level)
SD_FLOORS: dict[str, float] = {
    "spectral_slope_diff": 1e-3,  # spectral slope units (real brain MRI ~3)
    "spectral_js": 1e-6,  # bits
    "hf_ratio_diff": 1e-3,  # relative change
    "texture_ks_mean": 1e-3,  # KS statistic: a fraction of the samples
    "background_std_synth": INTENSITY_FLOOR,
    "background_std_real": INTENSITY_FLOOR,
    "background_deviation": INTENSITY_FLOOR,
    "pixel_frac_significant": 1e-3,  # fraction of pixels: ~4 pixels of the default 64 x 64 grid
    "wasserstein_all": 1e-3,  # intensity units
    "mask_mmd": 1e-4,  # squared MMD of standardised lesion features (kernel values ~1)
    "lesion_rate_diff": 1e-2,  # fraction of slices: one lesion slice in a hundred
    "lesion_count_ratio": 1e-2,  # one extra lesion per hundred lesion slices
}
RATIO_FLOOR = 1e-3  # ratios and relative differences (value 1 = like real): 0.1 %
RELATIVE_FLOOR = 1e-3  # metrics in arbitrary units (GLCM means, counts): 0.1 % of the null level


def sd_floor(name: str, null_mean: float) -> float:
    """Absolute null-SD floor of metric `name`: its natural resolution (see SD_FLOORS)."""
    if name in SD_FLOORS:
        return SD_FLOORS[name]
    if name.endswith("_ratio") or "_ks" in name or name.startswith("ks_"):
        return RATIO_FLOOR
    if name.startswith(("wasserstein_", "background_")):
        return SD_FLOORS["wasserstein_all"] if name.startswith("wasserstein_") else INTENSITY_FLOOR
    if name.startswith("lesion_rate"):
        return SD_FLOORS["lesion_rate_diff"]
    return max(RELATIVE_FLOOR * abs(null_mean), 1e-12)


def deviation(value: float, null_mean: float, sided: str) -> float:
    """Distance of a metric from its real-vs-real level, in the metric's units."""
    d = value - null_mean
    return max(d, 0.0) if sided == "greater" else abs(d)


def null_z(value: float, null_mean: float, null_sd: float, sided: str, floor: float | None = None) -> float:
    """Deviation from the null in null-SD units; `floor` defaults to a relative one (use `metric_z`)."""
    floor = max(RELATIVE_FLOOR * abs(null_mean), 1e-12) if floor is None else floor
    return deviation(value, null_mean, sided) / max(float(null_sd), floor)


def metric_z(name: str, rec: dict) -> float | None:
    """z of a runner metric record with its sidedness and absolute floor; inf when the synthetic set
    lacks what the metric needs, None when the metric or its null is missing."""
    if rec and rec.get("absent_in_synthetic") and rec.get("value") is None:
        return math.inf
    if not _usable(rec):
        return None
    sided = SEVERITY_COMPONENTS.get(name, "two-sided")
    return null_z(rec["value"], rec["null_mean"], rec["null_sd"], sided, sd_floor(name, rec["null_mean"]))


def component_score(z: float, z0: float = 2.0, scale: float = 4.0) -> float:
    return 1.0 - math.exp(-max(z - z0, 0.0) / scale)


def _usable(rec: dict | None) -> bool:
    return bool(rec) and all(
        rec.get(k) is not None and np.isfinite(rec[k]) for k in ("value", "null_mean", "null_sd")
    )


def severity(metrics: dict[str, dict], z0: float = 2.0, scale: float = 4.0,
             components: dict[str, str] | None = None) -> dict:
    """{"severity", "components": {name: {"z", "score"[, "absent_in_synthetic"]}}, "missing": [...],
    "component_set": [...], "version", "z0", "scale"} from runner metrics."""
    components = SEVERITY_COMPONENTS if components is None else components
    parts, missing = {}, []
    for name in components:
        rec = metrics.get(name)
        z = metric_z(name, rec) if rec else None
        if z is None:
            missing.append(name)
            continue
        parts[name] = {"z": z, "score": component_score(z, z0, scale)}
        if math.isinf(z):
            parts[name]["absent_in_synthetic"] = rec["absent_in_synthetic"]
    value = float(np.mean([p["score"] for p in parts.values()])) if parts else None
    return {"severity": value, "components": parts, "missing": missing, "component_set": sorted(parts),
            "version": SEVERITY_VERSION, "z0": z0, "scale": scale}


def comparable_key(sev: dict | None) -> tuple[int, tuple[str, ...]]:
    """(definition version, component set) of a stored severity; older outputs lack both fields."""
    sev = sev or {}
    comps = sev.get("component_set")
    if comps is None:
        comps = sorted(sev.get("components") or {})
    return int(sev.get("version", 1)), tuple(comps)


def incomparable(named: dict[str, dict | None]) -> str | None:
    """One line saying why the severities of these runs (name -> stored severity) cannot be compared,
    or None when they share a definition and a component set (runs without a severity are ignored)."""
    keys = {name: comparable_key(s) for name, s in named.items() if s and s.get("severity") is not None}
    if len(set(keys.values())) <= 1:
        return None
    items = list(keys.items())
    a, ka = items[0]
    b, kb = next((n, k) for n, k in items if k != ka)
    if ka[0] != kb[0]:
        return (f"severities of '{a}' (definition {ka[0]}) and '{b}' (definition {kb[0]}) were computed "
                "differently; rerun `jsddpm diagnose run-all` on the older one")
    only_a, only_b = sorted(set(ka[1]) - set(kb[1])), sorted(set(kb[1]) - set(ka[1]))
    diff = "; ".join(x for x in (f"only '{a}' has {', '.join(only_a)}" if only_a else "",
                                 f"only '{b}' has {', '.join(only_b)}" if only_b else "") if x)
    return (f"severities of '{a}' and '{b}' are means over different components ({diff}); "
            "rerun them with the same families and inputs (masks on both or neither)")


def _absent(rec: dict | None) -> bool:
    return bool(rec) and rec.get("value") is None and bool(rec.get("absent_in_synthetic"))


def relative_severity(metric_sets: list[dict[str, dict]],
                      components: dict[str, str] | None = None) -> list[float | None]:
    """Per experiment: mean over components of the min-max normalised deviation from the null level.

    A component missing from any experiment is left out for all, so every experiment is scored on
    the same components; one the synthetic set could not provide (mask collapse) scores 1, the
    others of that component are normalised among themselves. A component equal across all
    experiments (no spread to normalise) is left out. With no varying component every experiment
    scores 0.
    """
    components = SEVERITY_COMPONENTS if components is None else components
    if not metric_sets:
        return []
    shared = [c for c in components if all(_usable(m.get(c)) or _absent(m.get(c)) for m in metric_sets)]
    if not shared:
        return [None] * len(metric_sets)
    columns = []
    for c in shared:
        dev = np.array([np.nan if _absent(m[c]) else deviation(m[c]["value"], m[c]["null_mean"], components[c])
                        for m in metric_sets])
        finite = np.isfinite(dev)
        lo, hi = (dev[finite].min(), dev[finite].max()) if finite.any() else (0.0, 0.0)
        varying = hi - lo > 1e-12 * max(abs(hi), 1.0)
        if not varying and finite.all():
            continue
        columns.append(np.where(finite, (dev - lo) / (hi - lo) if varying else 0.0, 1.0))
    if not columns:
        return [0.0] * len(metric_sets)
    return [float(v) for v in np.mean(columns, axis=0)]
