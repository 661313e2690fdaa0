"""The `jsddpm inpaint` stage: a new lesion and its exact mask inpainted into real lesion-free slices.

For each result k the source is a lesion-free slice of the cache's split (in an order shuffled by
sample.seed; k cycles through them, `index` counts the rounds), and everything random about it (the
target mask's choice, flip, rotation and place, the sampler's noise) is seeded by (sample.seed, source
row, index): a result does not depend on --n, the batch size or the other results.

Sources are restricted to z-bins where training slices have lesions. Target masks: `bank` takes a real
lesion mask of the train split at the source's z-bin from another subject (the nearest z-bins that
have one when only the source's own subject has one there); `generated` draws one from the model for
the lesion class at the source's z-bin. Either is flipped left-right at random, rotated by a uniform
angle and placed at a uniform position where it lies wholly inside the source's brain ROI and the
support of the z-bin's prior map.

Sampling (`diffusion.inpaint.sample_known`): known are the image outside the target mask dilated by
inpaint.dilate_px and the whole mask channel (= the target); class = lesion, z = the source's position,
prior = the source's z-bin's. The result's mask channel is the target exactly and its image equals the
source exactly outside the dilated mask.

sample.min_fidelity / sample.score_fidelity score each result with the reference segmenter of --source
(which must then be the checkpoint's training cache); a result below the threshold (inpaint.min_fidelity
when set, else sample.min_fidelity) is drawn again with a derived seed (a new target placement and noise:
`fidelity.draw_faithful`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..checkpoint import Checkpoint
from ..config import MASK_SOURCES
from ..errors import UserError
from ..imaging import image_rgb, mask_rgb, save_png, tile_grid, to_uint8
from ..regions import IN_PLANE_4, brain_roi, gray
from .outputs import write_samples
from .sampling import check_finite, postprocess, sample_batch
from .sources import bank_candidates, diffusion_data, open_source_cache, place_mask
from .stage import check_output_folder, resolve_generation_config

GENERATED_MASK_TRIES = 3  # draws per result before `generated` gives up on an empty mask


# --------------------------------------------------------------------------------- target masks
def lesion_label(classes: list[str], num_classes: int) -> int:
    """The class index results are drawn with: "lesion" (data.slice_label=lesion), or 0 without classes."""
    if num_classes == 0:
        return 0
    if "lesion" not in classes:
        raise UserError(f"the checkpoint's classes are {classes}, with no 'lesion' class; inpaint needs a model "
                        "trained with data.slice_label=lesion")
    return classes.index("lesion")


def allowed_regions(images: np.ndarray, zbins: np.ndarray, priors, diag_cfg) -> np.ndarray:
    """(n, H, W) bool: the sources' brain ROI (the diagnostics' ROI rule) inside the support of their
    z-bin's prior map."""
    roi = brain_roi(gray(images), None, float(diag_cfg.roi_threshold), float(diag_cfg.roi_min_component))
    if priors is None:
        return roi
    return roi & (np.asarray(priors)[zbins] > 0)


def bank_mask(cache, zbin: int, subject: str, allowed: np.ndarray, rng, tries: int) -> np.ndarray | None:
    candidates = bank_candidates(cache, zbin, subject)
    for _ in range(tries):
        row = candidates[rng.integers(len(candidates))]
        placed = place_mask(np.asarray(cache.masks[row, 0]) > 0, allowed, rng)
        if placed is not None:
            return placed
    return None


# ------------------------------------------------------------------------------------ the stage
def source_order(cache, split: str, seed: int) -> np.ndarray:
    """Lesion-free rows of the split at z-bins where training slices have lesions (elsewhere neither the
    bank nor the model has a lesion to offer), shuffled by the seed: result k uses row k % len, round
    k // len."""
    from ..seeding import derive_seed

    idx = cache.index
    lesion_zbins = np.unique(idx["zbin"][(idx["split"] == "train") & (idx["has_lesion"] == 1)])
    rows = cache.indices(split)
    rows = rows[(idx["has_lesion"][rows] == 0) & np.isin(idx["zbin"][rows], lesion_zbins)]
    if len(rows) == 0:
        raise UserError(f"{cache.root}: the {split} split has no lesion-free slice at a z-bin where training "
                        "slices have lesions; choose another --split")
    return np.random.default_rng(derive_seed(seed, 7)).permutation(rows)


