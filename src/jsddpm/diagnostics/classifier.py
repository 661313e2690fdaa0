"""Family 10: can a small CNN tell real from synthetic images? (pure torch on arrays)

Protocol
- k-fold cross-fitting: every image is scored exactly once, by the model trained on the other folds;
  folds keep subjects whole (real subjects, and synthetic "subjects" when given), so no subject is on
  both sides of a split. No threshold is chosen: the result is the rank-based AUC of the pooled
  out-of-fold scores (synthetic = positive class), with a one-sided rank permutation p-value and a
  cluster-bootstrap CI: real subjects resampled whole, synthetic images one by one (a generator's
  samples are independent; a synthetic set with subject ids is resampled by subject). The p-value and
  the analytic null (AUC 0.5 with the Mann-Whitney SD sqrt((n0 + n1 + 1) / (12 n0 n1))) treat images
  as independent, which slices of one subject are not: read the CI. Subject-grouped folds with few
  real subjects can anti-learn (out-of-fold AUC below 0.5: the network memorises the training fold's
  real subjects and calls every new subject synthetic), so an AUC from a handful of subjects is a weak
  statement either way; the contrast augmentation below keeps that in check (benchmarks/structure_bench.py).
- Training (measured on the demo cohort, benchmarks/structure_bench.py): `classifier_epochs` epochs
  under a one-cycle learning-rate schedule (a constant rate at the same budget left single networks at
  AUC 0.74-0.85 on a synthetic set they separate perfectly once converged), random left-right flips and
  a +-CONTRAST_JITTER gain on the image channels of both sets, and each image scored as the mean of
  itself and its mirror. Known answer: tiles permuted within the brain (structure.permute_tiles; anatomy
  gone, local statistics kept) score AUC ~1, real vs real ~0.5.
- Speed: the network trains on random full-resolution crops (`classifier_crop`, default 64 px) and
  scores whole images (it is fully convolutional with global average pooling). Crops rather than
  downsampling, because downsampling would average away exactly the pixel-level fingerprints
  (quantisation, checkerboards) the classifier is there to find.
- Dithering: real images come from integer scanners, so they sit on an intensity grid; synthetic
  images are continuous, which a CNN can learn instead of anatomy. Each volume is normalised with its
  own percentiles, so the grid's step and offset differ per subject: the grid is estimated per real
  image, and each synthetic image is given the grid of a randomly drawn real image.
  `classifier_auc_dithered` passes BOTH sets through that channel: quantise to the grid, add uniform
  noise within one step, and reflect values that leave [-1, 1] back inside (reflection keeps the
  density flat at the edges, where clipping would pile mass on -1 and 1). The output's note says how
  many real images sit on a grid; with none (interpolated or float data) there is nothing to dither.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from ..errors import UserError
from ..segmentation import one_torch_thread
from .common import metric

NAME = "classifier"
CONTRAST_JITTER = 0.2  # training augmentation: image-channel gain 1 +- this (see _augment)


# ------------------------------------------------------------------------------ rank statistics
def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC = P(score of a positive > score of a negative) + ties / 2, from average ranks."""
    labels = np.asarray(labels, dtype=bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """AUCs of `n_boot` stratified resamples (positives and negatives resampled separately), vectorised."""
    labels = np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    n1, n0 = len(pos), len(neg)
    s = np.concatenate([pos[rng.integers(0, n1, (n_boot, n1))], neg[rng.integers(0, n0, (n_boot, n0))]], axis=1)
    ranks = rankdata(s, axis=1)
    return (ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def cluster_bootstrap_auc(scores: np.ndarray, labels: np.ndarray, clusters: np.ndarray, n_boot: int,
                          rng: np.random.Generator) -> np.ndarray:
    """AUCs of `n_boot` cluster-bootstrap resamples: within each class, whole clusters (subjects) drawn
    with replacement, each image weighted by how often its cluster was drawn. Slices of one subject are
    correlated, so resampling them one by one understates the AUC's spread; with one image per cluster
    this is `bootstrap_auc`.

    Weighted Mann-Whitney: a positive's weight times the weight of the negatives scored below it (ties
    half), over the product of the classes' total weights; scores are ranked once for all resamples."""
    labels = np.asarray(labels, dtype=bool)
    _, level = np.unique(scores, return_inverse=True)  # tie groups, in score order
    n_levels = int(level.max()) + 1 if len(level) else 0

    def weights(cls: np.ndarray) -> np.ndarray:  # (n_boot, n_cls): draws of each image's cluster
        _, inverse = np.unique(clusters[cls], return_inverse=True)
        k = int(inverse.max()) + 1
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot)
        return counts[:, inverse].astype(np.float64)

    w_pos, w_neg = weights(labels), weights(~labels)
    neg_at = np.zeros((n_boot, n_levels))  # negative weight at each tie group
    for j, lev in enumerate(level[~labels]):
        neg_at[:, lev] += w_neg[:, j]
    below = np.cumsum(neg_at, axis=1) - neg_at  # strictly below each tie group
    pos_level = level[labels]
    wins = (w_pos * (below[:, pos_level] + 0.5 * neg_at[:, pos_level])).sum(axis=1)
    return wins / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


def auc_clusters(real_groups, n_real: int, synth_groups, n_synth: int) -> tuple[np.ndarray, str]:
    """Cluster id of each image (real first, then synthetic) for the AUC's CI, and its description: real
    subjects when known, else single images; synthetic images each their own cluster (a generator's samples
    are independent draws) unless the synthetic set carries subject ids."""
    def ids(groups, n):
        return np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]

    real_ids, synth_ids = ids(real_groups, n_real), ids(synth_groups, n_synth)
    unit = (f"{'subjects' if real_groups is not None else 'images'} ({int(real_ids.max()) + 1} real) and "
            f"{'subjects' if synth_groups is not None else 'images'} ({int(synth_ids.max()) + 1} synthetic)")
    return np.concatenate([real_ids, synth_ids + real_ids.max() + 1]), unit


