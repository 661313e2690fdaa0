"""Severity: how far a synthetic set sits from real data, graded by the size of each deviation and
counted only where real-vs-real variation cannot explain it.

Absolute severity (comparable across runs and projects, in [0, 1]). Every component metric has a
group, a kind of deviation and a scale E (SEVERITY_COMPONENTS). For a component with runner record
(value, null_mean, null_sd), where `null_mean` / `null_sd` describe the metric between two sets drawn
from the real data at the sizes actually compared (runner.py):

1. The gate, in null SDs:  z = deviation(value, null_mean) / null_sd, with `deviation` = value -
   null_mean clipped at 0 for one-sided components (kind "distance": distances, divergences, KS
   statistics, fractions; lower than the real-vs-real level is not worse) and |value - null_mean| for
   two-sided ones. A component counts only when z > z0 (`diagnostics.severity_z0`, default 2). Only a
   degenerate null (zero variance: a background exactly at -1 in every draw, no pixel ever
   significant) has its SD replaced by a floor at the metric's resolution (SD_FLOORS); a null that
   varies keeps its own SD, however small.
2. The magnitude, in the metric's own units:  e = value - null_mean (kind "distance", clipped at 0),
   |value - null_mean| ("difference"), |ln(value / null_mean)| ("ratio") or, for a relative
   difference v = ratio - 1, |ln((1 + v) / (1 + null_mean))| ("relative").
3. The score:  s = 1 - exp(-max(e - b, 0) / E)  when z > z0, else 0,  where b = z0 null SDs in the
   units of e (for ratios z0 null_sd / null_mean, the log ratio's SD to first order): only the part
   of the deviation beyond the null band counts. Subtracting the band keeps the score continuous at
   the gate; without it a noisy component (lesion-shape MMD, boundary sharpness: null SDs of 0.2-0.7
   at 200 slices) jumps to ~1 whenever chance carries it past z0 (measured: mask_mmd scored 0.97 in
   one of four real-vs-real draws, 0 after). E (times `diagnostics.severity_scale`, default 1) is the
   excess that scores 1 - 1/e = 0.63: e = E/2 -> 0.39, 2E -> 0.86, 3E -> 0.95.
4. Groups: s is averaged within its group (SEVERITY_GROUPS: fine detail, intensity, background,
   spatial, mask morphology, pairing), then the groups present are averaged. One defect that many
   metrics of one kind see (a blur moves six fine-detail metrics) fills at most its group's share.

A component the synthetic set cannot provide although the real set can (no lesions, hence no lesion
shapes or boundaries) scores 1: mask collapse is a maximal deviation, never a missing value.
`component_set` records which components were averaged; severities over different sets (or older
definitions, SEVERITY_VERSION) are not comparable: `aggregate` and `criteria` refuse to rank them.

The scales E, in each metric's own units (the comment beside each component says why): energy ratios
(HF/LF power, finest wavelet energy) ln 4 = 1.4, i.e. a fourfold energy change scores 0.63; amplitude,
length and count ratios (gradients, correlation length, edge slope, lesions per slice) ln 2 = 0.7;
spectral slope 0.5 (the quality target is <= 0.4); spectral JS 0.01 bits; KS 0.3; Wasserstein
0.05 and background SD 0.03 intensity units ([-1, 1] range: 0.03 is ~4 grey levels of 8 bits);
fraction of pixels significant 0.3; lesion-shape MMD 1 (a one-pixel dilation of every lesion: > 1);
lesion rate 0.1 (ten points of slices). The known answer (benchmarks/severity_blur_bench.py, four
draws; tests/test_diagnostics_severity.py): 200 real demo slices against 200 of other subjects blurred
by a Gaussian of sigma 0.45 / 0.8 / 1.2 / 2 px score 0.06-0.09 / 0.18-0.25 / 0.33-0.38 / 0.48-0.55,
real vs real 0.00-0.02. Definition 2 (z scores, one mean over the components) gave 0.19-0.27 /
0.43-0.55 / 0.57-0.64 / 0.67-0.72: each component saturated within a few null SDs, so a barely
visible blur already scored a third of the heaviest one.

Why real vs real scores near 0: a real-vs-real comparison at these sizes is a draw from the null
itself, so its z is rarely above z0, and where it is, its excess beyond the band is small. The formula
does not force the zero; the tests check it.

Mask components: `mask_mmd` (lesion shapes), `lesion_rate_diff` (per class, |synthetic - real|
fraction of slices carrying a lesion, averaged over the classes) and `lesion_count_ratio` (lesions per
lesion-carrying slice, synthetic / real); pairing (the image at its mask): `boundary_sharpness_ratio`
(lesion edges), `pairing_dice_ratio` (the reference segmenter's Dice against the synthetic masks over
its Dice against held-out real ones) and `lesion_contrast_ratio` (lesion minus surround, synthetic /
real), both E = ln 2: half the real agreement or contrast scores 0.63.

Relative severity (the reference study's style, for one aggregate only): each component's deviation
min-max normalised across the experiments being compared, then averaged.

The classifier AUC is not a component: it is reported next to severity in the headline, and
severity stays computable when the (slow) classifier is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SEVERITY_VERSION = 3  # 1: null from real halves, relative SD floor; 2: z scores, plain mean; 3: magnitudes, groups

# group -> what its components look at, in the report's order; a group none of whose components a run
# has is not part of that run's severity
SEVERITY_GROUPS: dict[str, str] = {
    "fine_detail": "fine detail (spectrum, finest wavelets, texture, gradients)",
    "intensity": "intensity (pooled distribution, per-pixel means inside the brain)",
    "background": "background (outside the head)",
    "spatial": "spatial correlation (grain size)",
    "mask_morphology": "mask morphology (lesion shapes, rates, counts)",
    "pairing": "pairing (does the image agree with its mask)",
    "structure": "anatomy (symmetry about the midline, brain outline, mid-scale texture)",
}


@dataclass(frozen=True)
class Component:
    """A severity component: its group, how its deviation is measured, and the scale of that deviation.

    kind: "distance" (one-sided: value - null_mean, only above the null counts), "ratio" (|ln(value /
    null_mean)|), "ratio_above" (one-sided: ln(value / null_mean), only above the null counts), "relative"
    (a relative difference v = ratio - 1: |ln((1 + v) / (1 + null_mean))|) or "difference" (|value -
    null_mean|). scale: E, the deviation in those units that scores 1 - 1/e."""

    group: str
    kind: str
    scale: float

    @property
    def sided(self) -> str:
        return "greater" if self.kind in ("distance", "ratio_above") else "two-sided"


LN2, LN4 = math.log(2.0), math.log(4.0)
# one line per component (a group not yet in SEVERITY_GROUPS is appended to it); E in the magnitude's units
SEVERITY_COMPONENTS: dict[str, Component] = {
    "spectral_slope_diff": Component("fine_detail", "distance", 0.5),  # slope units; quality target <= 0.4
    "spectral_js": Component("fine_detail", "distance", 0.01),  # bits; ~ a 0.8 px blur of the demo slices
    "hf_ratio_diff": Component("fine_detail", "relative", LN4),  # HF/LF power: a fourfold change
    "wavelet_hh_l1_ratio": Component("fine_detail", "ratio", LN4),  # finest-level energy: a fourfold change
    "texture_ks_mean": Component("fine_detail", "distance", 0.3),  # KS: CDFs 0.3 apart
    "gradient_ratio": Component("fine_detail", "ratio", LN2),  # mean gradient: half or double
    "wasserstein_all": Component("intensity", "distance", 0.05),  # intensity units: 2.5% of the range
    "pixel_frac_significant": Component("intensity", "distance", 0.3),  # fraction of the tested positions
    "background_std_synth": Component("background", "difference", 0.03),  # intensity units: ~4 grey levels
    "spatial_corr_ratio": Component("spatial", "ratio", LN2),  # correlation length: half or double
    "mask_mmd": Component("mask_morphology", "distance", 1.0),  # MMD^2: a 1-px dilation of every lesion > 1
    "lesion_rate_diff": Component("mask_morphology", "distance", 0.1),  # ten points of slices with a lesion
    "lesion_count_ratio": Component("mask_morphology", "ratio", LN2),  # lesions per slice: half or double
    "boundary_sharpness_ratio": Component("pairing", "ratio", LN2),  # lesion-edge slope: half or double
    "pairing_dice_ratio": Component("pairing", "ratio", LN2),  # segmenter-vs-mask Dice: half the real one
    "lesion_contrast_ratio": Component("pairing", "ratio", LN2),  # lesion minus surround: half or double
    # anatomy: less symmetric or more ragged than real counts, more symmetric or smoother does not (a blur
    # does both: the fine-detail group's finding); the 2-4 / 4-8 px band balance counts both ways
    "asymmetry_ratio": Component("structure", "ratio_above", math.log(1.5)),  # half again as asymmetric
    "outline_roughness_ratio": Component("structure", "ratio_above", LN2),  # twice the excess outline
    "midscale_band_ratio": Component("structure", "ratio", 0.2),  # 2-4 vs 4-8 px balance off by ~20%
}

# null-SD floors for degenerate nulls (zero variance) only, in each metric's own units: the smallest
# difference the metric resolves
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
DEGENERATE_SD = 1e-12  # a null SD at most this (relative to the null mean, or absolute near 0) has no spread


def sidedness(name: str) -> str:
    """'greater' (only above the null level is worse) or 'two-sided'; non-components are two-sided."""
    comp = SEVERITY_COMPONENTS.get(name)
    return comp.sided if comp else "two-sided"


def sd_floor(name: str, null_mean: float) -> float:
    """Null-SD floor of metric `name` for a degenerate null: its natural resolution (see SD_FLOORS)."""
    if name in SD_FLOORS:
        return SD_FLOORS[name]
    if name.endswith("_ratio") or "_ks" in name or name.startswith("ks_"):
        return RATIO_FLOOR
    if name.startswith(("wasserstein_", "background_")):
        return SD_FLOORS["wasserstein_all"] if name.startswith("wasserstein_") else INTENSITY_FLOOR
    if name.startswith("lesion_rate"):
        return SD_FLOORS["lesion_rate_diff"]
    return max(RELATIVE_FLOOR * abs(null_mean), 1e-12)


def degenerate(null_sd: float, null_mean: float) -> bool:
    """True when the null does not vary (float round-off aside): only then does a floor replace its SD."""
    return not null_sd > DEGENERATE_SD * max(abs(null_mean), 1.0)


def deviation(value: float, null_mean: float, sided: str) -> float:
    """Distance of a metric from its real-vs-real level, in the metric's units."""
    d = value - null_mean
    return max(d, 0.0) if sided == "greater" else abs(d)


