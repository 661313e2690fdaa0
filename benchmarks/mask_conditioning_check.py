"""Sanity check of a mask-conditioned checkpoint (model.mask_conditioning): are lesions visible under given masks,
and does the joint mode still draw lesions?

Given masks: the lesion masks of up to --n TRAIN-split lesion slices of the checkpoint's cache, each drawn at
its own z-bin with the lesion class (`draw.sample_batch(..., mask=)`), at each --mask-guidance. Lesion
contrast = mean intensity inside the mask minus the mean over a ring 2-4 px outside it (inside the brain),
in units of the slice's brain std; printed for the real slices (same masks) and the generated ones. Joint
mode: the same conditions without masks: share of lesion-class samples with a lesion, and the contrast under
their own masks.

    .venv/bin/python benchmarks/mask_conditioning_check.py --ckpt RUN/checkpoints/last.ckpt --cache CACHE
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from scipy import ndimage

from jsddpm.checkpoint import Checkpoint
from jsddpm.data.cache import load_cache
from jsddpm.draw import postprocess, sample_batch


def contrast(images: np.ndarray, masks: np.ndarray, roi_threshold: float = -0.9) -> np.ndarray:
    """Per slice: (mean inside the mask - mean in the 2-4 px ring outside, within the brain) / brain std."""
    out = []
    for img, mask in zip(images, masks):
        if not mask.any():
            continue
        brain = img > roi_threshold
        ring = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask, iterations=1) & brain
        if not ring.any() or brain.sum() < 10:
            continue
        out.append((img[mask].mean() - img[ring].mean()) / img[brain].std())
    return np.array(out)


def summary(values: np.ndarray) -> str:
    if len(values) == 0:
        return "n/a"
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():+.2f} +- {1.96 * se:.2f} (n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--mask-guidance", type=float, nargs="*", default=[1.0, 2.0])
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = Checkpoint.load(args.ckpt)
    net, cfg = ckpt.model(True, "cpu"), copy.deepcopy(ckpt.config)  # a copy: mask_guidance is set below
    cache = load_cache(args.cache)
    idx = cache.index
    rows = np.flatnonzero((idx["split"] == "train") & (idx["has_lesion"] == 1))
    rows = rows[np.linspace(0, len(rows) - 1, min(args.n, len(rows))).round().astype(int)]
    real = cache.joint(rows)
    masks = real[:, -1:] > 0
    zbins = idx["zbin"][rows]
    label = ckpt.classes.index("lesion") if cfg.model.num_classes else 0
    labels = np.full(len(rows), label)
    seeds = np.arange(len(rows)) + 1000
    priors = ckpt.priors
    print(f"{len(rows)} train-split lesion slices; contrast = (lesion - 2-4 px ring) / brain std, mean +- 95% CI")
    print(f"real slices:                     {summary(contrast(real[:, 0], masks[:, 0]))}")

    def draw(mask):
        out = []
        for s in range(0, len(rows), args.batch):
            sl = slice(s, s + args.batch)
            given = None if mask is None else np.where(mask[sl], 1.0, -1.0).astype(np.float32)
            out.append(postprocess(sample_batch(net, cfg, zbins[sl], labels[sl], seeds[sl], priors, "cpu",
                                                z=idx["z_norm"][rows][sl], mask=given), True))
        return np.concatenate(out)

    for w in args.mask_guidance:
        cfg.sample.mask_guidance = w
        gen = draw(masks)
        assert np.array_equal(gen[:, -1:] > 0, masks)
        print(f"given masks, mask guidance {w:g}:  {summary(contrast(gen[:, 0], masks[:, 0]))}")
    joint = draw(None)
    own = joint[:, -1] > 0
    print(f"joint mode: lesion-class samples with a lesion {own.any(axis=(1, 2)).mean():.0%} (real 100%), "
          f"lesion area {own.sum(axis=(1, 2)).mean():.1f} px (real {masks.sum(axis=(1, 2, 3)).mean():.1f}); "
          f"contrast under own masks {summary(contrast(joint[:, 0], own))}")


if __name__ == "__main__":
    main()
