"""The diagnostics engine: features once per set per family, then `compare` re-run cheaply for the
value, the bootstrap CI and the real-vs-real null.

Pure arrays in, plain dicts out; loading and writing live in `jsddpm.diagnose`.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from ..errors import UserError
from . import severity as severity_mod

# family modules in report order; `classifier` (family 10) is trained, not compared, and runs last
FAMILY_MODULES = ("spectral", "wavelet", "texture", "boundary", "background", "spatial", "pixel",
                  "intensity", "morphology", "memorization", "feature_distance")
ALL_FAMILIES = FAMILY_MODULES + ("classifier",)

# headline metrics broken down per z-bin when both sets carry z-bins
ZBIN_METRICS = ("spectral_slope_diff", "wavelet_hh_l1_ratio", "gradient_ratio", "wasserstein_all",
                "background_std_synth", "spatial_corr_ratio")
NULL_CURVE_REPEATS = 5  # real-vs-real splits used for the null band of detail curves
MIN_SUBJECTS = 4  # fewer real subjects allow too few distinct subject-disjoint halves for a null SD


@dataclass
class ImageSet:
    """One side of a comparison: image channels, optional binary masks and per-sample metadata."""

    images: np.ndarray  # (N, C, H, W) float32 in [-1, 1], image channels only
    masks: np.ndarray | None = None  # (N, H, W) bool
    subject: np.ndarray | None = None  # (N,) subject ids: resampling and splits keep subjects whole
    zbin: np.ndarray | None = None
    label: np.ndarray | None = None
    source: dict = field(default_factory=dict)  # where it came from, for the output's record

    def __post_init__(self):
        if self.images.ndim != 4:
            raise UserError(f"{self.source.get('path', 'images')}: expected (N, C, H, W) images, "
                            f"got shape {self.images.shape}; reshape the array")
        n = len(self.images)
        for name in ("masks", "subject", "zbin", "label"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise UserError(f"{self.source.get('path', name)}: '{name}' has {len(v)} entries for "
                                f"{n} images; give one per image")

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        def pick(v):
            return None if v is None else v[idx]
        return ImageSet(np.asarray(self.images[idx]), pick(self.masks), pick(self.subject),
                        pick(self.zbin), pick(self.label), dict(self.source))


# ------------------------------------------------------------------------------- resampling
def _group_members(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(n)]
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))
    return np.split(order, bounds[:-1])


def bootstrap_indices(groups: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap resample: whole subjects drawn with replacement when subjects are known."""
    if groups is None:
        return rng.integers(0, n, size=n)
    members = _group_members(groups, n)
    chosen = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[i] for i in chosen])