def null_z(value: float, null_mean: float, null_sd: float, sided: str, floor: float | None = None) -> float:
    """Deviation from the null in null-SD units; `floor` (default: a relative one; `metric_z` uses the
    metric's own) replaces the SD only when the null is degenerate."""
    floor = max(RELATIVE_FLOOR * abs(null_mean), 1e-12) if floor is None else floor
    sd = floor if degenerate(float(null_sd), float(null_mean)) else float(null_sd)
    return deviation(value, null_mean, sided) / sd


def gate_sd(name: str, rec: dict) -> float:
    """The null SD the gate divides by: the record's own, or the metric's floor where it is degenerate."""
    sd, mean = float(rec["null_sd"]), float(rec["null_mean"])
    return sd_floor(name, mean) if degenerate(sd, mean) else sd


def metric_z(name: str, rec: dict, sided: str | None = None) -> float | None:
    """z of a runner metric record (`sided` defaults to the component's side, two-sided for other
    metrics); inf when the synthetic set lacks what the metric needs, None when the metric or its null
    is missing."""
    if rec and rec.get("absent_in_synthetic") and rec.get("value") is None:
        return math.inf
    if not _usable(rec):
        return None
    return deviation(rec["value"], rec["null_mean"], sided or sidedness(name)) / gate_sd(name, rec)


