"""Family 13, utility: does the synthetic set help a lesion segmenter? (pure torch / numpy on arrays)

Protocol
- Validation: `utility_val_fraction` of the real training subjects that hold lesions are carved out
  (subject-disjoint, the same subjects for every arm and seed); every segmenter early-stops on its
  pooled Dice over their lesion slices. The arms train on the rest of the real training set.
- Arms (training sets): `real` (the real training slices), `synthetic` (ALL synthetic slices: train on
  synthetic, test on real), `real_plus_synthetic` (the real slices plus `utility_synthetic_ratio`
  synthetic slices per real slice, as many as there are), `real_plus_synthetic_x<r>` for each ratio r of
  `utility_synthetic_ratios` (a ratio sweep), and, for each fraction p of `utility_real_fractions`, the
  same on that fraction of the real training subjects (stratified: that fraction of the subjects with
  and of those without lesions): `real_<p>pct`, `real_<p>pct_plus_synthetic[_x<r>]`. Smaller arms take a
  prefix of one fixed order of the synthetic slices.
- Every arm trains the same small 2-D UNet (`segmentation/`) from the same seeds (`utility_seeds`) until
  its validation Dice stops improving: the moving average of its weights is scored on the validation
  lesion slices every `utility_eval_every` steps, training stops after `utility_patience` evaluations
  without a better one (best weights kept; not before half of the arm's step cap, nor while the Dice is
  0 or still rising), at most the arm's step cap (the span of the cosine learning-rate decay). Batches
  draw `utility_lesion_fraction` of their slices from lesion slices (a minority in brain data), so an arm
  with more lesion slices shows each one less often per step: the cap is `utility_steps` for the `real`
  arm and grows with an arm's lesion slices over the real arm's (`arm_step_caps`, at most
  MAX_CAP_SCALE x), so that every arm can show each lesion slice as often as the real arm does. (Seen
  on the demo: 200 inpainted lesion pairs beside 124 real lesion slices, a fixed 600-step cap gave
  real + synthetic 0.43 against real 0.59, at 1,200 steps 0.54 against 0.57: the harm was the budget.)
  Arms differ in their data, and each trains as long as its data need; the record gives each arm's cap,
  the steps each segmenter used and whether the arm converged (every seed stopped on its own or ended on
  a flat validation curve, `segmentation.train_segmenter`).
- Every segmenter is scored on the held-out real test slices, thresholded at probability 0.5: `dice`
  (pooled over the test slices that hold a lesion: 2 TP / (predicted + true pixels)), `sensitivity`
  (true lesions, 8-connected components per slice, that any predicted pixel touches, over all true
  lesions), `fp_per_slice` (predicted components touching no true lesion, per test slice, lesion-free
  slices included) and `subject_dice` (pooled Dice per test subject with lesions, averaged over subjects).
- An arm's value is the mean over its seeds. Its 95% CI treats test subjects (slices when subjects are
  unknown) and training seeds as crossed random factors: cell values per (seed, subject) (per-subject
  Dice, or for a pooled ratio its linearised pseudo-values), a two-way ANOVA estimate of the variance of
  the grand mean (MS_subjects + MS_seeds - MS_residual) / (subjects x seeds) and a t quantile with
  Satterthwaite's degrees of freedom (`crossed_interval`). With 4 test subjects and 3 seeds this covers
  ~95% in simulation, where the percentile bootstrap over subjects and seeds covered ~85%. The
  differences between arms use the same cells paired over subjects and seeds. With one seed the CI
  holds the test subjects' variation only.
- Speed: segmenters train on random crops (`utility_crop` of the side; lesion draws keep a lesion
  pixel inside) and score whole slices (the network is fully convolutional); each uses one torch
  thread, and `utility_workers` processes train the (arm, seed) segmenters side by side. A reference
  segmenter trained exactly as the `real` arm's first seed (`segmentation.reference_segmenter`, shared
  with the pairing family and generation) can be passed in and is then not trained again.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import UserError
from ..segmentation import (
    SUM_COLUMNS,
    Segmenter,
    data_digest,
    one_torch_thread,
    predict_masks,
    settings_from_config,
    slice_counts,
    split_for_validation,
    train_segmenter,
    unit_sums,
)
from ..segmentation.scoring import metrics_from_sums

NAME = "utility"
METRICS = ("dice", "sensitivity", "fp_per_slice", "subject_dice")
# (arm, reference arm) pairs whose paired differences are reported (plus every `X_plus_synthetic...` - X)
DIFFERENCES = (("real_plus_synthetic", "real"), ("synthetic", "real"))
N_EXAMPLES = 4  # test slices shown with the real-trained and synthetic-trained predictions
MAX_CAP_SCALE = 4.0  # an arm's step cap is at most this multiple of utility_steps (bounds the time)
LEVEL = 0.95
# ratio metrics: (numerator, denominator) columns of `unit_sums` and the factor of the numerator
_RATIOS = {"dice": ((0,), (1, 2), 2.0), "sensitivity": ((4,), (3,), 1.0), "fp_per_slice": ((5,), (6,), 1.0)}
_COL = {name: i for i, name in enumerate(SUM_COLUMNS)}


# ---------------------------------------------------------------------------------------- intervals
def crossed_interval(cells: np.ndarray, level: float = LEVEL) -> dict:
    """Mean of (n_seeds, n_units) cell values and its CI for the population mean when both seeds and units
    (test subjects) are random draws, crossed: var(mean) = (MS_units + MS_seeds - MS_residual) /
    (n_units n_seeds) (the two-way random-effects ANOVA, never below max(MS_units, MS_seeds) / (n_units
    n_seeds)), a t quantile with Satterthwaite's degrees of freedom. With one seed (or one unit) the other
    factor's variation alone. Returns {"value", "ci_low", "ci_high", "se", "df"} (CI None from one cell)."""
    from scipy import stats

    y = np.asarray(cells, dtype=float)
    n_seeds, n_units = y.shape
    mean = float(y.mean()) if y.size else float("nan")
    if y.size < 2 or not np.isfinite(y).all():
        return {"value": mean if np.isfinite(mean) else None, "ci_low": None, "ci_high": None, "se": None,
                "df": None}
    if n_seeds == 1 or n_units == 1:
        var, df = y.var(ddof=1) / y.size, y.size - 1.0
    else:
        unit_means, seed_means = y.mean(axis=0), y.mean(axis=1)
        ms_units = n_seeds * ((unit_means - mean) ** 2).sum() / (n_units - 1)
        ms_seeds = n_units * ((seed_means - mean) ** 2).sum() / (n_seeds - 1)
        resid = y - unit_means[None] - seed_means[:, None] + mean
        ms_resid = (resid ** 2).sum() / ((n_units - 1) * (n_seeds - 1))
        total = ms_units + ms_seeds - ms_resid
        if total >= max(ms_units, ms_seeds):
            df = total ** 2 / (ms_units ** 2 / (n_units - 1) + ms_seeds ** 2 / (n_seeds - 1)
                               + ms_resid ** 2 / ((n_units - 1) * (n_seeds - 1)))
        else:  # the residual exceeds one factor's mean square: fall back on the larger one alone
            total, df = (ms_units, n_units - 1.0) if ms_units >= ms_seeds else (ms_seeds, n_seeds - 1.0)
        var = total / y.size
    se = math.sqrt(max(var, 0.0))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se if df > 0 else float("nan")
    return {"value": mean, "ci_low": mean - half, "ci_high": mean + half, "se": se, "df": float(df)}


