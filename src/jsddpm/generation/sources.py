"""Real slices as starting points: the source cache's checks, SDEdit's choice of source slices, and the
lesion-free sources and real lesion-mask bank of inpainting."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import SPLITS
from ..errors import UserError


def open_source_cache(path: str | Path, split: str, cfg, classes: list[str]):
    """The slice cache behind --source, refused in one line unless its slices fit the checkpoint's model."""
    from ..data.cache import load_cache

    if split not in SPLITS:
        raise UserError(f"--split {split}: unknown split; use one of {', '.join(SPLITS)}")
    cache = load_cache(path)
    _, c, h, w = cache.images.shape
    problems = [
        (h == w == int(cfg.data.image_size), f"slices are {h}x{w} but the model draws {cfg.data.image_size}x"
                                              f"{cfg.data.image_size}"),
        (c == int(cfg.model.image_channels), f"slices have {c} channels but the model {cfg.model.image_channels}"),
        (cache.masks is not None or not cfg.model.joint_mask, "has no masks but the model draws image + mask"),
        (cache.n_zbins == int(cfg.data.n_zbins), f"has {cache.n_zbins} z-bins but the model {cfg.data.n_zbins}"),
        (not classes or cache.classes == classes, f"has classes {cache.classes} but the model {classes}"),
        (len(cache.indices(split)) > 0, f"has no {split} slices"),
    ]
    for ok, msg in problems:
        if not ok:
            raise UserError(f"{cache.root}: {msg}; give --source the cache the checkpoint was trained on")
    return cache


def diffusion_data(cache, rows: np.ndarray, joint_mask: bool) -> np.ndarray:
    """float32 (n, C[+1], H, W) of cache rows as the model sees them (mask last, in {-1, +1})."""
    data = cache.joint(rows)
    return data if joint_mask else data[:, :cache.images.shape[1]]


def sdedit_source_rows(cache, split: str, zbins, labels, indices, seed: int, use_labels: bool) -> np.ndarray:
    """Cache row of the real slice each requested (z-bin, class, index) sample starts from.

    The candidates are the split's slices of that z-bin (and class, when the model has classes), in an
    order shuffled by (seed, z-bin, class); index i takes the i-th, cycling when the spec asks for more
    samples than there are slices. So a sample's source depends on (seed, z-bin, class, index) only."""
    from ..seeding import derive_seed

    rows = cache.indices(split)
    out = np.empty(len(zbins), np.int64)
    order: dict[tuple[int, int], np.ndarray] = {}
    for k, (z, c, i) in enumerate(zip(zbins, labels, indices)):
        key = (int(z), int(c))
        if key not in order:
            match = cache.index["zbin"][rows] == key[0]
            if use_labels:
                match &= cache.index["label"][rows] == key[1]
            candidates = rows[match]
            if len(candidates) == 0:
                what = f"z-bin {key[0]}" + (f", class {key[1]}" if use_labels else "")
                raise UserError(f"{cache.root}: no {split} slice of {what} to start from; drop it from the "
                                "spec or choose another --split")
            order[key] = np.random.default_rng(derive_seed(seed, *key)).permutation(candidates)
        out[k] = order[key][int(i) % len(order[key])]
    return out