def inpaint_batch(net, cfg, ckpt: Checkpoint, cache, rows, seeds, label: int, masks: str, device) -> dict:
    """Results for one batch of source rows with their per-result seeds: per-sample arrays."""
    from ..model import data_channels
    from ..seeding import derive_seed

    zbins = cache.index["zbin"][rows]
    priors = ckpt.priors
    src = diffusion_data(cache, rows, bool(cfg.model.joint_mask))
    image_channels = data_channels(cfg) - 1
    allowed = allowed_regions(src[:, :image_channels], zbins, priors, cfg.diagnostics)
    labels = np.full(len(rows), label, np.int64)
    z = cache.index["z_norm"][rows].astype(np.float32)
    targets = np.zeros((len(rows), *allowed.shape[1:]), bool)
    missing = list(range(len(rows)))
    rngs = [np.random.default_rng([int(s), 1]) for s in seeds]
    if masks == "bank":
        for k in missing:
            placed = bank_mask(cache, int(zbins[k]), str(cache.index["subject_id"][rows[k]]), allowed[k], rngs[k],
                               int(cfg.inpaint.placement_tries))
            if placed is None:
                raise UserError(f"{cache.root}: no bank lesion mask fits inside the brain of slice {rows[k]} "
                                f"in {cfg.inpaint.placement_tries} tries; raise inpaint.placement_tries")
            targets[k] = placed
    else:
        for attempt in range(GENERATED_MASK_TRIES):
            if not missing:
                break
            mask_seeds = np.array([derive_seed(int(s), 2, attempt) for s in seeds[missing]], np.int64)
            drawn = sample_batch(net, cfg, zbins[missing], labels[missing], mask_seeds, priors, device,
                                 z=z[missing])
            check_finite(drawn, ckpt.path)
            drawn = postprocess(drawn, True)[:, -1] > 0
            still = []
            for k, mask in zip(missing, drawn):
                placed = place_mask(mask, allowed[k], rngs[k]) if mask.any() else None
                if placed is None:
                    still.append(k)
                else:
                    targets[k] = placed
            missing = still
        if missing:
            raise UserError(f"the model drew no lesion mask that fits slice {rows[missing[0]]} (z-bin "
                            f"{zbins[missing[0]]}) in {GENERATED_MASK_TRIES} tries; use --masks bank")
    known = src.copy()
    known[:, -1] = np.where(targets, 1.0, -1.0)
    generated = dilate_in_plane(targets, int(cfg.inpaint.dilate_px))
    keep = np.ones_like(known, dtype=bool)
    keep[:, :image_channels] = ~generated[:, None]
    # inpaint.mask_condition: a mask-conditioned network is told the target mask too (its image-given-mask
    # mode, guided by sample.mask_guidance); else the joint mode, the mask known through the kept channel
    condition = known[:, -1:] if cfg.inpaint.mask_condition else None
    images = sample_batch(net, cfg, zbins, labels, seeds, priors, device, source=known, keep=keep, z=z,
                          mask=condition)
    check_finite(images, ckpt.path)
    return {"images": postprocess(images, True), "zbin": zbins, "label": labels, "z": z, "source": src}


def dilate_in_plane(masks: np.ndarray, pixels: int) -> np.ndarray:
    """(n, H, W) bool masks grown by `pixels` steps of the 4-neighbourhood within each slice."""
    if pixels <= 0:
        return masks.copy()
    return ndimage.binary_dilation(masks, structure=IN_PLANE_4, iterations=pixels)


def comparison_grid(sources: np.ndarray, results: np.ndarray, ncols: int = 2) -> np.ndarray:
    """RGB grid, one tile per result: source | result | mask | |result - source| (black 0, white >= 1)."""
    channels = sources.shape[1] - 1
    mask = results[:, -1] > 0
    src, res = image_rgb(sources, channels), image_rgb(results, channels)
    diff = np.abs(results[:, :channels] - sources[:, :channels]).max(axis=1)  # 0 .. 2
    diff_rgb = np.repeat(to_uint8(np.clip(diff, 0, 1) * 2 - 1)[..., None], 3, axis=-1)
    return tile_grid([src, res, mask_rgb(mask), diff_rgb], ncols)


