"""Family 13, utility: does the synthetic set help a lesion segmenter? (pure torch / numpy on arrays)

Protocol
- Arms (training sets): `real` (the real training split), `synthetic` (synthetic slices only:
  train on synthetic, test on real), `real_plus_synthetic` (the real slices plus `synthetic_ratio`
  synthetic slices per real slice), and optionally `real_<p>pct` / `real_<p>pct_plus_synthetic`
  on a fraction of the real training subjects. The `synthetic` arm trains on exactly the synthetic
  slices that `real_plus_synthetic` adds, so at ratio 1 it has the real arm's size.
- Every arm trains the same small 2-D UNet (our ResBlock / Downsample / Upsample) with Dice + BCE
  for the same number of optimiser steps from the same seeds (`utility_seeds` of them): arms differ
  in their data only, not in compute. Batches draw `utility_lesion_fraction` of their slices from
  lesion slices when the arm has any (lesion slices are a minority in brain data).
- Every segmenter is scored on the held-out real test slices, thresholded at probability 0.5:
  `dice` (pooled over the test slices that hold a lesion: 2 TP / (predicted + true pixels)),
  `sensitivity` (true lesions, 8-connected components per slice, that any predicted pixel touches,
  over all true lesions), `fp_per_slice` (predicted components touching no true lesion, per test
  slice, lesion-free slices included) and `subject_dice` (pooled Dice per test subject with lesions,
  averaged over subjects).
- An arm's value is the mean over its seeds. Its 95% CI resamples test subjects with replacement
  (slices when subjects are unknown) and the seeds with replacement, and recomputes the seed mean;
  every arm and every difference uses the same resamples, so the differences between arms are
  paired over subjects and seeds.
- Speed: segmenters train on random crops (`utility_crop` of the side; lesion draws keep a lesion
  pixel inside) and score whole slices (the network is fully convolutional); each uses one torch
  thread, and `utility_workers` processes train the (arm, seed) segmenters side by side.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import numpy as np

from ..errors import UserError
from .common import one_torch_thread

NAME = "utility"
METRICS = ("dice", "sensitivity", "fp_per_slice", "subject_dice")
# (arm, reference arm) pairs whose paired differences are reported
DIFFERENCES = (("real_plus_synthetic", "real"), ("synthetic", "real"))
N_EXAMPLES = 4  # test slices shown with the real-trained and synthetic-trained predictions
EVAL_BATCH = 256
# BCE weight of lesion pixels: lesions cover ~1% of a slice, and unweighted BCE drives every logit so
# far negative that the Dice term's gradient vanishes through the sigmoid (seen: segmenters that never
# predict a lesion in one seed out of three)
LESION_WEIGHT = 10.0


# -------------------------------------------------------------------------------------- network
def _segmentation_unet(in_channels: int, widths):
    """A UNet of one ResBlock per level, built lazily so that importing this module needs no torch."""
    import torch
    from torch import nn

    from ..model.blocks import Downsample, ResBlock, Upsample

    groups = 4  # GroupNorm groups: widths are multiples of 4 (validated in the config)

    class SegmentationUNet(nn.Module):
        """Image channels in, one lesion logit per pixel out. The ResBlocks get no condition: their
        scale-shift reduces to a learned per-channel affine (the projection's bias of a zero input)."""

        def __init__(self):
            super().__init__()
            self.levels = len(widths)
            self.register_buffer("no_condition", torch.zeros(1, 1))
            self.input_conv = nn.Conv2d(in_channels, widths[0], 3, padding=1)
            self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
            ch = widths[0]
            for i, w in enumerate(widths):
                self.down.append(ResBlock(ch, w, 1, groups, 0.0, norm2=False))
                ch = w
                if i < len(widths) - 1:
                    self.downsample.append(Downsample(ch))
            self.mid = ResBlock(ch, ch, 1, groups, 0.0, norm2=False)
            self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
            for i in reversed(range(len(widths))):
                self.up.append(ResBlock(ch + widths[i], widths[i], 1, groups, 0.0, norm2=False))
                ch = widths[i]
                if i > 0:
                    self.upsample.append(Upsample(ch, "bilinear"))
            self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1))
            self.to(memory_format=torch.channels_last)  # mkldnn convolutions: ~20% faster steps on CPU

        def forward(self, x):
            h, w = x.shape[-2:]
            m = 2 ** (self.levels - 1)
            pad_h, pad_w = (-h) % m, (-w) % m  # sizes not divisible by 2^(levels-1): pad with background
            if pad_h or pad_w:
                x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), value=-1.0)
            x = x.contiguous(memory_format=torch.channels_last)
            emb = self.no_condition
            hid = self.input_conv(x)
            skips = []
            for i, block in enumerate(self.down):
                hid = block(hid, emb)
                skips.append(hid)
                if i < len(self.downsample):
                    hid = self.downsample[i](hid)
            hid = self.mid(hid, emb)
            for i, block in enumerate(self.up):
                hid = block(torch.cat([hid, skips.pop()], dim=1), emb)
                if i < len(self.upsample):
                    hid = self.upsample[i](hid)
            return self.out(hid)[:, 0, :h, :w]

    return SegmentationUNet()