def metric_cells(sums: np.ndarray, metric: str) -> np.ndarray:
    """(n_seeds, n_units') cell values whose mean is the seed mean of `metric`: per-unit Dice for
    `subject_dice` (units with lesions); for a pooled ratio R_j = sum N / sum D of seed j, the linearised
    pseudo-values R_j + n (N_ju - R_j D_ju) / sum_u D_ju over the units that can hold its denominator
    (units with lesions for dice and sensitivity, all units for fp_per_slice). `sums`: (n_seeds,
    n_units, 8) `unit_sums` of the arm's segmenters."""
    has = sums[0, :, _COL["has_lesion"]] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "subject_dice":
            s = sums[:, has]
            return 2 * s[..., _COL["tp"]] / (s[..., _COL["pred"]] + s[..., _COL["true"]])
        num_cols, den_cols, factor = _RATIOS[metric]
        s = sums if metric == "fp_per_slice" else sums[:, has]
        num = factor * s[..., list(num_cols)].sum(axis=-1)
        den = s[..., list(den_cols)].sum(axis=-1)
        ratio = num.sum(axis=1) / den.sum(axis=1)
        return ratio[:, None] + s.shape[1] * (num - ratio[:, None] * den) / den.sum(axis=1)[:, None]


def _summary(cells: np.ndarray) -> dict:
    """value = seed mean, its crossed CI, the standard error and df, and the per-seed values."""
    rec = crossed_interval(cells)
    per_seed = cells.mean(axis=1) if cells.size else np.full(len(cells), np.nan)
    rec["seeds"] = [None if not math.isfinite(v) else float(v) for v in per_seed]
    return rec