def permutation_pvalue(scores: np.ndarray, labels: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """One-sided p-value of AUC > 0.5: ranks once, then random label sets (argsort of uniforms)."""
    labels = np.asarray(labels, dtype=bool)
    n, n1 = len(labels), int(labels.sum())
    n0 = n - n1
    ranks = rankdata(scores)
    observed = (ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    positives = np.argsort(rng.random((n_perm, n)), axis=1)[:, :n1]
    perm = (ranks[positives].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return float((1 + np.sum(perm >= observed - 1e-12)) / (1 + n_perm))


def null_auc_sd(n1: int, n0: int) -> float:
    """SD of the AUC of an uninformative score (Mann-Whitney U / (n1 n0), no ties)."""
    return math.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0))


# ---------------------------------------------------------------------------------- dithering
MIN_GRID_STEP = 2e-5  # finer than this (> 100,000 levels over [-1, 1]) is float resolution, not a scanner grid


def image_grid(image: np.ndarray, tol: float = 0.05) -> tuple[float, float]:
    """(step, offset) of the intensity grid offset + k * step one image sits on, or (0, 0) if none.

    Each volume is normalised with its own percentiles, so integer scanner values land on a grid
    whose step and offset differ per subject. Values at exactly -1 / +1 (background and clipped
    voxels) are left out: they are atoms of the normalisation, not grid points. No grid: continuous
    data (e.g. resampled with interpolation), or a step below MIN_GRID_STEP (float resolution)."""
    vals = np.unique(np.asarray(image, dtype=np.float64))
    vals = vals[(vals > -1 + 1e-6) & (vals < 1 - 1e-6)]
    if len(vals) < 3:
        return 0.0, 0.0
    gaps = np.diff(vals)
    step = float(gaps.min())
    if step < MIN_GRID_STEP:
        return 0.0, 0.0
    k = (vals - vals[0]) / step
    if np.mean(np.abs(k - np.round(k)) < tol) < 0.99:
        return 0.0, 0.0
    return step, float(vals[0] % step)


def image_grids(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (steps, offsets) of (N, H, W) images; step 0 where an image has no grid."""
    grids = np.array([image_grid(img) for img in images], dtype=np.float64).reshape(-1, 2)
    return grids[:, 0], grids[:, 1]


def quantise_and_dither(x: np.ndarray, step, rng: np.random.Generator, offset=-1.0) -> np.ndarray:
    """Round to the grid offset + k * step, add U(-step/2, step/2), reflect back into [-1, 1].

    `step` / `offset` are scalars or per-image arrays (broadcast over the trailing axes); images
    with step 0 are returned unchanged."""
    x64 = x.astype(np.float64)
    shape = (-1,) + (1,) * (x.ndim - 1)
    step = np.asarray(step, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    if step.ndim:
        step, offset = step.reshape(shape), np.broadcast_to(offset, step.shape).reshape(shape)
    on = step > 0
    safe = np.where(on, step, 1.0)
    q = np.round((x64 - offset) / safe) * safe + offset
    d = q + rng.uniform(-0.5, 0.5, size=x.shape) * safe
    d = np.where(d > 1.0, 2.0 - d, d)
    d = np.where(d < -1.0, -2.0 - d, d)
    return np.where(on, d, x64).astype(np.float32)


def dither_grids(real_images: np.ndarray, n_synth: int, fixed_step: float, rng: np.random.Generator):
    """Grids for both sets: (real steps, real offsets, synth steps, synth offsets, note).

    Real images keep their own grid. Each synthetic image gets the grid of a randomly drawn real image,
    so the synthetic set passes through the same quantisation channel as the real mixture of subjects.
    `fixed_step` > 0: one grid anchored at -1 for every image; < 0: no dithering."""
    n_real = len(real_images)
    if fixed_step < 0:
        z_r, z_s = np.zeros(n_real), np.zeros(n_synth)
        return z_r, z_r, z_s, z_s, "dithering disabled (diagnostics.classifier_dither_step < 0)"
    if fixed_step > 0:
        return (np.full(n_real, fixed_step), np.full(n_real, -1.0), np.full(n_synth, fixed_step),
                np.full(n_synth, -1.0), f"fixed grid step {fixed_step:g} (diagnostics.classifier_dither_step)")
    steps, offsets = image_grids(real_images)
    on = int((steps > 0).sum())
    pick = rng.integers(0, n_real, size=n_synth)
    if on == 0:
        note = (f"none of the {n_real} real images sits on an intensity grid (continuous values, e.g. "
                "resampled with interpolation or stored as floats): nothing to dither")
    else:
        note = (f"{on} of {n_real} real images sit on an intensity grid (per-image steps "
                f"{np.min(steps[steps > 0]):.3g}-{np.max(steps):.3g}); each synthetic image was given "
                "the grid of a randomly drawn real image")
    return steps, offsets, steps[pick], offsets[pick], note


# -------------------------------------------------------------------------------------- folds
def assign_folds(groups: np.ndarray | None, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each sample; whole groups go to one fold, greedily balancing fold sizes."""
    if groups is None:
        return rng.permutation(n) % k
    uniq, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse)
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    load = np.zeros(k)
    for g in rng.permutation(len(uniq)):
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += sizes[g]
    return fold_of_group[inverse]


def _n_groups(groups: np.ndarray | None, n: int) -> int:
    return n if groups is None else len(np.unique(groups))


# ------------------------------------------------------------------------------------ network
def _build_net(in_channels: int):
    import torch.nn as nn

    widths = (16, 32, 64, 64)
    layers, c = [], in_channels
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.SiLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1))