def dice_bce_loss(logits, target, lesion_weight: float = 1.0):
    """BCE per pixel (lesion pixels weighted by `lesion_weight`) + soft Dice pooled over the batch
    (pooling keeps lesion-free slices meaningful)."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(lesion_weight))
    p = logits.sigmoid()
    soft_dice = (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + (1.0 - soft_dice)


def _crop_origins(masks: np.ndarray, idx: np.ndarray, from_lesion: np.ndarray, crop: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of `crop`-sided training crops: uniform for ordinary draws; for lesion draws, a
    random position that keeps a random lesion pixel of the slice inside the crop."""
    n, h, w = len(idx), masks.shape[1], masks.shape[2]
    top, left = rng.integers(0, h - crop + 1, size=n), rng.integers(0, w - crop + 1, size=n)
    jitter = rng.integers(0, crop, size=(2, n))
    for k in np.flatnonzero(from_lesion):
        ys, xs = np.nonzero(masks[idx[k]])
        j = rng.integers(0, len(ys))
        top[k] = min(max(ys[j] - jitter[0, k], 0), h - crop)
        left[k] = min(max(xs[j] - jitter[1, k], 0), w - crop)
    return top, left


def train_segmenter(images: np.ndarray, masks: np.ndarray, cfg, seed: int, callback=None):
    """Train one segmenter for `utility_steps` Adam steps (cosine-decayed learning rate) from `seed`.

    `images` (N, C, H, W) float32 in [-1, 1], `masks` (N, H, W) bool. Each step draws
    `utility_batch_size` slices (`utility_lesion_fraction` of them from lesion slices, when there are
    any), crops them to `utility_crop` of the side (lesion draws keep a lesion pixel inside), and flips
    half of them left-right. Deterministic on CPU: weights and draws depend on `seed` only.
    `callback(step, net)`, when given, runs after every step (learning curves).
    """
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    widths = list(cfg.utility_widths)
    net = _segmentation_unet(images.shape[1], widths)
    steps, bs = int(cfg.utility_steps), int(cfg.utility_batch_size)
    h, w = images.shape[2:]
    multiple = 2 ** (len(widths) - 1)
    crop = max(multiple, int(float(cfg.utility_crop) * min(h, w)) // multiple * multiple)
    crop = min(crop, h, w)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.utility_lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))
    lesion = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    frac = float(cfg.utility_lesion_fraction) if len(lesion) else 0.0
    net.train()
    for step in range(steps):
        # the same rng draws in every arm: which pool each batch slot uses, the index in it, crop, flip
        from_lesion = rng.random(bs) < frac
        idx = rng.integers(0, len(images), size=bs)
        if len(lesion):
            idx = np.where(from_lesion, lesion[rng.integers(0, len(lesion), size=bs)], idx)
        top, left = _crop_origins(masks, idx, from_lesion, crop, rng)
        flip = rng.random(bs) < 0.5
        xb = torch.stack([x_all[i, :, t:t + crop, l:l + crop] for i, t, l in zip(idx, top, left)])
        yb = torch.stack([y_all[i, t:t + crop, l:l + crop] for i, t, l in zip(idx, top, left)])
        f = torch.from_numpy(flip)
        xb = torch.where(f[:, None, None, None], xb.flip(-1), xb)
        yb = torch.where(f[:, None, None], yb.flip(-1), yb)
        loss = dice_bce_loss(net(xb), yb, LESION_WEIGHT)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if callback is not None:
            callback(step, net)
    return net.eval()