def check_result_count(n: int, cfg, memory_bytes: int | None = None) -> None:
    """UserError unless the `n` results (held in memory until samples.npz is written: each result and its
    source slice, image and mask channels, float32) fit in this machine's memory."""
    import os

    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    size = int(cfg.data.image_size)
    per_result = 2 * (int(cfg.model.image_channels) + 1) * size * size * 4
    most = max(int(memory_bytes // per_result), 1)
    if n > most:
        raise UserError(f"--n {n}: {n} results of {size}x{size} px would need {n * per_result / 2**30:.3g} GiB of "
                        f"memory, this machine has {memory_bytes / 2**30:.3g} GiB; give at most --n {most} (run "
                        "several inpaint commands with different sample.seed for more)")


def inpaint(ckpt_path: str | Path, source: str | Path, out: str | Path, split: str = "train",
            masks: str = "bank", n: int = 32, config: Any = None, overrides=(),
            overwrite: bool = False) -> Path:
    """The `jsddpm inpaint` stage. Returns the output folder."""
    import torch

    from ..io import atomic_dir, write_run_record
    from ..seeding import derive_seed
    from .fidelity import draw_faithful, fidelity_scorer, write_fidelity_csv
    from .sampling import sample_devices
    from .sources import check_trained_on

    if masks not in MASK_SOURCES:
        raise UserError(f"--masks {masks}: use one of {', '.join(MASK_SOURCES)}")
    if n < 1:
        raise UserError(f"--n {n}: give at least 1 result")
    check_output_folder(out, overwrite, (ckpt_path, source))
    ckpt = Checkpoint.load(ckpt_path)
    cfg = resolve_generation_config(ckpt, config, overrides, extra_sections=("inpaint",))
    check_result_count(n, cfg)
    if not ckpt.joint:
        raise UserError(f"{ckpt_path}: the model draws images without masks (model.joint_mask=false); "
                        "inpaint needs a joint image + mask model")
    if cfg.inpaint.mask_condition and not ckpt.mask_conditioned:
        raise UserError(f"{ckpt_path}: inpaint.mask_condition=true needs a model trained with "
                        "model.mask_conditioning=true; drop the override or train such a model")
    label = lesion_label(ckpt.classes, int(cfg.model.num_classes))
    threshold_key = "sample.min_fidelity"
    if cfg.inpaint.min_fidelity is not None:  # inpainted pairs' own threshold (config.yaml records it as applied)
        cfg.sample.min_fidelity, threshold_key = cfg.inpaint.min_fidelity, "inpaint.min_fidelity"
    scoring = cfg.sample.min_fidelity is not None or bool(cfg.sample.score_fidelity)
    cache = open_source_cache(source, split, cfg, ckpt.classes)
    if scoring:  # the reference segmenter is the training cache's: --source must be that cache then
        check_trained_on(cache, ckpt, "--source")
    order = source_order(cache, split, int(cfg.sample.seed))
    rows, indices = order[np.arange(n) % len(order)], np.arange(n, dtype=np.int64) // len(order)
    seeds = np.array([derive_seed(int(cfg.sample.seed), r, i) for r, i in zip(rows, indices)], np.int64)
    score = fidelity_scorer(cache, cfg, ckpt) if scoring else None
    device = sample_devices(str(cfg.sample.device))[0]  # one device: results are few and batched
    net = ckpt.model(bool(cfg.sample.use_ema), device)
    batch = int(cfg.sample.batch_size)

    def draw(positions: np.ndarray, draw_seeds: np.ndarray) -> dict:
        parts: list[dict] = []
        for start in range(0, len(positions), batch):
            sl = slice(start, start + batch)
            with torch.no_grad():
                parts.append(inpaint_batch(net, cfg, ckpt, cache, rows[positions[sl]], draw_seeds[sl], label, masks,
                                           device))
            print(f"inpaint: {min(start + batch, len(positions))}/{len(positions)} results", flush=True)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    with atomic_dir(out, overwrite=overwrite) as tmp:
        result = draw_faithful(draw, seeds, score, cfg.sample.min_fidelity, int(cfg.sample.fidelity_tries),
                               progress=lambda msg: print(msg, flush=True), threshold_key=threshold_key)
        res, kept = result.arrays, result.kept
        write_samples(tmp / "samples.npz", res["images"], res["zbin"], res["label"], int(cfg.data.n_zbins),
                      z=res["z"], index=indices[kept], seed=result.seeds, source_index=rows[kept],
                      cache_fingerprint=ckpt.cache_fingerprint, **result.fields())
        if score is not None:
            write_fidelity_csv(tmp / "fidelity.csv", result, {"source_index": rows, "index": indices})
            print(result.summary(), flush=True)
        shown = np.linspace(0, len(kept) - 1, min(len(kept), 16)).round().astype(int)
        save_png(tmp / "grid_inpaint.png", comparison_grid(res["source"][shown], res["images"][shown]))
        write_run_record(tmp, cfg)
    given = f", the mask given at mask guidance {cfg.sample.mask_guidance:g}" if cfg.inpaint.mask_condition else ""
    print(f"inpaint: {len(kept)} results ({masks} masks{given}) -> {Path(out) / 'samples.npz'}")
    return Path(out)