def split_halves(groups: np.ndarray | None, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves (subject-disjoint when subjects are known), balanced by sample count."""
    members = _group_members(groups, n)
    order = rng.permutation(len(members))
    if groups is None:
        a = order[: n // 2]
        return np.sort(a), np.sort(order[n // 2:])
    if len(members) < 2:
        raise UserError("real set: the real-vs-real null needs at least two subjects; "
                        "give more real subjects or drop the subject ids")
    # greedy: add each subject (random order) to the currently smaller half
    halves: tuple[list, list] = ([], [])
    sizes = [0, 0]
    for g in order:
        k = 0 if sizes[0] <= sizes[1] else 1
        halves[k].append(members[g])
        sizes[k] += len(members[g])
    return np.sort(np.concatenate(halves[0])), np.sort(np.concatenate(halves[1]))


def resampling_unit(s: ImageSet) -> tuple[np.ndarray | None, str]:
    """Groups for bootstrap and half splits, and a description for the output.

    Whole subjects when at least MIN_SUBJECTS are known (slices of one subject are correlated);
    otherwise single slices, because two or three subjects give only one to three distinct halves and
    no usable null SD.
    """
    if s.subject is None:
        return None, "slices (no subject ids)"
    n_subjects = len(np.unique(s.subject))
    if n_subjects < MIN_SUBJECTS:
        return None, f"slices (only {n_subjects} subject(s); subject-disjoint halves need {MIN_SUBJECTS})"
    return s.subject, f"subjects ({n_subjects})"


# ---------------------------------------------------------------------------------- families
def load_families(only=(), skip=()) -> list[ModuleType | str]:
    """Family modules to run, in report order (`"classifier"` stays a name: it is run separately).

    Unknown names in only/skip are a user error; a family whose module is not installed is left out.
    """
    for name in list(only) + list(skip):
        if name not in ALL_FAMILIES:
            raise UserError(f"--only/--skip: unknown family '{name}'; choose from {', '.join(ALL_FAMILIES)}")
    names = [n for n in ALL_FAMILIES if (not only or n in only) and n not in skip]
    out: list[ModuleType | str] = []
    for name in names:
        if name == "classifier":
            out.append(name)
            continue
        module_name = f"jsddpm.diagnostics.{name}"
        try:
            out.append(importlib.import_module(module_name))
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    return out


def family_name(family) -> str:
    return family if isinstance(family, str) else family.NAME


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


def _summarise(point: dict, boots: list[dict], nulls: list[dict]) -> dict:
    """Value / real / synthetic from the full comparison; CI and null from the re-runs."""
    out = {}
    for name, rec in point.items():
        b = _finite([r.get(name, {}).get("value") for r in boots])
        z = _finite([r.get(name, {}).get("value") for r in nulls])
        entry = {"value": rec.get("value"), "real": rec.get("real"), "synthetic": rec.get("synthetic"),
                 "ci_low": float(np.percentile(b, 2.5)) if len(b) else None,
                 "ci_high": float(np.percentile(b, 97.5)) if len(b) else None,
                 "null_mean": float(z.mean()) if len(z) else None,
                 "null_sd": float(z.std(ddof=1)) if len(z) > 1 else None}
        entry.update(_scalar_extras(rec))
        out[name] = entry
    return out


def _is_curve(v) -> bool:
    return isinstance(v, dict) and "x" in v and "real" in v and "synthetic" in v


def _null_curves(module, real_f, halves, cfg, detail: dict) -> None:
    """Add `null_low` / `null_high` (2.5 / 97.5 percentiles over real-vs-real splits) to curves."""
    keys = [k for k, v in detail.items() if _is_curve(v)]
    if not keys:
        return
    curves: dict[str, list] = {k: [] for k in keys}
    for a, b in halves[:NULL_CURVE_REPEATS]:
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


def _single_threaded_blas():
    """`compare` re-runs on small matrices hundreds of times: multi-threaded BLAS only adds
    synchronisation there (100x slower on a busy 2-core machine), so the loops run single-threaded."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def run_family(module, real: ImageSet, synth: ImageSet, cfg, train: ImageSet | None = None,
               seed: int = 0) -> dict:
    """Features once per set; compare for the value, `n_bootstrap` resamples, `n_null_repeats` halves."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()

    def feats(s):
        return module.features(s.images, s.masks, cfg)

    real_f = feats(real)
    synth_f = real_f if synth is real else feats(synth)
    kwargs = {}
    if getattr(module, "NEEDS_TRAIN", False):
        kwargs["train"] = feats(train)

    def compare(r, s):
        return module.compare(r, s, cfg, **kwargs)

    features_s = time.perf_counter() - t0
    real_groups, synth_groups = resampling_unit(real)[0], resampling_unit(synth)[0]
    with _single_threaded_blas():
        point = compare(real_f, synth_f)
        n_boot = min(int(cfg.n_bootstrap), int(getattr(module, "MAX_BOOTSTRAP", cfg.n_bootstrap)))
        boots = [compare(real_f.take(bootstrap_indices(real_groups, len(real), rng)),
                         synth_f.take(bootstrap_indices(synth_groups, len(synth), rng)))
                 for _ in range(n_boot)]
        halves = [split_halves(real_groups, len(real), rng) for _ in range(int(cfg.n_null_repeats))]
        nulls = [compare(real_f.take(a), real_f.take(b)) for a, b in halves]
        result = {"metrics": _summarise(point, boots, nulls), "n_bootstrap": n_boot, "features_s": features_s}
        if hasattr(module, "detail"):
            detail = module.detail(real_f, synth_f, cfg, **kwargs)
            if not kwargs:
                _null_curves(module, real_f, halves, cfg, detail)
            result["detail"] = detail
        if not kwargs:
            result["zbins"] = _zbin_breakdown(module, real, synth, real_f, synth_f, cfg)
    return result


def _run_classifier(real: ImageSet, synth: ImageSet, cfg) -> dict:
    from . import classifier

    joint = real.masks is not None and synth.masks is not None

    def stack(s: ImageSet) -> np.ndarray:
        if not joint:
            return s.images
        return np.concatenate([s.images, np.where(s.masks, 1.0, -1.0)[:, None].astype(np.float32)], axis=1)

    res = classifier.classifier_metrics(stack(real), stack(synth), cfg, real_groups=real.subject,
                                        synth_groups=synth.subject, image_channels=real.images.shape[1])
    return {"metrics": res["metrics"], "detail": res["detail"], "n_bootstrap": int(cfg.n_bootstrap)}


def run_diagnostics(real: ImageSet, synth: ImageSet, cfg, train: ImageSet | None = None,
                    families=None, progress: Callable[[str], None] | None = print,
                    strict: bool = False) -> dict:
    """Run every selected family; return metrics, per-family status, details, z-bin tables, severity.

    `cfg` is the `diagnostics` section. A family that fails is recorded with its error (and the
    report says so) unless `strict`, in which case the error propagates.
    """
    if real.images.shape[1:] != synth.images.shape[1:]:
        raise UserError(f"real {real.images.shape[1:]} and synthetic {synth.images.shape[1:]} images "
                        "differ in channels or size; compare sets of the same shape")
    if len(real) < 4 or len(synth) < 2:
        raise UserError(f"need at least 4 real and 2 synthetic images, got {len(real)} and {len(synth)}")
    if families is None:
        families = load_families(cfg.only, cfg.skip)
    has_masks = real.masks is not None and synth.masks is not None
    out: dict = {"metrics": {}, "families": {}, "details": {}, "zbins": {}}
    for i, family in enumerate(families):
        name = family_name(family)
        needs_mask = name != "classifier" and getattr(family, "NEEDS_MASK", False)
        reason = None
        if needs_mask and not has_masks:
            reason = "no lesion masks (image-only data)"
        elif getattr(family, "NEEDS_TRAIN", False) and train is None:
            reason = "needs the generator's training images (--train)"
        if reason:
            out["families"][name] = {"status": "skipped", "reason": reason, "seconds": 0.0}
            if progress:
                progress(f"  {name:<17} skipped: {reason}")
            continue
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            if name == "classifier":
                res = _run_classifier(real, synth, cfg)
            else:
                res = run_family(family, real, synth, cfg, train=train, seed=int(cfg.seed) + 1000 * i)
        except UserError as exc:
            if name != "classifier":
                raise
            # too few subjects for subject-disjoint folds: the rest of the suite still runs
            out["families"][name] = {"status": "skipped", "reason": str(exc), "seconds": 0.0}
            if progress:
                progress(f"  {name:<17} skipped: {exc}")
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
        for metric_name, rec in res["metrics"].items():
            out["metrics"][metric_name] = dict(rec, family=name)
        if res.get("detail"):
            out["details"][name] = jsonable(res["detail"])
        out["zbins"].update(res.get("zbins", {}))
        out["families"][name] = {"status": "ok", "seconds": seconds, "cpu_seconds": cpu,
                                 "features_seconds": res.get("features_s"), "n_metrics": len(res["metrics"]),
                                 "n_bootstrap": res["n_bootstrap"]}
        if progress:
            progress(f"  {name:<17} {seconds:6.1f} s  {len(res['metrics'])} metrics")
    out["severity"] = severity_mod.severity(out["metrics"], cfg.severity_z0, cfg.severity_scale)
    out["n_real"], out["n_synthetic"] = len(real), len(synth)
    out["resampling"] = {"real": resampling_unit(real)[1], "synthetic": resampling_unit(synth)[1]}
    return out


def jsonable(obj):
    """numpy containers -> plain lists / floats, so figure data can be stored as JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def largest_deviations(metrics: dict[str, dict], k: int = 3) -> list[tuple[str, float]]:
    """The k metrics furthest from their real-vs-real level, in null-SD units (two-sided)."""
    zs = []
    for name, rec in metrics.items():
        if severity_mod._usable(rec) and rec.get("family") != "classifier":
            sided = severity_mod.SEVERITY_COMPONENTS.get(name, "two-sided")
            z = severity_mod.null_z(rec["value"], rec["null_mean"], rec["null_sd"], sided)
            if math.isfinite(z):
                zs.append((name, z))
    return sorted(zs, key=lambda t: -t[1])[:k]