def _random_crops(x, crop: int, gen):
    import torch

    n, _, h, w = x.shape
    if crop <= 0 or (crop >= h and crop >= w):
        return x
    ch, cw = min(crop, h), min(crop, w)
    # even offsets: a crop keeps the pixel phase of the stride-2 layers that whole images are scored with
    top = 2 * torch.randint(0, (h - ch) // 2 + 1, (n,), generator=gen)
    left = 2 * torch.randint(0, (w - cw) // 2 + 1, (n,), generator=gen)
    return torch.stack([x[i, :, t:t + ch, l:l + cw] for i, (t, l) in enumerate(zip(top.tolist(), left.tolist()))])


def _augment(x, image_channels: int, gen):
    """Left-right flips (anatomy is mirror-symmetric, so a flip never creates a difference) and a random
    contrast gain on the image channels, (x + 1) * a - 1 with a in 1 +- CONTRAST_JITTER (the background stays
    at -1). Both sets get the same augmentation. Without the gain the network memorises the few real
    subjects' contrasts and scores every held-out real subject as synthetic (out-of-fold AUC of real vs
    real 0.36-0.42 on the demo's 8 test subjects; 0.47-0.51 with it)."""
    import torch

    n = len(x)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 1 + (2 * torch.rand(n, generator=gen) - 1)[:, None, None, None] * CONTRAST_JITTER
    img = ((x[:, :image_channels] + 1) * gain - 1).clamp(-1, 1)
    return torch.cat([img, x[:, image_channels:]], dim=1)


def _fit_and_score(x_train, y_train, x_test, cfg, seed: int, image_channels: int | None = None) -> np.ndarray:
    """Train on (x_train, y_train) and score x_test (the mean logit of each image and its mirror)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c_img = x_train.shape[1] if image_channels is None else image_channels
    net = _build_net(x_train.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.classifier_lr))
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.float32))
    n_pos = float(yt.sum())
    pos_weight = torch.tensor((len(yt) - n_pos) / max(n_pos, 1.0))  # balance unequal set sizes
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    bs = min(int(cfg.classifier_batch_size), max(8, len(xt) // 8))  # >= 8 steps per epoch on small sets
    epochs = int(cfg.classifier_epochs)
    steps_per_epoch = (len(xt) + bs - 1) // bs
    # one-cycle schedule: warm up, then anneal to ~0; at the same epochs a constant rate left the networks
    # short of converged (demo synthetic set: single-network AUC 0.74-0.85 constant, 1.00 one-cycle)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(cfg.classifier_lr),
                                                total_steps=max(epochs * steps_per_epoch, 1))
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), bs):
            idx = order[start:start + bs]
            xb = _augment(_random_crops(xt[idx], int(cfg.classifier_crop), gen), c_img, gen)
            loss = loss_fn(net(xb).squeeze(1), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        xs = torch.from_numpy(x_test)
        return torch.cat([(net(xb) + net(xb.flip(-1))).squeeze(1) / 2
                          for xb in (xs[i:i + 128] for i in range(0, len(xs), 128))]).numpy()


def out_of_fold_scores(real: np.ndarray, synth: np.ndarray, cfg, real_groups=None, synth_groups=None,
                       seed: int = 0, image_channels: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, labels, fold) with every image scored by the model that never saw its fold."""
    rng = np.random.default_rng(seed)
    k = min(int(cfg.classifier_folds), _n_groups(real_groups, len(real)), _n_groups(synth_groups, len(synth)))
    if k < 2:
        raise UserError("classifier: needs at least 2 real and 2 synthetic subjects for k-fold "
                        "evaluation; give more subjects or skip the family (--skip classifier)")
    # real and synthetic are folded separately so each fold holds ~1/k of each class
    fold = np.concatenate([assign_folds(real_groups, len(real), k, rng),
                           assign_folds(synth_groups, len(synth), k, rng)])
    labels = np.concatenate([np.zeros(len(real), bool), np.ones(len(synth), bool)])
    return scores_on_folds(real, synth, fold, cfg, seed, image_channels), labels, fold


def scores_on_folds(real, synth, fold, cfg, seed: int, image_channels: int | None = None) -> np.ndarray:
    """Out-of-fold scores on given folds, with networks initialised and trained from `seed`."""
    x = np.concatenate([real, synth]).astype(np.float32)
    y = np.concatenate([np.zeros(len(real)), np.ones(len(synth))])
    scores = np.empty(len(x))
    with one_torch_thread():
        for f in np.unique(fold):
            test = fold == f
            scores[test] = _fit_and_score(x[~test], y[~test], x[test], cfg, seed=seed * 100 + int(f),
                                          image_channels=image_channels)
    return scores


def repeated_scores(real, synth, cfg, real_groups=None, synth_groups=None, image_channels: int | None = None):
    """Out-of-fold scores of `cfg.classifier_repeats` seeds (seed, seed + 1, ...; the first seed fixes the
    folds), combined as the mean of each repeat's normalised ranks, plus each repeat's own AUC."""
    repeats = max(1, int(cfg.classifier_repeats))
    seed = int(cfg.seed)
    scores, labels, fold = out_of_fold_scores(real, synth, cfg, real_groups, synth_groups, seed, image_channels)
    if repeats == 1:
        return scores, labels, fold, [rank_auc(scores, labels)]
    runs = [scores] + [scores_on_folds(real, synth, fold, cfg, seed + r, image_channels) for r in range(1, repeats)]
    combined = np.mean([rankdata(s) / len(s) for s in runs], axis=0)
    return combined, labels, fold, [rank_auc(s, labels) for s in runs]


def _auc_result(scores, labels, fold, cfg, rng, clusters: np.ndarray, unit: str) -> tuple[dict, dict]:
    auc = rank_auc(scores, labels)
    boots = cluster_bootstrap_auc(scores, labels, clusters, int(cfg.n_bootstrap), rng)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    ci_low, ci_high = np.percentile(boots, [2.5, 97.5])
    rec = metric(auc, ci_low=float(ci_low), ci_high=float(ci_high), ci_unit=unit,
                 null_mean=0.5, null_sd=null_auc_sd(n1, n0),
                 p_value=permutation_pvalue(scores, labels, int(cfg.classifier_permutations), rng))
    per_fold = [rank_auc(scores[fold == f], labels[fold == f]) for f in np.unique(fold)]
    detail = {"x": np.arange(len(per_fold)), "fold_auc": np.array(per_fold),
              "scores": {"real": scores[~labels], "synthetic": scores[labels]}}
    return rec, detail


def classifier_metrics(real: np.ndarray, synth: np.ndarray, cfg, real_groups=None, synth_groups=None,
                       image_channels: int | None = None) -> dict:
    """`classifier_auc` and `classifier_auc_dithered` with CI, null and p-value, plus figure data.

    `real` / `synth`: (N, C, H, W) in [-1, 1]; channels past `image_channels` (a mask) are not dithered.
    """
    c_img = real.shape[1] if image_channels is None else image_channels
    rng = np.random.default_rng(int(cfg.seed))
    metrics, detail = {}, {}
    clusters, unit = auc_clusters(real_groups, len(real), synth_groups, len(synth))
    scores, labels, fold, repeat_aucs = repeated_scores(real, synth, cfg, real_groups, synth_groups, c_img)
    metrics["classifier_auc"], detail["plain"] = _auc_result(scores, labels, fold, cfg, rng, clusters, unit)
    metrics["classifier_auc"]["repeat_aucs"] = repeat_aucs

    r_step, r_off, s_step, s_off, note = dither_grids(real[:, 0], len(synth), float(cfg.classifier_dither_step),
                                                      rng)
    if (r_step > 0).any():
        real_d, synth_d = real.copy(), synth.copy()
        real_d[:, :c_img] = quantise_and_dither(real[:, :c_img], r_step, rng, r_off)
        synth_d[:, :c_img] = quantise_and_dither(synth[:, :c_img], s_step, rng, s_off)
        # same seeds, folds and initialisations as the plain run: the two AUCs differ by the dithering alone
        scores, labels, fold, repeat_aucs = repeated_scores(real_d, synth_d, cfg, real_groups, synth_groups, c_img)
        metrics["classifier_auc_dithered"], detail["dithered"] = _auc_result(scores, labels, fold, cfg, rng,
                                                                             clusters, unit)
        metrics["classifier_auc_dithered"]["repeat_aucs"] = repeat_aucs
        metrics["classifier_auc_dithered"]["dither_note"] = note
    else:  # no intensity grid to hide: the dithered run would be the plain run, seed for seed
        metrics["classifier_auc_dithered"] = dict(metrics["classifier_auc"], note=note)
        detail["dithered"] = detail["plain"]
    on = r_step > 0
    step = float(np.median(r_step[on])) if on.any() else 0.0
    metrics["classifier_auc_dithered"]["dither_step"] = step
    metrics["classifier_auc_dithered"]["dither_fraction_on_grid"] = float(on.mean())
    return {"metrics": metrics, "detail": {"scores": detail["plain"]["scores"],
                                           "scores_dithered": detail["dithered"]["scores"],
                                           "fold_auc": {"plain": detail["plain"]["fold_auc"],
                                                        "dithered": detail["dithered"]["fold_auc"]},
                                           "dither_step": step}}
