"""The real-vs-real null and the bootstrap CIs describe the comparison actually made (issue 8).

A population of real-like slices with subject effects: pseudo-subjects built from the demo cache's
central slices (each slice used once), each subject with its own intensity gain and noise level (so
slices of one subject are correlated). 'Real' sets are 12 random subjects, 'synthetic' sets one slice
from each other subject (independent slices), disjoint random parts of that one population, so every
difference between them is sampling noise (disjoint random parts of a finite population differ as
independent samples do; a slice shared by both sides would not). Features are computed
once for the whole population; a stand-in family looks them up by index, so `run_family` is
exercised as in a real run without recomputing anything.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from jsddpm.config import load_config
from jsddpm.diagnostics import intensity, spectral, texture, wavelet
from jsddpm.diagnostics.runner import run_family
from jsddpm.diagnostics.sets import ImageSet

PER_SUBJECT, REAL_SUBJECTS = 5, 12  # 60 real slices in 12 subjects vs one slice of every other subject
HEADLINES = {spectral: ("spectral_slope_diff", "hf_ratio_diff"), wavelet: ("wavelet_hh_l1_ratio",),
             texture: ("texture_ks_mean", "gradient_ratio"), intensity: ("wasserstein_all",)}
DISTANCES = ("spectral_slope_diff", "texture_ks_mean", "wasserstein_all")  # biased upwards at small sizes


@pytest.fixture(scope="module")
def population(demo_cache):
    from jsddpm.data.cache import load_cache

    cache = load_cache(demo_cache)
    central = np.flatnonzero((cache.index["zbin"] >= 2) & (cache.index["zbin"] <= 7))  # slices with brain in them
    rng = np.random.default_rng(0)
    n_subjects = len(central) // PER_SUBJECT
    x = np.asarray(cache.images[rng.permutation(central)[: n_subjects * PER_SUBJECT]], dtype=np.float32)
    gain = np.repeat(rng.normal(1.0, 0.15, n_subjects), PER_SUBJECT)[:, None, None, None]
    noise = np.repeat(rng.uniform(0.0, 0.08, n_subjects), PER_SUBJECT)[:, None, None, None]
    jitter = noise * rng.standard_normal(x.shape).astype(np.float32)
    x = np.where(x > -0.99, np.clip((x + 1) * gain - 1 + jitter, -1, 1), x).astype(np.float32)
    cfg = load_config(None, []).diagnostics
    return {f: f.features(x, None, cfg) for f in HEADLINES}


def _lookup(family, feats):
    """A family whose 'images' are population indices: features by lookup, the real compare."""
    return SimpleNamespace(NAME=family.NAME, NEEDS_MASK=False, compare=family.compare,
                           features=lambda images, masks, cfg: feats.take(images[:, 0, 0, 0].astype(np.int64)))


def _draws(n_draws: int, n_subjects: int):
    """(real ImageSet: whole subjects, synthetic ImageSet: one slice from each other subject)."""
    for d in range(n_draws):
        rng = np.random.default_rng(100 + d)
        subjects = rng.permutation(n_subjects)
        real_subjects, synth_subjects = subjects[:REAL_SUBJECTS], subjects[REAL_SUBJECTS:]
        real_idx = (real_subjects[:, None] * PER_SUBJECT + np.arange(PER_SUBJECT)).ravel()
        synth_idx = synth_subjects * PER_SUBJECT + rng.integers(0, PER_SUBJECT, len(synth_subjects))
        yield (ImageSet(_as_images(real_idx), subject=np.repeat(real_subjects, PER_SUBJECT)),
               ImageSet(_as_images(synth_idx)))


def _as_images(idx: np.ndarray) -> np.ndarray:
    return idx.astype(np.float32).reshape(-1, 1, 1, 1)


def _runs(population, n_draws: int, *overrides) -> dict[str, list[dict]]:
    cfg = load_config(None, list(overrides)).diagnostics
    out: dict[str, list[dict]] = {}
    n_subjects = next(iter(population.values())).n // PER_SUBJECT
    for d, (real, synth) in enumerate(_draws(n_draws, n_subjects)):
        for family, names in HEADLINES.items():
            res = run_family(_lookup(family, population[family]), real, synth, cfg, seed=d)
            for name in names:
                out.setdefault(name, []).append(res["metrics"][name])
    return out


def test_null_matches_the_spread_and_bias_of_the_statistic_at_the_compared_sizes(population):
    runs = _runs(population, 100, "diagnostics.n_bootstrap=1", "diagnostics.n_null_repeats=16")
    ratios = {}
    for name, recs in runs.items():
        values = np.array([r["value"] for r in recs])
        ratios[f"{name} sd"] = np.mean([r["null_sd"] for r in recs]) / values.std(ddof=1)
        if name in DISTANCES:
            ratios[f"{name} mean"] = np.mean([r["null_mean"] for r in recs]) / values.mean()
    # halves of the real set (the earlier null) gave SDs up to 1.9x and distance means up to 1.5x
    assert all(0.75 <= r <= 1.25 for r in ratios.values()), ratios


def test_ci_brackets_the_value_and_covers_its_expectation_for_a_perfect_generator(population):
    runs = _runs(population, 25, "diagnostics.n_bootstrap=40", "diagnostics.n_null_repeats=2")
    inside, covers = {}, {}
    for name in DISTANCES + ("wavelet_hh_l1_ratio",):
        recs = runs[name]
        inside[name] = np.mean([r["ci_low"] <= r["value"] <= r["ci_high"] for r in recs])
        expected = np.mean([r["value"] for r in recs])  # the statistic's mean at these sizes
        covers[name] = np.mean([r["ci_low"] <= expected <= r["ci_high"] for r in recs])
    # percentile CIs: texture_ks_mean of a perfect generator fell outside its own CI in about half the runs
    assert all(v >= 0.9 for v in inside.values()), inside
    assert all(v >= 0.8 for v in covers.values()), covers
