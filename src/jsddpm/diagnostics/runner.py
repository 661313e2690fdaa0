"""The diagnostics engine: features once per set per family, then `compare` re-run cheaply for the
value, the bootstrap CI and the real-vs-real null.

The null describes the statistic at the sizes actually compared. Each null draw resamples BOTH sides
from the real set, with replacement, the way each set was sampled: the real side in whole subjects
(the real set's slices are clustered by subject), the synthetic side as `n_synth` independent slices
(a generator's samples are independent draws; a synthetic set that carries its own subject ids is
drawn in whole real subjects instead). Both sides then come from one distribution, the real data's,
so the spread and the mean of the statistic over the draws are its null distribution at (n_real,
n_synth) with the clustering of each side, as in a two-sample bootstrap test. The real side draws one
unit fewer than the real set holds (S - 1 of S subjects, n - 1 of n slices without subjects): that
makes the resampled variance of a mean unbiased, where drawing S would shrink it by (S - 1) / S.
Measured on phantom slices with subject effects (60 real slices in 12 subjects vs 38 independent
slices, 300 repeated draws from one population): null SD / observed SD of the statistic 0.90-1.08,
null mean / observed mean of distances 0.90-0.96, for the spectral, wavelet, texture and intensity
headline metrics.

Why not subject-disjoint halves of the real set (the earlier null): they hold n_real / 2 slices a side
and are clustered on both sides, so they overstate the spread of the statistic (same measurement:
1.3-1.5x; up to 1.9x on other populations) and the small-sample bias of distances (null means of KS,
Wasserstein and |slope difference| 1.2-1.5x the statistic's mean). Rescaling them to the compared
sizes needs a model of every metric's size dependence (sqrt(1/n) for norms, 1/n for divergences,
neither for one-sided metrics such as `background_std_synth`) and of its design effect, because only
the real side is clustered; resampling at the compared sizes needs neither. What it costs: the two
sides may share slices; for plug-in statistics (means, spectra, histograms, KS) the two draws are
independent given the data, so that changes little, and the lesion MMD leaves pairs of one lesion
with itself out of its cross term (morphology.py). The number of null draws (`n_null_repeats`) sets
how well the null SD is known: its relative error is about 1 / sqrt(2 (repeats - 1)).

Bootstrap CIs: the percentile interval of the bias-corrected replicates, i.e. the 2.5 / 97.5 %
quantiles of the bootstrap replicates shifted by (value - their median), so the interval is centred
on the value it accompanies. A plain percentile interval of a biased distance (KS, Wasserstein,
|slope difference|) sits above the value, because resampling adds its own noise to the compared sets
(measured: `texture_ks_mean` of a perfect generator outside its own CI in about half the runs); the
basic (reflected) interval brackets the value no more often and, at a distance near 0, misses the
statistic's mean. Read the CI as the range of the statistic's expected value at these sample sizes,
the same quantity the null mean gives for real vs real. Intervals of quantities that cannot be
negative are cut at 0.

`run_diagnostics` runs the selected families of the registry (families.py): the resampled ones here,
the trained ones through their own run. Pure arrays in, plain dicts out; loading and writing live in
`sets.py` and `stage.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from ..errors import UserError
from . import severity as severity_mod
from .common import Features, jsonable, one_blas_thread
from .families import GENERATOR_TRAIN, Family, FamilyResult, as_family, load_families
from .sets import ImageSet, Sets

# headline metrics broken down per z-bin when both sets carry z-bins
ZBIN_METRICS = ("spectral_slope_diff", "wavelet_hh_l1_ratio", "gradient_ratio", "wasserstein_all",
                "background_std_synth", "spatial_corr_ratio")
NULL_CURVE_REPEATS = 5  # real-vs-real null draws used for the null band of detail curves
MIN_SUBJECTS = 4  # fewer subjects allow too few distinct resamples for a spread


# ------------------------------------------------------------------------------- resampling
def _group_members(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(n)]
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))
    return np.split(order, bounds[:-1])


def bootstrap_indices(groups: np.ndarray | None, n: int, rng: np.random.Generator,
                      drop_one: bool = False) -> np.ndarray:
    """One bootstrap resample: whole subjects drawn with replacement when subjects are known. With
    `drop_one`, one unit fewer than the set holds is drawn: the variance of a mean over the resample
    is then unbiased (s^2 / (S - 1) with the ddof-0 s^2 of S units) instead of (S - 1) / S too small."""
    if groups is None:
        return rng.integers(0, n, size=n - 1 if drop_one and n > 2 else n)
    members = _group_members(groups, n)
    k = len(members) - 1 if drop_one and len(members) > 2 else len(members)
    chosen = rng.integers(0, len(members), size=k)
    return np.concatenate([members[i] for i in chosen])


def subjects_to_size(groups: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Whole subjects drawn with replacement until `size` slices are reached (the last subject is kept
    only if that lands closer to `size`)."""
    members = _group_members(groups, n)
    chosen, total = [], 0
    while total < size:
        m = members[rng.integers(len(members))]
        if total + len(m) - size > size - total and chosen:
            break
        chosen.append(m)
        total += len(m)
    return np.concatenate(chosen)