def predict(net, images: np.ndarray) -> np.ndarray:
    """Binary lesion masks (N, H, W): probability above 0.5."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    with torch.no_grad():
        return torch.cat([net(x[i:i + EVAL_BATCH]) > 0 for i in range(0, len(x), EVAL_BATCH)]).numpy()


# -------------------------------------------------------------------------------------- scoring
_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True  # 8-connected within a slice, never across slices


def _components(masks: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Labels of the 2-D connected components of every slice, their count, and each one's slice."""
    from scipy import ndimage

    labels, n = ndimage.label(masks, structure=_IN_PLANE_8)
    owner = np.zeros(n + 1, dtype=np.int64)
    owner[labels[labels > 0]] = np.nonzero(labels)[0]
    return labels, n, owner[1:]


def slice_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per test slice: TP / predicted / true pixels, true lesions, detected lesions, false-positive
    components. `pred`, `truth`: (N, H, W) bool. Every metric is a ratio of sums of these."""
    n = len(truth)
    flat_p, flat_t = pred.reshape(n, -1), truth.reshape(n, -1)
    t_lab, n_t, t_owner = _components(truth)
    p_lab, n_p, p_owner = _components(pred)
    detected = np.zeros(n_t + 1, dtype=bool)
    detected[t_lab[pred]] = True
    touches = np.zeros(n_p + 1, dtype=bool)
    touches[p_lab[truth]] = True
    return {"tp": (flat_p & flat_t).sum(axis=1).astype(float), "pred": flat_p.sum(axis=1).astype(float),
            "true": flat_t.sum(axis=1).astype(float),
            "lesions": np.bincount(t_owner, minlength=n).astype(float),
            "detected": np.bincount(t_owner, weights=detected[1:], minlength=n),
            "fp": np.bincount(p_owner, weights=~touches[1:], minlength=n),
            "slices": np.ones(n)}


def unit_sums(counts: dict[str, np.ndarray], unit: np.ndarray) -> np.ndarray:
    """(n_units, 8) sums per resampling unit: tp / pred / true over lesion slices, lesions, detected,
    fp, slices, and whether the unit holds a lesion. `unit`: (N,) indices 0..n_units-1."""
    les = counts["true"] > 0
    n_units = int(unit.max()) + 1 if len(unit) else 0
    cols = [counts["tp"] * les, counts["pred"] * les, counts["true"], counts["lesions"], counts["detected"],
            counts["fp"], counts["slices"]]
    sums = np.stack([np.bincount(unit, weights=c, minlength=n_units) for c in cols], axis=1)
    return np.concatenate([sums, (sums[:, 2] > 0)[:, None].astype(float)], axis=1)


def metrics_from_sums(sums: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The four metrics per seed and per row of `weights` (n_resamples, n_units: how often each unit
    is drawn). `sums` (n_seeds, n_units, 8) from `unit_sums`; returns (n_seeds, n_resamples) arrays,
    NaN where a resample holds no lesion."""
    tot = np.einsum("bu,suk->sbk", weights, sums)
    has_lesion = sums[0, :, 7]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_unit_dice = np.where(has_lesion > 0, 2 * sums[..., 0] / np.maximum(sums[..., 1] + sums[..., 2], 1), 0.0)
        return {"dice": 2 * tot[..., 0] / (tot[..., 1] + tot[..., 2]),
                "sensitivity": tot[..., 4] / tot[..., 3],
                "fp_per_slice": tot[..., 5] / tot[..., 6],
                "subject_dice": np.einsum("bu,su->sb", weights, per_unit_dice) / (weights @ has_lesion)}


