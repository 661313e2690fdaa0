"""Training the lesion segmenter: settings, a subject-disjoint validation split, random lesion-biased crops,
Adam on Dice + BCE with early stopping on validation Dice, and prediction. Pure torch / numpy on arrays."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from .network import LESION_WEIGHT, dice_bce_loss, segmentation_unet
from .scoring import pooled_dice

EVAL_BATCH = 256
# validation scores (and training returns) an exponential moving average of the weights: at a high
# learning rate the weights of single steps swing by ~0.1 validation Dice between evaluations, their
# average far less, so the best evaluation picks a good model rather than a lucky swing
EMA_DECAY = 0.95
# a halt (patience > 0) comes no sooner than this share of the step cap, nor while the validation Dice has
# stayed 0: a segmenter can find no lesion for its first ~100-300 steps (its lesion logit still below the
# background's) and then climb
MIN_STEPS_SHARE = 0.5


def still_rising(curve: list[tuple[int, float]], patience: int) -> bool:
    """Whether the validation Dice still climbs: the mean of its last ceil(patience / 2) evaluations is above
    that of the ceil(patience / 2) before them. Seen on the demo (real 25% + synthetic): an early spike (0.17
    at step 75) then a dip and a slow climb that passes the spike only at step ~350; patience counted from
    the spike alone halted such segmenters at Dice ~0 (doubling the budget gave 0.39)."""
    k = max(1, math.ceil(patience / 2))
    if len(curve) < 2 * k:
        return True
    last = [d for _, d in curve[-k:]]
    before = [d for _, d in curve[-2 * k:-k]]
    return sum(last) / k > sum(before) / k
# a segmenter that runs to the step cap counts as converged when the best validation Dice of its last
# quarter of steps beats that of the quarter before by less than this (the curve has flattened)
PLATEAU_TOLERANCE = 0.03
VALIDATION_STREAM = 2  # the validation carve draws from numpy's Generator([seed, VALIDATION_STREAM])


@dataclass(frozen=True)
class SegmenterSettings:
    """How one segmenter trains (the `diagnostics.utility_*` keys, see config.py)."""

    widths: tuple[int, ...] = (8, 16, 32)  # channels per UNet level
    max_steps: int = 600  # Adam steps at most (the span of the cosine learning-rate decay)
    batch_size: int = 16
    lr: float = 6e-3  # peak learning rate
    crop: float = 0.5  # training crops of this fraction of the image side
    lesion_fraction: float = 0.5  # share of each batch drawn from lesion slices
    eval_every: int = 25  # steps between validation Dice evaluations
    patience: int = 8  # evaluations without a better validation Dice before halting; 0 = run to max_steps
    val_fraction: float = 0.2  # share of the training subjects with lesions held out for validation

    def as_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


def settings_from_config(dcfg) -> SegmenterSettings:
    """The segmenter settings of a diagnostics config section (or of a full config)."""
    d = getattr(dcfg, "diagnostics", dcfg)
    return SegmenterSettings(
        widths=tuple(int(w) for w in d.utility_widths), max_steps=int(d.utility_steps),
        batch_size=int(d.utility_batch_size), lr=float(d.utility_lr), crop=float(d.utility_crop),
        lesion_fraction=float(d.utility_lesion_fraction), eval_every=int(d.utility_eval_every),
        patience=int(d.utility_patience), val_fraction=float(d.utility_val_fraction))


def validation_split(masks: np.ndarray, subject: np.ndarray | None, fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): `fraction` of the subjects that hold a lesion (at least one, and none
    when fewer than two hold one) go to validation with all their slices; lesion-free subjects stay in
    training (validation Dice is scored on lesion slices only). Without subject ids each slice is a unit."""
    units = subject if subject is not None else np.arange(len(masks))
    has = masks.reshape(len(masks), -1).any(axis=1)
    lesion_units = np.unique(units[has])
    if fraction <= 0 or len(lesion_units) < 2:
        return np.arange(len(masks)), np.array([], dtype=np.int64)
    k = min(len(lesion_units) - 1, max(1, int(round(fraction * len(lesion_units)))))
    val_units = lesion_units[rng.permutation(len(lesion_units))[:k]]
    is_val = np.isin(units, val_units)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def split_for_validation(masks: np.ndarray, subject: np.ndarray | None, settings: SegmenterSettings,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation carve every user of one real training set shares (utility's arms, the reference
    segmenter): `validation_split` at `settings.val_fraction`, drawn from `seed`'s own stream."""
    rng = np.random.default_rng([int(seed), VALIDATION_STREAM])
    return validation_split(masks, subject, float(settings.val_fraction), rng)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Small networks (these segmenters, the diagnostics' real-vs-synthetic classifier): thread
    synchronisation costs more than it saves (8x slower with two threads on a busy two-core machine), so
    they train on one intra-op thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def crop_size(settings, h: int, w: int) -> int:
    multiple = 2 ** (len(settings.widths) - 1)
    crop = max(multiple, int(float(settings.crop) * min(h, w)) // multiple * multiple)
    return min(crop, h, w)


def crop_origins(masks: np.ndarray, idx: np.ndarray, from_lesion: np.ndarray, crop: int,
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


def predict_masks(model, images: np.ndarray) -> np.ndarray:
    """Binary lesion masks (N, H, W) bool: probability above 0.5. `images` (N, C, H, W) in [-1, 1]."""
    import torch

    was_training = model.training
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    with torch.no_grad():
        out = [model(x[i:i + EVAL_BATCH]) > 0 for i in range(0, len(x), EVAL_BATCH)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, *images.shape[2:]), dtype=bool)


def train_segmenter(images: np.ndarray, masks: np.ndarray, settings: SegmenterSettings, seed: int,
                    val_images: np.ndarray | None = None, val_masks: np.ndarray | None = None,
                    callback=None) -> tuple[object, dict]:
    """Train one segmenter from `seed`; returns (network in eval mode, record).

    `images` (N, C, H, W) float32 in [-1, 1], `masks` (N, H, W) bool. Each step draws `batch_size`
    slices (`lesion_fraction` of them from lesion slices, when there are any), crops them to `crop` of
    the side (lesion draws keep a lesion pixel inside) and flips half of them left-right.
    With validation slices that hold lesions: a short warm-up, then a cosine-decayed learning rate over
    `max_steps`; every `eval_every` steps the pooled Dice of the weights' moving average (`EMA_DECAY`) on
    the validation lesion slices, and the best of these averaged weights is returned (early stopping as
    checkpoint selection). With `patience` > 0 training also halts once `patience` evaluations in a row
    did not beat the best (not before `MIN_STEPS_SHARE` of `max_steps`, nor while the best is 0, nor while
    the curve still rises: `still_rising`).
    Converged: halted that way, or at `max_steps` with a flat curve (the last quarter's best validation
    Dice within `PLATEAU_TOLERANCE` of the third quarter's). Without validation lesions: `max_steps`
    steps, the last weights (converged is None). Deterministic on CPU: weights and draws depend on `seed`
    only. `callback(step, net)`, when given, runs after every step. Record: steps, best_step, val_dice
    (best), converged, curve [(step, val Dice)].
    """
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = segmentation_unet(images.shape[1], settings.widths)
    steps, bs = int(settings.max_steps), int(settings.batch_size)
    crop = crop_size(settings, *images.shape[2:])
    if val_masks is not None and len(val_masks):
        keep = val_masks.reshape(len(val_masks), -1).any(axis=1)
        val_images, val_masks = val_images[keep], val_masks[keep]
    early = val_masks is not None and len(val_masks) > 0  # validation: checkpoint selection (and halting)
    warmup = min(50, steps // 10) if early else 0

    def lr_factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) if s < warmup else 0.5 * (1 + math.cos(math.pi * s / steps))

    opt = torch.optim.Adam(net.parameters(), lr=float(settings.lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))
    lesion = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    frac = float(settings.lesion_fraction) if len(lesion) else 0.0
    best, best_step, best_state, since_best, curve = -1.0, 0, None, 0, []
    converged = False if early else None
    min_steps = int(MIN_STEPS_SHARE * steps)
    averaged = copy.deepcopy(net) if early else None
    net.train()
    step = 0
    while step < steps:
        # the same rng draws in every arm: which pool each batch slot uses, the index in it, crop, flip
        from_lesion = rng.random(bs) < frac
        idx = rng.integers(0, len(images), size=bs)
        if len(lesion):
            idx = np.where(from_lesion, lesion[rng.integers(0, len(lesion), size=bs)], idx)
        top, left = crop_origins(masks, idx, from_lesion, crop, rng)
        flip = torch.from_numpy(rng.random(bs) < 0.5)
        xb = torch.stack([x_all[i, :, t:t + crop, l:l + crop] for i, t, l in zip(idx, top, left)])
        yb = torch.stack([y_all[i, t:t + crop, l:l + crop] for i, t, l in zip(idx, top, left)])
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        yb = torch.where(flip[:, None, None], yb.flip(-1), yb)
        loss = dice_bce_loss(net(xb), yb, LESION_WEIGHT)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if callback is not None:
            callback(step - 1, net)
        if not early:
            continue
        with torch.no_grad():
            for avg, cur in zip(averaged.parameters(), net.parameters()):
                avg.lerp_(cur, 1.0 - EMA_DECAY)
        if step % int(settings.eval_every) == 0 or step == steps:
            dice = pooled_dice(predict_masks(averaged, val_images), val_masks)
            curve.append((step, dice))
            if dice > best:
                best, best_step, since_best = dice, step, 0
                best_state = {k: v.detach().clone() for k, v in averaged.state_dict().items()}
            else:
                since_best += 1
                if (0 < int(settings.patience) <= since_best and step >= min_steps and best > 0
                        and not still_rising(curve, int(settings.patience))):
                    converged = True
                    break
    if early and not converged:
        last = [d for s_, d in curve if s_ > 0.75 * steps]
        before = [d for s_, d in curve if 0.5 * steps < s_ <= 0.75 * steps]
        converged = bool(last and before and best > 0 and max(last) - max(before) < PLATEAU_TOLERANCE)
    if best_state is not None:
        net.load_state_dict(best_state)
    record = {"steps": step, "best_step": best_step if early else step, "val_dice": best if early else None,
              "converged": converged, "curve": curve}
    return net.eval(), record