def magnitude(comp: Component, value: float, null_mean: float) -> float:
    """The deviation of a component from its null level in its own units (see `Component`)."""
    if comp.kind == "distance":
        return max(value - null_mean, 0.0)
    if comp.kind == "difference":
        return abs(value - null_mean)
    a, b = _ratio_levels(comp, value, null_mean)
    if a <= 0:
        return math.inf
    return max(math.log(a / b), 0.0) if comp.kind == "ratio_above" else abs(math.log(a / b))


def _ratio_levels(comp: Component, value: float, null_mean: float) -> tuple[float, float]:
    shift = 1.0 if comp.kind == "relative" else 0.0
    b = null_mean + shift
    return value + shift, b if b > 0 else 1.0  # a ratio's null level is ~1; a non-positive one is no level


def null_band(comp: Component, null_mean: float, sd: float, z0: float) -> float:
    """z0 null SDs in the units of `magnitude` (for ratios: relative to the null level, the SD of the
    log ratio to first order)."""
    if comp.kind in ("distance", "difference"):
        return z0 * sd
    return z0 * sd / _ratio_levels(comp, null_mean, null_mean)[1]


def component_score(z: float, excess: float, scale: float, z0: float = 2.0) -> float:
    """0 within z0 null SDs of the null level; beyond it 1 - exp(-excess / scale), `excess` = the
    magnitude beyond the null band (`magnitude` - `null_band`)."""
    if not z > z0:
        return 0.0
    return 1.0 - math.exp(-max(excess, 0.0) / scale)