def bootstrap_weights(n_units: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_units) draw counts of resampling units with replacement."""
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    return np.stack([np.bincount(d, minlength=n_units) for d in draws]).astype(float)


def _summary(per_seed: np.ndarray, boot: np.ndarray, seed_weights: np.ndarray) -> dict:
    """value = seed mean; CI = percentiles over resamples of subjects and, jointly, of seeds (so the CI
    holds training randomness too: single segmenters of one arm differ by ~0.05-0.1 Dice); per-seed values.

    `boot` (n_seeds, n_boot) per-seed values on each subject resample; `seed_weights` (n_boot, n_seeds)."""
    with np.errstate(invalid="ignore"):
        boot = (seed_weights * boot.T).sum(axis=1) / seed_weights.sum(axis=1)
    b = boot[np.isfinite(boot)]
    value = float(np.mean(per_seed)) if np.isfinite(per_seed).all() else None
    return {"value": value, "ci_low": float(np.percentile(b, 2.5)) if len(b) else None,
            "ci_high": float(np.percentile(b, 97.5)) if len(b) else None,
            "seeds": [None if not math.isfinite(v) else float(v) for v in per_seed]}


# ------------------------------------------------------------------------------------------ arms
def arm_training_sets(train_subject: np.ndarray | None, n_train: int, n_synth: int, cfg,
                      rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """arm -> (real slice indices, synthetic slice indices) into the real training and synthetic sets."""
    ratio = float(cfg.utility_synthetic_ratio)
    synth_order = rng.permutation(n_synth)  # one fixed order: smaller arms take a prefix of the same slices

    def synth_for(n_real: int) -> np.ndarray:
        return np.sort(synth_order[:min(n_synth, max(1, int(round(ratio * n_real))))])

    real_all = np.arange(n_train)
    arms = {"real": (real_all, np.array([], dtype=np.int64)),
            "synthetic": (np.array([], dtype=np.int64), synth_for(n_train)),
            "real_plus_synthetic": (real_all, synth_for(n_train))}
    if cfg.utility_real_fractions:
        units = train_subject if train_subject is not None else real_all
        uniq = np.unique(units)
        unit_order = rng.permutation(len(uniq))
        for f in cfg.utility_real_fractions:
            keep = uniq[unit_order[:max(1, int(round(float(f) * len(uniq))))]]
            real_f = np.flatnonzero(np.isin(units, keep))
            name = f"real_{round(100 * float(f))}pct"
            arms[name] = (real_f, np.array([], dtype=np.int64))
            arms[f"{name}_plus_synthetic"] = (real_f, synth_for(len(real_f)))
    return arms


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


def _settings(cfg) -> SimpleNamespace:
    """The training settings as a plain picklable object (worker processes get it, not the config)."""
    return SimpleNamespace(**{k: (list(v) if k == "utility_widths" else v) for k, v in
                              ((k, getattr(cfg, k)) for k in ("utility_widths", "utility_steps", "utility_batch_size",
                                                              "utility_lr", "utility_crop",
                                                              "utility_lesion_fraction"))})


_POOL: dict = {}  # per worker process: the training pools and test images, sent once by the initializer


def _init_worker(train_images, train_masks, synth_images, synth_masks, test_images) -> None:
    import torch

    torch.set_num_threads(1)
    _POOL.update(train=(train_images, train_masks), synth=(synth_images, synth_masks), test=test_images)


def _fit_predict(real_idx, synth_idx, settings, seed: int) -> tuple[np.ndarray, float]:
    """One segmenter on the arm's slices, its predictions on the test images, and its seconds."""
    t0 = time.perf_counter()
    (ti, tm), (si, sm) = _POOL["train"], _POOL["synth"]
    images = np.concatenate([ti[real_idx], si[synth_idx]]).astype(np.float32, copy=False)
    masks = np.concatenate([tm[real_idx], sm[synth_idx]]).astype(bool, copy=False)
    pred = predict(train_segmenter(images, masks, settings, seed), _POOL["test"])
    return pred, time.perf_counter() - t0