# ------------------------------------------------------------------------------------------ arms
def _ratio_name(r: float) -> str:
    return f"x{float(r):g}"


def arm_training_sets(fit: np.ndarray, subject: np.ndarray | None, has_lesion: np.ndarray, n_synth: int, cfg,
                      rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """arm -> (real slice indices into the real training set, synthetic slice indices). `fit`: the real
    training rows left after the validation carve; `subject`, `has_lesion`: per real training row."""
    # Two independent streams: the real subsets must not depend on how many synthetic slices there are
    # (one stream shared made `real_25pct` differ between synthetic sets, though it sees none of them).
    synth_rng, real_rng = rng.spawn(2)
    synth_order = synth_rng.permutation(n_synth)  # one fixed order: smaller arms take a prefix of the same slices
    empty = np.array([], dtype=np.int64)

    def synth_for(n_real: int, ratio: float) -> np.ndarray:
        return np.sort(synth_order[:min(n_synth, max(1, int(round(ratio * n_real))))])

    ratios = [(float(cfg.utility_synthetic_ratio), "")]
    ratios += [(float(r), f"_{_ratio_name(r)}") for r in cfg.utility_synthetic_ratios
               if float(r) != float(cfg.utility_synthetic_ratio)]  # that ratio is the plain _plus_synthetic arm

    def with_synthetic(name: str, real: np.ndarray) -> dict:
        return {f"{name}_plus_synthetic{suffix}": (real, synth_for(len(real), r)) for r, suffix in ratios}

    arms = {"real": (fit, empty), "synthetic": (empty, np.sort(synth_order))}
    arms.update(with_synthetic("real", fit))
    units = subject[fit] if subject is not None else fit
    for f in cfg.utility_real_fractions:
        # stratified: the fraction of the subjects with lesions and of those without, so the arm sees lesions
        with_lesion = np.unique(units[has_lesion[fit]])
        groups = (with_lesion, np.setdiff1d(np.unique(units), with_lesion))
        keep = np.concatenate([g[real_rng.permutation(len(g))[:max(1, int(round(float(f) * len(g))))]]
                               for g in groups if len(g)])
        real_f = fit[np.isin(units, keep)]
        name = f"real_{round(100 * float(f))}pct"
        arms[name] = (real_f, empty)
        arms.update(with_synthetic(name, real_f))
    return arms


def arm_step_caps(lesion_slices: dict[str, int], cap: int, eval_every: int) -> dict[str, int]:
    """arm -> step cap: `cap` scaled by the arm's lesion slices over the `real` arm's, between 1 and
    MAX_CAP_SCALE, rounded up to whole evaluation intervals. Each step draws the same share of lesion
    slices, so this lets every arm show each of its lesion slices as often as the real arm can."""
    ref = max(int(lesion_slices["real"]), 1)
    caps = {}
    for arm, n in lesion_slices.items():
        scale = min(MAX_CAP_SCALE, max(1.0, int(n) / ref))
        caps[arm] = max(int(cap), int(math.ceil(scale * int(cap) / int(eval_every))) * int(eval_every))
    return caps


def _difference_pairs(arms) -> list[tuple[str, str]]:
    pairs = list(DIFFERENCES)
    for a in arms:
        if "_plus_synthetic" in a:
            base = a.split("_plus_synthetic")[0]
            if (a, base) not in pairs:
                pairs.append((a, base))
    return [(a, r) for a, r in pairs if a in arms and r in arms]


def _examples(test, preds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Up to N_EXAMPLES test lesion slices (largest lesions first) with real- and synthetic-trained
    predictions of the first seed."""
    area = test.masks.reshape(len(test), -1).sum(axis=1)
    lesion = np.flatnonzero(area > 0)
    if not len(lesion):
        return {}
    idx = np.sort(lesion[np.argsort(-area[lesion], kind="stable")[:N_EXAMPLES]])
    img = test.images[idx]
    out = {"images": (img[:, 0] if img.shape[1] == 1 else img.mean(axis=1)).astype(np.float32),
           "truth": test.masks[idx]}
    for arm in ("real", "synthetic"):
        if arm in preds:
            out[f"pred_{arm}"] = preds[arm][idx]
    return out


# ------------------------------------------------------------------------------------- training
_POOL: dict = {}  # per worker process: the training pools, validation and test images, sent once


def _init_worker(train_images, train_masks, synth_images, synth_masks, val_images, val_masks, test_images) -> None:
    import torch

    torch.set_num_threads(1)
    _POOL.update(train=(train_images, train_masks), synth=(synth_images, synth_masks),
                 val=(val_images, val_masks), test=test_images)


def _fit_predict(real_idx, synth_idx, settings, seed: int) -> tuple[np.ndarray, dict, float]:
    """One segmenter on the arm's slices, its predictions on the test images, its record and seconds."""
    t0 = time.perf_counter()
    (ti, tm), (si, sm), (vi, vm) = _POOL["train"], _POOL["synth"], _POOL["val"]
    images = np.concatenate([ti[real_idx], si[synth_idx]]).astype(np.float32, copy=False)
    masks = np.concatenate([tm[real_idx], sm[synth_idx]]).astype(bool, copy=False)
    net, record = train_segmenter(images, masks, settings, seed, vi, vm)
    record.pop("curve", None)
    return predict_masks(net, _POOL["test"]), record, time.perf_counter() - t0


def _train_all(pools: tuple, arms: dict, seeds: list[int], settings: dict, workers: int, finished,
               done: dict | None = None) -> None:
    """Every (arm, seed) segmenter with its arm's settings (`settings`: arm -> SegmenterSettings);
    `finished(arm, [(pred, record)] by seed, seconds)` as each arm completes. `done`: {(arm, seed
    index): (pred, record)} already available (not trained again).

    With `workers` > 1 the segmenters train in that many processes, one torch thread each (small
    convolutions gain little from intra-op threads); results do not depend on the number of workers."""
    done = done or {}
    jobs = [(arm, k, seed) for arm in arms for k, seed in enumerate(seeds) if (arm, k) not in done]
    workers = min(int(workers), len(jobs))
    results: dict[str, dict[int, tuple]] = {arm: {} for arm in arms}
    for (arm, k), (pred, record) in done.items():
        results[arm][k] = (pred, record, 0.0)

    def report(arm):
        out = [results[arm][k] for k in range(len(seeds))]
        finished(arm, [(p, r) for p, r, _ in out], sum(t for _, _, t in out))

    if workers <= 1:
        with one_torch_thread():
            _init_worker(*pools)
            try:
                for arm in arms:
                    for arm_, k, seed in jobs:
                        if arm_ == arm:
                            results[arm][k] = _fit_predict(*arms[arm], settings[arm], seed)
                    report(arm)
            finally:
                _POOL.clear()
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: forking a process whose OpenMP runtime is initialised can deadlock the child
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=pools)
    try:
        futures = {pool.submit(_fit_predict, *arms[arm], settings[arm], seed): (arm, k)
                   for arm, k, seed in jobs}
        for arm in arms:  # report arms in order, as soon as each is complete
            for fut, (a, k) in futures.items():
                if a == arm:
                    results[arm][k] = fut.result()
            report(arm)
    except BaseException:
        # Ctrl+C / SIGTERM (or a failed job): leaving the executor normally would first run every queued
        # segmenter (minutes); cancel those and stop the running ones (Python < 3.14 has no public call)
        running = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in running:
            proc.terminate()
        raise
    pool.shutdown()


def _reference_matches(reference, train, settings, seed: int) -> bool:
    """Whether a given reference segmenter was trained exactly as the real arm's first seed here."""
    if reference is None:
        return False
    info = reference.info
    return (info.get("settings") == settings.as_dict() and info.get("seed") == seed
            and info.get("data_digest") == data_digest(train.images, train.masks, train.subject))


# ------------------------------------------------------------------------------------------ main
def run_utility(train, synth, test, cfg, progress: Callable[[str], None] | None = None,
                arms: Sequence[str] | None = None, reference: Segmenter | None = None) -> dict:
    """Train every arm's segmenters and score them on `test`.

    `train`, `synth`, `test`: `runner.ImageSet`s with masks (train: real training slices, with subject ids
    when known; test: the held-out real slices). `cfg`: the diagnostics section. Returns {"arms",
    "differences", "verdict", "synthetic_has_lesions", "validation", "test", "settings", "seconds",
    "examples"} (examples: arrays for the report; the rest is plain JSON-able data). `arms` restricts
    the arms trained (default: all); an arm's numbers do not depend on which others run. `reference`:
    a `segmentation.Segmenter` (`reference_segmenter`) for the same training set and settings; when it
    matches, it is the `real` arm's first segmenter (not trained again).
    """
    for role, s in (("real training", train), ("synthetic", synth), ("real test", test)):
        if s.masks is None:
            raise UserError(f"{s.source.get('path', role)}: the {role} set has no lesion masks; utility trains "
                            "segmenters and needs image + mask data")
    if train.images.shape[1:] != test.images.shape[1:] or synth.images.shape[1:] != test.images.shape[1:]:
        raise UserError(f"utility: image shapes differ (real training {train.images.shape[1:]}, synthetic "
                        f"{synth.images.shape[1:]}, real test {test.images.shape[1:]}); use sets of one size")
    if not test.masks.any():
        raise UserError(f"{test.source.get('path', 'real test set')}: no lesions in the real test slices; "
                        "utility needs held-out lesions to score (choose another --real-split)")
    if not train.masks.any():
        raise UserError(f"{train.source.get('path', 'real training set')}: no lesions in the real training "
                        "slices; utility needs a real arm that has seen lesions")
    settings = settings_from_config(cfg)
    seeds = [int(cfg.seed) + s for s in range(int(cfg.utility_seeds))]
    fit, val = split_for_validation(train.masks, train.subject, settings, int(cfg.seed))
    has_lesion = train.masks.reshape(len(train), -1).any(axis=1)
    all_arms = arm_training_sets(fit, train.subject, has_lesion, len(synth), cfg, np.random.default_rng(int(cfg.seed)))
    unknown = sorted(set(arms or ()) - set(all_arms))
    if unknown:
        raise UserError(f"utility: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(all_arms)}")
    arms = {k: v for k, v in all_arms.items() if arms is None or k in arms}
    synth_lesion = synth.masks.reshape(len(synth), -1).any(axis=1)
    lesion_slices = {arm: int(has_lesion[r].sum() + synth_lesion[s].sum()) for arm, (r, s) in all_arms.items()}
    caps = arm_step_caps(lesion_slices, settings.max_steps, settings.eval_every)
    arm_settings = {arm: dataclasses.replace(settings, max_steps=caps[arm]) for arm in arms}

    # units of the test set: subjects when known, else slices
    if test.subject is not None:
        uniq, unit = np.unique(test.subject, return_inverse=True)
        unit_desc = f"subjects ({len(uniq)})"
    else:
        uniq, unit = np.arange(len(test)), np.arange(len(test))
        unit_desc = "slices (no subject ids)"

    done = {}
    if "real" in arms and _reference_matches(reference, train, settings, seeds[0]):
        done[("real", 0)] = (reference.predict(test.images), dict(reference.info["training"]))

    sums: dict[str, np.ndarray] = {}
    records: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    first_preds: dict[str, np.ndarray] = {}

    def finished(arm: str, out: list[tuple[np.ndarray, dict]], secs: float) -> None:
        first_preds[arm] = out[0][0]
        sums[arm] = np.stack([unit_sums(slice_counts(p, test.masks), unit) for p, _ in out])
        records[arm] = [r for _, r in out]
        seconds[arm] = secs
        if progress:
            d = [metrics_from_sums(s)["dice"] for s in sums[arm]]
            real_idx, synth_idx = arms[arm]
            progress(f"  utility {arm:<30} {len(real_idx):5d} real + {len(synth_idx):5d} synthetic slices, "
                     f"Dice {np.mean(d):.3f}, steps {'/'.join(str(r['steps']) for r in records[arm])} "
                     f"({secs:.1f} s of training)")

    pools = (train.images, train.masks, synth.images, synth.masks, train.images[val], train.masks[val], test.images)
    _train_all(pools, arms, seeds, arm_settings, int(cfg.utility_workers), finished, done)

    out_arms = {}
    for arm, (real_idx, synth_idx) in arms.items():
        recs = records[arm]
        rec = {"n_real": int(len(real_idx)), "n_synthetic": int(len(synth_idx)),
               "n_lesion_slices": lesion_slices[arm], "max_steps": caps[arm],
               "steps": [int(r["steps"]) for r in recs], "best_steps": [int(r["best_step"]) for r in recs],
               "val_dice": [None if r["val_dice"] is None else float(r["val_dice"]) for r in recs],
               "converged": all(bool(r["converged"]) for r in recs),
               "converged_seeds": [r["converged"] for r in recs]}
        for m in METRICS:
            rec[m] = _summary(metric_cells(sums[arm], m))
        out_arms[arm] = rec
    differences = {}
    for arm, ref in _difference_pairs(arms):
        differences[f"{arm} - {ref}"] = {  # same seeds, same test units: paired cells
            m: _summary(metric_cells(sums[arm], m) - metric_cells(sums[ref], m)) for m in METRICS}
    synth_has_lesions = bool(synth.masks.any())
    result = {
        "arms": out_arms, "differences": differences, "synthetic_has_lesions": synth_has_lesions,
        "validation": {"n_slices": int(len(val)), "n_lesion_slices": int(has_lesion[val].sum()),
                       "n_subjects": None if train.subject is None else int(len(np.unique(train.subject[val]))),
                       "n_fit_slices": int(len(fit))},
        "test": {"n_slices": len(test), "n_lesion_slices": int(test.masks.any(axis=(1, 2)).sum()),
                 "n_lesions": int(next(iter(sums.values()))[0, :, _COL["lesions"]].sum()),
                 "resampling_unit": unit_desc},
        "settings": {"seeds": seeds, "steps": int(cfg.utility_steps), "max_steps": int(cfg.utility_steps),
                     "max_cap_scale": MAX_CAP_SCALE,
                     "eval_every": settings.eval_every, "patience": settings.patience,
                     "val_fraction": settings.val_fraction, "batch_size": settings.batch_size,
                     "lr": settings.lr, "widths": list(settings.widths), "lesion_fraction": settings.lesion_fraction,
                     "synthetic_ratio": float(cfg.utility_synthetic_ratio),
                     "synthetic_ratios": [float(r) for r in cfg.utility_synthetic_ratios],
                     "real_fractions": [float(f) for f in cfg.utility_real_fractions],
                     "interval": "t, crossed subjects x seeds (two-way ANOVA, Satterthwaite df)",
                     "reference_reused": bool(done), "image_size": list(test.images.shape[2:])},
        "seconds": seconds,
    }
    result["verdict"] = verdict(result)
    result["examples"] = _examples(test, first_preds)
    return result


# --------------------------------------------------------------------------------------- verdict
def _f2(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _change(d: dict | None) -> str:
    return "n/a" if d is None else f"{_f2(d['value'])} (95% CI {_f2(d['ci_low'])} to {_f2(d['ci_high'])})"


def verdict(result: dict) -> str:
    """What the synthetic set did to Dice on held-out real subjects, in a sentence or two."""
    arms, diffs = result["arms"], result["differences"]

    def dice(arm):
        return arms[arm]["dice"]["value"] if arm in arms else None

    real, syn, both = dice("real"), dice("synthetic"), dice("real_plus_synthetic")
    gain = diffs.get("real_plus_synthetic - real", {}).get("dice")
    scarce = [(ref, d["dice"]) for key, d in diffs.items() for arm, ref in [key.split(" - ")]
              if ref.endswith("pct") and arm == f"{ref}_plus_synthetic"]
    extra = "".join(f"; with {ref.removeprefix('real_').removesuffix('pct')}% of the real subjects it changed "
                    f"Dice by {_change(d)}" for ref, d in scarce)
    cap = result.get("settings", {}).get("max_steps")
    capped = [f"{a} ({r.get('max_steps', cap)} steps)" for a, r in arms.items() if not r.get("converged", True)]
    note = f" (not converged within its step cap: {', '.join(capped)})" if capped else ""
    if not result["synthetic_has_lesions"]:
        change = "" if gain is None else f" and adding it to the real data changed Dice by {_change(gain)}"
        return (f"The synthetic set carries no lesions, so it cannot teach a segmenter to find them: trained on "
                f"it alone a segmenter reached Dice {_f2(syn)} on held-out real subjects (real-trained "
                f"{_f2(real)}){change}{extra}.{note}")
    alone = f"trained on synthetic alone a segmenter reached {_f2(syn)} on held-out real subjects"
    if gain is None:
        return f"Real-trained Dice {_f2(real)}; {alone}{extra}.{note}"
    g, lo, hi = gain["value"] or 0.0, gain["ci_low"], gain["ci_high"]
    unsure = "" if lo is None or hi is None or lo > 0 or hi < 0 else ", a change the CI does not tell from none"
    return (f"Synthetic data {'added' if g >= 0 else 'cost'} {abs(g):.2f} Dice (95% CI {_f2(lo)} to {_f2(hi)})"
            f"{unsure}: real-trained {_f2(real)}, real + synthetic {_f2(both)}; {alone}{extra}.{note}")


# ------------------------------------------------------------------------------------ flat views
def metric_records(result: dict) -> dict[str, dict]:
    """Flat `utility_<metric>_<arm>` and `utility_<metric>_gain` / `_synthetic_minus_real` records (value,
    CI, seeds) for cross-experiment tables; a trained score has no real-vs-real null, so these stay out
    of diagnostics.json's `metrics` and severity."""
    out = {}
    for arm, rec in result["arms"].items():
        for m in METRICS:
            out[f"utility_{m}_{arm}"] = dict(rec[m], real=None, synthetic=None)
    names = {"real_plus_synthetic - real": "gain", "synthetic - real": "synthetic_minus_real"}
    for key, diff in result["differences"].items():
        suffix = names.get(key, key.replace(" - ", "_minus_"))
        for m in METRICS:
            out[f"utility_{m}_{suffix}"] = dict(diff[m], real=None, synthetic=None)
    return out


def csv_rows(result: dict) -> list[dict]:
    """One row per (arm or difference, metric); arm rows carry the steps each seed used and convergence."""
    rows = []
    for kind, table in (("arm", result["arms"]), ("difference", result["differences"])):
        for name, rec in table.items():
            for m in METRICS:
                r = rec[m]
                rows.append({"kind": kind, "arm": name, "metric": m, "value": r["value"], "ci_low": r["ci_low"],
                             "ci_high": r["ci_high"],
                             "seeds": ";".join("" if v is None else f"{v:.6g}" for v in r["seeds"]),
                             "n_real": rec.get("n_real"), "n_synthetic": rec.get("n_synthetic"),
                             "steps": ";".join(str(s) for s in rec.get("steps", [])),
                             "converged": rec.get("converged")})
    return rows