def _usable(rec: dict | None) -> bool:
    return bool(rec) and all(
        rec.get(k) is not None and np.isfinite(rec[k]) for k in ("value", "null_mean", "null_sd")
    )


def severity(metrics: dict[str, dict], z0: float = 2.0, scale: float = 1.0,
             components: dict[str, Component] | None = None) -> dict:
    """{"severity", "groups": {group: {"score", "components"}}, "components": {name: {"group", "z",
    "magnitude", "excess", "score"[, "absent_in_synthetic"]}}, "missing", "component_set", "version",
    "z0", "scale"} from runner metrics (see the module docstring). `scale` multiplies every E."""
    components = SEVERITY_COMPONENTS if components is None else components
    parts, missing = {}, []
    for name, comp in components.items():
        rec = metrics.get(name)
        z = metric_z(name, rec, comp.sided) if rec else None
        if z is None:
            missing.append(name)
            continue
        if math.isinf(z):  # the synthetic set cannot provide it: a maximal deviation
            parts[name] = {"group": comp.group, "z": z, "magnitude": math.inf, "excess": math.inf, "score": 1.0,
                           "absent_in_synthetic": rec["absent_in_synthetic"]}
            continue
        e = magnitude(comp, rec["value"], rec["null_mean"])
        band = null_band(comp, rec["null_mean"], gate_sd(name, rec), z0)
        parts[name] = {"group": comp.group, "z": z, "magnitude": e, "excess": max(e - band, 0.0),
                       "score": component_score(z, e - band, comp.scale * scale, z0)}
    groups: dict[str, dict] = {}
    for group in dict.fromkeys([*SEVERITY_GROUPS, *(c.group for c in components.values())]):
        members = [n for n in parts if parts[n]["group"] == group]
        if members:
            groups[group] = {"score": float(np.mean([parts[n]["score"] for n in members])),
                             "components": members}
    value = float(np.mean([g["score"] for g in groups.values()])) if groups else None
    return {"severity": value, "groups": groups, "components": parts, "missing": missing,
            "component_set": sorted(parts), "version": SEVERITY_VERSION, "z0": z0, "scale": scale}


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
    components = {c: sidedness(c) for c in SEVERITY_COMPONENTS} if components is None else components
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