def _train_all(train, synth, test, arms: dict, seeds: list[int], cfg, finished) -> None:
    """Every (arm, seed) segmenter; `finished(arm, preds by seed, seconds)` as each arm completes.

    With `utility_workers` > 1 the segmenters train in that many processes, one torch thread each (small
    convolutions gain little from intra-op threads); results do not depend on the number of workers."""
    settings = _settings(cfg)
    pools = (train.images, train.masks, synth.images, synth.masks, test.images)
    jobs = [(arm, k, seed) for arm in arms for k, seed in enumerate(seeds)]
    workers = min(int(cfg.utility_workers), len(jobs))
    if workers <= 1:
        with one_torch_thread():
            _init_worker(*pools)
            try:
                for arm in arms:
                    out = [_fit_predict(*arms[arm], settings, seed) for seed in seeds]
                    finished(arm, [p for p, _ in out], sum(t for _, t in out))
            finally:
                _POOL.clear()
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: forking a process whose OpenMP runtime is initialised can deadlock the child
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, dict[int, tuple[np.ndarray, float]]] = {arm: {} for arm in arms}
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=pools) as pool:
        futures = {pool.submit(_fit_predict, *arms[arm], settings, seed): (arm, k) for arm, k, seed in jobs}
        for arm in arms:  # report arms in order, as soon as each is complete
            for fut, (a, k) in futures.items():
                if a == arm:
                    results[arm][k] = fut.result()
            out = [results[arm][k] for k in range(len(seeds))]
            finished(arm, [p for p, _ in out], sum(t for _, t in out))