def null_indices(real_groups: np.ndarray | None, n_real: int, synth_groups: np.ndarray | None, n_synth: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One draw of the real-vs-real null at the compared sizes: two index sets into the real set, the
    first like the real set (its units, whole subjects when known, less one: see `bootstrap_indices`),
    the second like the synthetic set (n_synth independent slices, or whole subjects up to about
    n_synth slices when the synthetic set has subjects)."""
    a = bootstrap_indices(real_groups, n_real, rng, drop_one=True)
    if synth_groups is not None and real_groups is not None:
        return a, subjects_to_size(real_groups, n_real, n_synth, rng)
    return a, rng.integers(0, n_real, size=n_synth)


def resampling_unit(s: ImageSet) -> tuple[np.ndarray | None, str]:
    """Groups for the bootstrap and the null draws, and a description for the output.

    Whole subjects when at least MIN_SUBJECTS are known (slices of one subject are correlated);
    otherwise single slices, because a bootstrap over two or three subjects has only a handful of
    distinct resamples and no usable spread.
    """
    if s.subject is None:
        return None, "slices (no subject ids)"
    n_subjects = len(np.unique(s.subject))
    if n_subjects < MIN_SUBJECTS:
        return None, f"slices (only {n_subjects} subject(s); resampling whole subjects needs {MIN_SUBJECTS})"
    return s.subject, f"subjects ({n_subjects})"


def _scalar_extras(rec: dict) -> dict:
    keep = {}
    for k, v in rec.items():
        if k in ("value", "real", "synthetic"):
            continue
        if isinstance(v, (bool, int, float, str)) or v is None:
            keep[k] = v
        elif isinstance(v, np.generic):
            keep[k] = v.item()
    return keep


def _finite(values: list) -> np.ndarray:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def bracketing_ci(value, boots: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """CI of the value from its bootstrap replicates: their percentile interval shifted by
    (value - their median), so it brackets the value (see the module docstring); cut at 0 when the
    value and every replicate are >= 0 (a distance, a fraction, a ratio of positive quantities)."""
    if value is None or not len(boots) or not math.isfinite(value):
        return None, None
    lo_q, mid, hi_q = np.percentile(boots, [50 * (1 - level), 50, 50 * (1 + level)])
    lo, hi = value + (lo_q - mid), value + (hi_q - mid)
    if value >= 0 and boots.min() >= 0:
        lo = max(lo, 0.0)
    return float(lo), float(hi)


def _summarise(point: dict, boots: list[dict], nulls: list[dict]) -> dict:
    """Value / real / synthetic from the full comparison; CI and null from the re-runs."""
    out = {}
    for name, rec in point.items():
        b = _finite([r.get(name, {}).get("value") for r in boots])
        z = _finite([r.get(name, {}).get("value") for r in nulls])
        ci_low, ci_high = bracketing_ci(rec.get("value"), b)
        entry = {"value": rec.get("value"), "real": rec.get("real"), "synthetic": rec.get("synthetic"),
                 "ci_low": ci_low, "ci_high": ci_high,
                 "null_mean": float(z.mean()) if len(z) else None,
                 "null_sd": float(z.std(ddof=1)) if len(z) > 1 else None}
        entry.update(_scalar_extras(rec))
        out[name] = entry
    return out


def _is_curve(v) -> bool:
    return isinstance(v, dict) and "x" in v and "real" in v and "synthetic" in v


def _null_curves(module, real_f, draws, cfg, detail: dict) -> None:
    """Add `null_low` / `null_high` (2.5 / 97.5 percentiles over real-vs-real null draws) to curves."""
    keys = [k for k, v in detail.items() if _is_curve(v)]
    if not keys:
        return
    curves: dict[str, list] = {k: [] for k in keys}
    for a, b in draws[:NULL_CURVE_REPEATS]:
        d = module.detail(real_f.take(a), real_f.take(b), cfg)
        for k in keys:
            if _is_curve(d.get(k)):
                curves[k].append(np.asarray(d[k]["synthetic"], dtype=float))
    for k, cs in curves.items():
        if cs and all(c.shape == cs[0].shape for c in cs):
            stack = np.stack(cs)
            detail[k] = dict(detail[k], null_low=np.percentile(stack, 2.5, axis=0).tolist(),
                             null_high=np.percentile(stack, 97.5, axis=0).tolist())


def _zbin_breakdown(module, real: ImageSet, synth: ImageSet, real_f, synth_f, cfg) -> dict:
    if real.zbin is None or synth.zbin is None:
        return {}
    out: dict[str, dict] = {}
    for b in np.intersect1d(np.unique(real.zbin), np.unique(synth.zbin)):
        ri, si = np.flatnonzero(real.zbin == b), np.flatnonzero(synth.zbin == b)
        if min(len(ri), len(si)) < cfg.zbin_min_samples:
            continue
        res = module.compare(real_f.take(ri), synth_f.take(si), cfg)
        for name in ZBIN_METRICS:
            if name in res and res[name].get("value") is not None:
                out.setdefault(name, {})[str(int(b))] = float(res[name]["value"])
    return out


def with_metadata(f: Features, s: ImageSet) -> Features:
    """Per-sample class labels travel with the features (the lesion rate is compared per class)."""
    if s.label is not None and "label" not in f.per_sample:
        f.per_sample["label"] = np.asarray(s.label)
    return f


def resampled_comparison(module, real_f: Features, synth_f: Features, cfg, real_groups=None,
                         synth_groups=None, seed: int = 0, **kwargs) -> dict:
    """Value, bootstrap CI and real-vs-real null of every metric of `module`, from features alone:
    `n_bootstrap` resamples of both sets and `n_null_repeats` null draws at the compared sizes."""
    rng = np.random.default_rng(seed)
    n_real, n_synth = real_f.n, synth_f.n

    def compare(r, s):
        return module.compare(r, s, cfg, **kwargs)

    with one_blas_thread():
        point = compare(real_f, synth_f)
        n_boot = min(int(cfg.n_bootstrap), int(getattr(module, "MAX_BOOTSTRAP", cfg.n_bootstrap)))
        boots = [compare(real_f.take(bootstrap_indices(real_groups, n_real, rng)),
                         synth_f.take(bootstrap_indices(synth_groups, n_synth, rng)))
                 for _ in range(n_boot)]
        draws = [null_indices(real_groups, n_real, synth_groups, n_synth, rng)
                 for _ in range(int(cfg.n_null_repeats))]
        nulls = [compare(real_f.take(a), real_f.take(b)) for a, b in draws]
    return {"metrics": _summarise(point, boots, nulls), "n_bootstrap": n_boot, "null_draws": draws}


def run_family(module, real: ImageSet, synth: ImageSet, cfg, train: ImageSet | None = None,
               seed: int = 0) -> dict:
    """Features once per set; compare for the value, `n_bootstrap` resamples, `n_null_repeats` null draws.
    `train` (the generator's training images) is for families that compare against it (memorisation):
    its features go to `compare` / `detail` as `train=`."""
    t0 = time.perf_counter()

    def feats(s):
        return with_metadata(module.features(s.images, s.masks, cfg), s)

    real_f = feats(real)
    synth_f = real_f if synth is real else feats(synth)
    kwargs = {} if train is None else {"train": feats(train)}
    features_s = time.perf_counter() - t0
    res = resampled_comparison(module, real_f, synth_f, cfg, resampling_unit(real)[0], resampling_unit(synth)[0],
                               seed, **kwargs)
    result = {"metrics": res["metrics"], "n_bootstrap": res["n_bootstrap"], "features_s": features_s}
    with one_blas_thread():
        if hasattr(module, "detail"):
            detail = module.detail(real_f, synth_f, cfg, **kwargs)
            if not kwargs:
                _null_curves(module, real_f, res["null_draws"], cfg, detail)
            result["detail"] = detail
        if not kwargs:
            result["zbins"] = _zbin_breakdown(module, real, synth, real_f, synth_f, cfg)
    return result


def _resample_trained(res: FamilyResult, cfg, seed: int) -> None:
    """A trained family's per-sample features (`FamilyResult.resample`): value, bootstrap CI and null of
    their compare, as for a resampled family, added to its metrics."""
    r = res.resample
    out = resampled_comparison(r.module, r.real, r.synthetic, cfg, resampling_unit(r.real_set)[0],
                               resampling_unit(r.synthetic_set)[0], seed)
    res.metrics.update(out["metrics"])
    res.status.setdefault("n_bootstrap", out["n_bootstrap"])


def _resampled(family: Family, sets: Sets, cfg, seed: int) -> FamilyResult:
    module = family.load_module()
    train = sets.train if GENERATOR_TRAIN in family.needs else None
    res = run_family(module, sets.real, sets.synthetic, cfg, train=train, seed=seed)
    return FamilyResult(res["metrics"], detail=res.get("detail"), zbins=res.get("zbins", {}),
                        status={"features_seconds": res["features_s"], "n_bootstrap": res["n_bootstrap"]})


def run_diagnostics(real: ImageSet, synth: ImageSet, cfg, train: ImageSet | None = None,
                    families=None, progress: Callable[[str], None] | None = print,
                    strict: bool = False, real_train: Callable[[], ImageSet] | None = None,
                    segmenter: Callable[[], object] | None = None) -> dict:
    """Run every selected family; return metrics, per-family status, details, z-bin tables, severity,
    and what the families hand over for the output: their records, extra files and example arrays.

    `cfg` is the `diagnostics` section; `families` are registry entries (default: cfg.only / cfg.skip
    of the registry) or stand-in modules; `real_train` loads real training slices with masks for the
    families that need them; `segmenter` loads the reference lesion segmenter (pairing; default: trained
    on the real training slices, not stored). A family that fails is recorded with its error (and the report says so)
    unless `strict`, in which case the error propagates. A trained family that cannot run on these sets
    (a UserError: too few subjects, no training split) is recorded as skipped; a resampled family's
    UserError is a bad input and stops the run.
    """
    if real.images.shape[1:] != synth.images.shape[1:]:
        raise UserError(f"real {real.images.shape[1:]} and synthetic {synth.images.shape[1:]} images "
                        "differ in channels or size; compare sets of the same shape")
    if len(real) < 4 or len(synth) < 2:
        raise UserError(f"need at least 4 real and 2 synthetic images, got {len(real)} and {len(synth)}")
    if families is None:
        families = load_families(cfg.only, cfg.skip)
    sets = Sets(real, synth, train, real_train, segmenter)
    out: dict = {"metrics": {}, "families": {}, "details": {}, "zbins": {}, "records": {}, "files": {},
                 "examples": {}}

    def skipped(name: str, reason: str) -> None:
        out["families"][name] = {"status": "skipped", "reason": reason, "seconds": 0.0}
        if progress:
            progress(f"  {name:<17} skipped: {reason}")

    for i, family in enumerate(families):
        family = as_family(family)
        name = family.name
        reason = family.unmet(sets)
        if reason:
            skipped(name, reason)
            continue
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            if family.resampled:
                res = _resampled(family, sets, cfg, seed=int(cfg.seed) + 1000 * i)
            else:
                res = family.run(sets, cfg, progress)
                if res.resample is not None:
                    _resample_trained(res, cfg, seed=int(cfg.seed) + 1000 * i)
        except UserError as exc:
            if family.resampled:
                raise
            skipped(name, str(exc))  # e.g. too few subjects for subject-disjoint folds: the rest still runs
            continue
        except Exception as exc:
            if strict:
                raise
            seconds = time.perf_counter() - t0
            out["families"][name] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                                     "seconds": seconds}
            if progress:
                progress(f"  {name:<17} FAILED after {seconds:.1f} s: {type(exc).__name__}: {exc}")
            continue
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        for metric_name, rec in res.metrics.items():
            out["metrics"][metric_name] = dict(rec, family=name)
        if res.detail:
            out["details"][name] = jsonable(res.detail)
        out["zbins"].update(res.zbins)
        if res.record is not None:
            out["records"][name] = res.record
        out["files"].update(res.files)
        out["examples"].update({f"{name}_{k}": v for k, v in res.examples.items()})
        out["families"][name] = {"status": "ok", "seconds": seconds, "cpu_seconds": cpu,
                                 "n_metrics": len(res.metrics), **res.status}
        if progress:
            progress(f"  {name:<17} {seconds:6.1f} s  {res.summary or f'{len(res.metrics)} metrics'}")
    out["severity"] = severity_mod.severity(out["metrics"], cfg.severity_z0, cfg.severity_scale)
    out["n_real"], out["n_synthetic"] = len(real), len(synth)
    out["resampling"] = {"real": resampling_unit(real)[1], "synthetic": resampling_unit(synth)[1]}
    return out


def largest_deviations(metrics: dict[str, dict], k: int = 3) -> list[tuple[str, float]]:
    """The k metrics furthest from their real-vs-real level, in null-SD units (two-sided unless a
    severity component says otherwise); a metric the synthetic set cannot provide comes first (inf)."""
    zs = []
    for name, rec in metrics.items():
        if rec.get("family") == "classifier":
            continue
        z = severity_mod.metric_z(name, rec)
        if z is not None and not math.isnan(z):
            zs.append((name, z))
    return sorted(zs, key=lambda t: -t[1])[:k]
