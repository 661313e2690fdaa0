"""Family 10: rank statistics, dithering, folds, and the CNN's AUC on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from jsddpm.config import load_config
from jsddpm.diagnostics import classifier as C


def test_rank_auc_known_answers_and_agreement_with_sklearn():
    from sklearn.metrics import roc_auc_score

    y = np.array([0, 0, 0, 1, 1], dtype=bool)
    assert C.rank_auc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == 1.0
    assert C.rank_auc(np.array([0.9, 0.8, 0.7, 0.1, 0.2]), y) == 0.0
    assert C.rank_auc(np.ones(5), y) == 0.5  # ties count half
    rng = np.random.default_rng(0)
    s, lab = rng.normal(size=300).round(1), rng.random(300) < 0.4  # rounding makes ties
    assert C.rank_auc(s, lab) == pytest.approx(roc_auc_score(lab, s))


def test_bootstrap_and_permutation_are_calibrated():
    rng = np.random.default_rng(1)
    lab = np.r_[np.zeros(200), np.ones(200)].astype(bool)
    separable = np.r_[rng.normal(0, 1, 200), rng.normal(5, 1, 200)]
    assert C.permutation_pvalue(separable, lab, 500, rng) == pytest.approx(1 / 501)
    noise = rng.normal(size=400)
    p_values = [C.permutation_pvalue(rng.normal(size=400), lab, 200, rng) for _ in range(20)]
    assert 0.2 < np.mean(p_values) < 0.8  # uniform under the null
    boots = C.bootstrap_auc(noise, lab, 400, rng)
    assert np.std(boots) == pytest.approx(C.null_auc_sd(200, 200), rel=0.25)
    assert np.percentile(boots, 2.5) < C.rank_auc(noise, lab) < np.percentile(boots, 97.5)


def test_dithering_hides_the_grid_without_piling_mass_at_the_edges():
    rng = np.random.default_rng(2)
    step = 2 / 255
    on_grid = (rng.integers(0, 256, size=(20, 32, 32)) * step - 1).astype(np.float32)
    steps, offsets = C.image_grids(on_grid)
    assert steps == pytest.approx(step, rel=1e-4)
    d = C.quantise_and_dither(on_grid, step, rng)
    assert d.min() >= -1 and d.max() <= 1
    assert np.mean(np.abs(d) == 1) < 1e-4  # reflection, not clipping: no atom at +-1
    assert np.abs(d - on_grid).max() <= step / 2 + 1e-6
    # background (-1) spreads uniformly over its grid cell inside [-1, 1], i.e. [-1, -1 + step/2]
    bg = C.quantise_and_dither(np.full(20000, -1.0), step, rng)
    assert bg.max() <= -1 + step / 2 + 1e-7 and np.mean(bg == -1) < 1e-3
    assert np.mean(bg < -1 + step / 4) == pytest.approx(0.5, abs=0.03)
    continuous = rng.uniform(-1, 1, (4, 64, 64)).astype(np.float32)
    assert (C.image_grids(continuous)[0] == 0).all()  # no grid: nothing to dither


def test_dithering_finds_each_subjects_own_grid():
    """Integer scanner data normalised per volume: every subject has its own step and offset. A single
    global grid anchored at -1 found none of them (dithering silently off); per-image grids find all."""
    rng = np.random.default_rng(5)
    images, truth = [], []
    for _subject in range(6):
        lo, hi = rng.uniform(3, 40), rng.uniform(300, 900)  # per-volume percentiles (not integers)
        raw = rng.integers(0, 1000, size=(4, 32, 32)).astype(np.float64)
        x = np.clip(-1 + 2 * (raw - lo) / (hi - lo), -1, 1)
        x[:, :4] = -1.0  # background
        images.append(x.astype(np.float32))
        truth += [2 / (hi - lo)] * 4
    images = np.concatenate(images)
    steps, offsets = C.image_grids(images)
    assert steps == pytest.approx(np.array(truth), rel=1e-3)
    # quantising each image to its own grid moves interior values by float error only
    q = C.quantise_and_dither(images, steps, np.random.default_rng(0), offsets)
    interior = (images > -1) & (images < 1)
    assert np.abs(q - images)[interior].max() <= np.max(steps) / 2 + 1e-6
    r_step, _, s_step, _, note = C.dither_grids(images, 10, 0.0, rng)
    assert (r_step > 0).all() and (s_step > 0).all() and set(s_step) <= set(r_step)
    assert note.startswith("24 of 24 real images sit on an intensity grid")
    *_, note = C.dither_grids(rng.uniform(-1, 1, (5, 16, 16)).astype(np.float32), 5, 0.0, rng)
    assert "none of the 5 real images" in note and "resampled" in note


def test_folds_keep_groups_whole():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(12), rng.integers(3, 9, 12))
    fold = C.assign_folds(groups, len(groups), 4, rng)
    assert all(len(np.unique(fold[groups == g])) == 1 for g in np.unique(groups))
    assert set(fold) == {0, 1, 2, 3}


def _demo_images(demo_cache):
    from jsddpm.data.cache import load_cache

    c = load_cache(demo_cache)
    return c.joint(np.arange(len(c)))


def test_cnn_auc_chance_on_real_halves_and_near_one_on_a_checkerboard_fingerprint(demo_cache):
    cfg = load_config(None, ["diagnostics.classifier_epochs=6", "diagnostics.classifier_folds=3",
                             "diagnostics.n_bootstrap=100", "diagnostics.classifier_permutations=200"]).diagnostics
    x = _demo_images(demo_cache)
    perm = np.random.default_rng(0).permutation(len(x))[:240]
    real, other = x[perm[:120]], x[perm[120:]]
    scores, labels, _ = C.out_of_fold_scores(real, other, cfg)
    assert 0.35 <= C.rank_auc(scores, labels) <= 0.65
    checker = (np.indices(x.shape[-2:]).sum(axis=0) % 2 * 2 - 1) * 0.05
    marked = other.copy()
    marked[:, 0] = np.clip(marked[:, 0] + checker, -1, 1)
    res = C.classifier_metrics(real, marked, cfg, image_channels=1)
    auc = res["metrics"]["classifier_auc"]
    assert auc["value"] > 0.95 and auc["p_value"] < 0.01
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert auc["null_mean"] == 0.5 and auc["null_sd"] == pytest.approx(C.null_auc_sd(120, 120))
    assert "classifier_auc_dithered" in res["metrics"]


def test_repeats_average_seeds_on_shared_folds_and_dithering_is_paired(demo_cache):
    base = ["diagnostics.classifier_epochs=2", "diagnostics.classifier_folds=2", "diagnostics.n_bootstrap=20",
            "diagnostics.classifier_permutations=20"]
    x = _demo_images(demo_cache)[:, :1, ::2, ::2]
    perm = np.random.default_rng(1).permutation(len(x))[:80]
    real, synth = x[perm[:40]], x[perm[40:]] + 0.02
    one = load_config(None, base).diagnostics
    three = load_config(None, [*base, "diagnostics.classifier_repeats=3"]).diagnostics
    s1, labels, fold1, aucs1 = C.repeated_scores(real, synth, one)
    s3, _, fold3, aucs3 = C.repeated_scores(real, synth, three)
    np.testing.assert_array_equal(fold1, fold3)  # the first seed fixes the folds for every repeat
    assert len(aucs1) == 1 and len(aucs3) == 3 and aucs3[0] == aucs1[0] == C.rank_auc(s1, labels)
    assert len(set(aucs3)) > 1  # other seeds really train other networks
    # combined scores are mean normalised ranks: in (0, 1], and their AUC is that of the ensemble
    assert 0 < s3.min() and s3.max() <= 1 and np.isfinite(C.rank_auc(s3, labels))
    # without a grid to hide (step 0 = no dithering) the dithered run is the plain run, seed for seed
    no_dither = load_config(None, [*base, "diagnostics.classifier_dither_step=-1"]).diagnostics
    res = C.classifier_metrics(real, synth, no_dither, image_channels=1)["metrics"]
    assert res["classifier_auc"]["value"] == res["classifier_auc_dithered"]["value"]


class _AllOnce:
    """A stand-in generator whose 'resample' draws every cluster exactly once."""

    def multinomial(self, k, p, size):
        return np.ones((size, k), dtype=np.int64)


def test_cluster_bootstrap_is_exact_without_resampling_and_widens_with_subject_effects():
    rng = np.random.default_rng(4)
    lab = np.r_[np.zeros(120), np.ones(90)].astype(bool)
    scores = rng.normal(size=210).round(1)  # ties
    groups = np.r_[np.repeat(np.arange(12), 10), 100 + np.arange(90)]
    assert C.cluster_bootstrap_auc(scores, lab, groups, 3, _AllOnce()) == pytest.approx(C.rank_auc(scores, lab))
    # one image per cluster: the spread of the slice bootstrap (Mann-Whitney SD)
    singles = C.cluster_bootstrap_auc(scores, lab, np.arange(210), 800, rng)
    assert np.std(singles) == pytest.approx(C.null_auc_sd(90, 120), rel=0.2)
    # real slices sharing a subject effect: the subject bootstrap sees the spread the slice bootstrap hides
    clustered = scores + np.r_[np.repeat(rng.normal(0, 1.5, 12), 10), np.zeros(90)]
    by_subject = C.cluster_bootstrap_auc(clustered, lab, groups, 800, rng)
    by_slice = C.bootstrap_auc(clustered, lab, 800, rng)
    assert np.std(by_subject) > 1.5 * np.std(by_slice)  # 1.9x measured
    clusters, unit = C.auc_clusters(np.repeat(["a", "b", "c"], 2), 6, None, 4)
    assert clusters.tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 5, 6] and unit == "subjects (3 real) and images (4 synthetic)"


def test_cnn_tells_tiles_permuted_within_the_brain_from_real_with_a_subject_ci(demo_cache):
    """Anatomy destroyed, local statistics kept (structure.permute_tiles on 5 other subjects): AUC ~1 with a
    tight subject-bootstrap CI; the same 5 subjects unshuffled: a CI that holds 0.5."""
    from jsddpm.data.cache import load_cache
    from jsddpm.diagnostics import structure
    from jsddpm.diagnostics.regions import tissues

    cfg = load_config(None, ["diagnostics.classifier_epochs=8", "diagnostics.classifier_folds=3",
                             "diagnostics.n_bootstrap=200", "diagnostics.classifier_permutations=200"]).diagnostics
    cache = load_cache(demo_cache)
    x = cache.joint(np.arange(len(cache)))
    subject = np.asarray(cache.index["subject_id"])
    brain = (x[:, 0] > -0.9).mean(axis=(1, 2)) > 0.05
    x, subject = x[brain], subject[brain]
    first = np.isin(subject, np.unique(subject)[::2])
    real, other = x[first], x[~first]
    shuffled = other.copy()
    t = tissues(other[:, :1], other[:, 1] > 0, cfg)
    shuffled[:, 0] = structure.permute_tiles(t["gray"], t["roi"], 4, np.random.default_rng(0))
    res = C.classifier_metrics(real, shuffled, cfg, subject[first], subject[~first], image_channels=1)["metrics"]
    auc = res["classifier_auc"]
    assert auc["value"] > 0.95 and auc["ci_low"] > 0.9, auc
    assert auc["ci_unit"] == "subjects (5 real) and subjects (5 synthetic)"
    scores, labels, fold = C.out_of_fold_scores(real, other, cfg, subject[first], subject[~first], 0, 1)
    clusters, _ = C.auc_clusters(subject[first], len(real), subject[~first], len(other))
    boots = C.cluster_bootstrap_auc(scores, labels, clusters, 200, np.random.default_rng(0))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    assert lo < 0.5 < hi