def run_utility(train, synth, test, cfg, progress: Callable[[str], None] | None = None,
                arms: Sequence[str] | None = None) -> dict:
    """Train every arm's segmenters and score them on `test`.

    `train`, `synth`, `test`: `runner.ImageSet`s with masks (train: real training slices; test: the
    held-out real slices, with subject ids when known). `cfg`: the diagnostics section. Returns
    {"arms", "differences", "verdict", "synthetic_has_lesions", "test", "settings", "seconds",
    "examples"} (examples: arrays for the report; the rest is plain JSON-able data). `arms` restricts
    the arms trained (default: all); an arm's numbers do not depend on which others run.
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
    rng = np.random.default_rng(int(cfg.seed))
    all_arms = arm_training_sets(train.subject, len(train), len(synth), cfg, rng)
    unknown = sorted(set(arms or ()) - set(all_arms))
    if unknown:
        raise UserError(f"utility: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(all_arms)}")
    arms = {k: v for k, v in all_arms.items() if arms is None or k in arms}
    seeds = [int(cfg.seed) + s for s in range(int(cfg.utility_seeds))]

    # resampling units of the test set: subjects when known, else slices
    if test.subject is not None:
        uniq, unit = np.unique(test.subject, return_inverse=True)
        unit_desc = f"subjects ({len(uniq)})"
    else:
        uniq, unit = np.arange(len(test)), np.arange(len(test))
        unit_desc = "slices (no subject ids)"
    # a stream of its own: runs scored on the same test set share their resamples, whatever the arms
    boot_rng = np.random.default_rng([int(cfg.seed), 1])
    weights = np.vstack([np.ones((1, len(uniq))), bootstrap_weights(len(uniq), int(cfg.n_bootstrap), boot_rng)])
    seed_weights = bootstrap_weights(len(seeds), int(cfg.n_bootstrap), boot_rng)  # seeds resampled too

    sums: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    first_preds: dict[str, np.ndarray] = {}
    def finished(arm: str, preds: list[np.ndarray], secs: float) -> None:
        first_preds[arm] = preds[0]
        sums[arm] = np.stack([unit_sums(slice_counts(p, test.masks), unit) for p in preds])
        seconds[arm] = secs
        if progress:
            d = metrics_from_sums(sums[arm], weights[:1])["dice"][:, 0]
            real_idx, synth_idx = arms[arm]
            progress(f"  utility {arm:<28} {len(real_idx):5d} real + {len(synth_idx):5d} synthetic slices, "
                     f"Dice {np.mean(d):.3f} ({secs:.1f} s of training)")

    _train_all(train, synth, test, arms, seeds, cfg, finished)

    # metric arrays (n_seeds, 1 + n_boot): column 0 is the full test set, the rest the resamples
    values = {arm: metrics_from_sums(s, weights) for arm, s in sums.items()}
    out_arms = {}
    for arm, (real_idx, synth_idx) in arms.items():
        rec = {"n_real": int(len(real_idx)), "n_synthetic": int(len(synth_idx)),
               "n_lesion_slices": int(train.masks[real_idx].any(axis=(1, 2)).sum()
                                      + synth.masks[synth_idx].any(axis=(1, 2)).sum())}
        for m in METRICS:
            v = values[arm][m]
            rec[m] = _summary(v[:, 0], v[:, 1:], seed_weights)
        out_arms[arm] = rec
    pairs = list(DIFFERENCES) + [(a, a.removesuffix("_plus_synthetic")) for a in arms
                                 if a.endswith("pct_plus_synthetic")]
    differences = {}
    for arm, ref in [(a, r) for a, r in pairs if a in arms and r in arms]:
        diff = {}
        for m in METRICS:
            d = values[arm][m] - values[ref][m]  # same seeds, same resamples: paired
            diff[m] = _summary(d[:, 0], d[:, 1:], seed_weights)
        differences[f"{arm} - {ref}"] = diff
    synth_has_lesions = bool(synth.masks.any())
    result = {
        "arms": out_arms, "differences": differences, "synthetic_has_lesions": synth_has_lesions,
        "test": {"n_slices": len(test), "n_lesion_slices": int(test.masks.any(axis=(1, 2)).sum()),
                 "n_lesions": int(next(iter(sums.values()))[0, :, 3].sum()),
                 "resampling_unit": unit_desc},
        "settings": {"seeds": seeds, "steps": int(cfg.utility_steps), "batch_size": int(cfg.utility_batch_size),
                     "lr": float(cfg.utility_lr), "widths": [int(w) for w in cfg.utility_widths],
                     "lesion_fraction": float(cfg.utility_lesion_fraction),
                     "synthetic_ratio": float(cfg.utility_synthetic_ratio), "n_bootstrap": int(cfg.n_bootstrap),
                     "image_size": list(test.images.shape[2:])},
        "seconds": seconds,
    }
    result["verdict"] = verdict(result)
    result["examples"] = _examples(test, first_preds)
    return result


# --------------------------------------------------------------------------------------- verdict
def _f2(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def verdict(result: dict) -> str:
    """One sentence on what the synthetic set did to Dice on held-out real subjects."""
    arms, diffs = result["arms"], result["differences"]

    def dice(arm):
        return arms[arm]["dice"]["value"] if arm in arms else None

    real, syn, both = dice("real"), dice("synthetic"), dice("real_plus_synthetic")
    gain = diffs.get("real_plus_synthetic - real", {}).get("dice")
    change = "" if gain is None else (f" and adding it to the real data changed Dice by {_f2(gain['value'])} "
                                      f"(95% CI {_f2(gain['ci_low'])} to {_f2(gain['ci_high'])})")
    if not result["synthetic_has_lesions"]:
        return (f"The synthetic set carries no lesions, so it cannot teach a segmenter to find them: trained on "
                f"it alone a segmenter reached Dice {_f2(syn)} on held-out real subjects (real-trained "
                f"{_f2(real)}){change}.")
    alone = f"trained on synthetic alone a segmenter reached {_f2(syn)} on held-out real subjects"
    if gain is None:
        return f"Real-trained Dice {_f2(real)}; {alone}."
    g, lo, hi = gain["value"] or 0.0, gain["ci_low"], gain["ci_high"]
    unsure = "" if lo is None or hi is None or lo > 0 or hi < 0 else ", a change the CI does not tell from none"
    return (f"Synthetic data {'added' if g >= 0 else 'cost'} {abs(g):.2f} Dice (95% CI {_f2(lo)} to {_f2(hi)})"
            f"{unsure}: real-trained {_f2(real)}, real + synthetic {_f2(both)}; {alone}.")


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
    """One row per (arm or difference, metric)."""
    rows = []
    for kind, table in (("arm", result["arms"]), ("difference", result["differences"])):
        for name, rec in table.items():
            for m in METRICS:
                r = rec[m]
                rows.append({"kind": kind, "arm": name, "metric": m, "value": r["value"], "ci_low": r["ci_low"],
                             "ci_high": r["ci_high"],
                             "seeds": ";".join("" if v is None else f"{v:.6g}" for v in r["seeds"]),
                             "n_real": rec.get("n_real"), "n_synthetic": rec.get("n_synthetic")})
    return rows
