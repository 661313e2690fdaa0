"""Real slices as starting points: the source cache's checks, SDEdit's choice of source slices, and the
real lesion-mask bank (training-split masks) with its placements: inpainting's random placement inside a
source's brain, and generate --masks bank's small jitter inside the z-bin's prior."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..config import SPLITS
from ..errors import UserError


def open_source_cache(path: str | Path, split: str, cfg, classes: list[str], option: str = "--source"):
    """The slice cache behind --source (or `option`), refused in one line unless its slices fit the
    checkpoint's model."""
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
            raise UserError(f"{cache.root}: {msg}; give {option} the cache the checkpoint was trained on")
    return cache


def training_cache(path, ckpt, cfg, option: str = "--cache", require_fingerprint: bool = False):
    """The cache the checkpoint was trained on: `path` (default: the checkpoint's data.cache_dir), refused
    in one line unless its fingerprint is the one the checkpoint recorded: the bank's masks and the
    reference segmenter come from that very cache's training split (another cache's training subjects
    may be this one's test subjects). A checkpoint that recorded none (an older jsddpm) is refused when
    `require_fingerprint`, else the cache is used with a printed note."""
    path = path if path is not None else (str(cfg.data.cache_dir) if cfg.data.cache_dir else None)
    if path is None:
        raise UserError(f"{ckpt.path}: its config names no data.cache_dir; give {option} the cache the checkpoint "
                        "was trained on")
    cache = open_source_cache(path, "train", cfg, ckpt.classes, option)
    check_trained_on(cache, ckpt, option, require_fingerprint)
    return cache


def check_trained_on(cache, ckpt, option: str = "--cache", require_fingerprint: bool = False) -> None:
    """`training_cache`'s fingerprint check on an open cache."""
    recorded = ckpt.cache_fingerprint
    if recorded is None:
        unverified = f"{ckpt.path} records no training-cache fingerprint (an older checkpoint)"
        if require_fingerprint:
            raise UserError(f"{unverified}: cannot check that {cache.root} is its training cache, so its bank "
                            "masks might be test subjects'; retrain with this version")
        print(f"note: {unverified}; {cache.root} is taken as its training cache unchecked", flush=True)
    elif recorded != cache.fingerprint:
        raise UserError(f"{cache.root}: not the cache {ckpt.path} was trained on (fingerprint {cache.fingerprint}, "
                        f"the checkpoint's {recorded}); give {option} its training cache")


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


# ------------------------------------------------------------------------- the real lesion-mask bank
def nearest_zbin_rows(cache, rows: np.ndarray, zbin: int) -> np.ndarray:
    """The `rows` at `zbin`, else at the nearest z-bins that have some (`rows` non-empty)."""
    distance = np.abs(cache.index["zbin"][rows] - zbin)
    return rows[distance == distance.min()]


def bank_candidates(cache, zbin: int, subject: str | None = None) -> np.ndarray:
    """Train-split lesion slices (of subjects other than `subject`, when given) at `zbin`, else at the
    nearest z-bins that have some. Never another split: the bank's masks become training pairs."""
    idx = cache.index
    rows = np.flatnonzero((idx["split"] == "train") & (idx["has_lesion"] == 1))
    if subject is not None:
        rows = rows[idx["subject_id"][rows] != subject]
    if len(rows) == 0:
        who = "another training subject" if subject is not None else "a training subject"
        raise UserError(f"{cache.root}: no lesion mask of {who} for the bank; use --masks generated")
    return nearest_zbin_rows(cache, rows, zbin)


def crop_to_content(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def rotated(shape: np.ndarray, degrees: float) -> np.ndarray | None:
    """A cropped bool mask rotated by `degrees` and cropped again; None when nothing is left. Padded and
    interpolated linearly, then cut at 1/2: keeps the area (nearest-neighbour rotation of a small mask
    loses up to half of it at the edges)."""
    padded = np.pad(shape.astype(np.float32), 2)
    out = ndimage.rotate(padded, degrees, order=1, reshape=True) >= 0.5
    return crop_to_content(out) if out.any() else None


def place_mask(mask: np.ndarray, allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """`mask` (bool, non-empty) flipped left-right with probability 1/2, rotated by a uniform angle and
    put at a uniform position where all of it lies inside `allowed`; None when it fits nowhere."""
    shape = crop_to_content(mask)
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    shape = rotated(shape, rng.uniform(0.0, 360.0))
    if shape is None:
        return None
    h, w = shape.shape
    H, W = allowed.shape
    if h > H or w > W:
        return None
    # top-left corners (y, x) at which every mask pixel lands on an allowed pixel
    outside = (~allowed).astype(np.float32)
    hits = ndimage.correlate(outside, shape.astype(np.float32), mode="constant", cval=1.0,
                             origin=(-(h // 2), -(w // 2)))
    corners = np.argwhere(hits[:H - h + 1, :W - w + 1] < 0.5)
    if len(corners) == 0:
        return None
    y, x = corners[rng.integers(len(corners))]
    placed = np.zeros_like(allowed)
    placed[y:y + h, x:x + w] = shape
    return placed if not (placed & ~allowed).any() else None


JITTER_DEGREES = 15.0  # generate --masks bank with sample.mask_augment: the largest turn of a bank mask
JITTER_SHIFT = 1 / 16  # ... and its largest shift, as a fraction of the side (3 px at 48 px)
JITTER_TRIES = 20  # jitters tried before the mask is kept as it is


def jitter_mask(mask: np.ndarray, allowed: np.ndarray, rng: np.random.Generator, degrees: float = JITTER_DEGREES,
                shift: float = JITTER_SHIFT, tries: int = JITTER_TRIES) -> np.ndarray:
    """A variation of `mask` (bool (H, W)) near where it is: mirrored left-right across the image's
    midline with probability 1/2 (the other hemisphere), turned by up to `degrees` about its box's centre
    and shifted by up to `shift` x the side, lying wholly inside `allowed`; the mask itself when no try
    fits (or it is empty)."""
    if not mask.any():
        return mask.copy()
    H, W = mask.shape
    most = max(int(round(shift * max(H, W))), 0)
    for _ in range(tries):
        base = mask[:, ::-1] if rng.random() < 0.5 else mask
        ys, xs = np.nonzero(base)
        centre = ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2)
        shape = rotated(crop_to_content(base), rng.uniform(-degrees, degrees))
        dy, dx = rng.integers(-most, most + 1, size=2)
        if shape is None:
            continue
        h, w = shape.shape
        y, x = int(round(centre[0] - (h - 1) / 2)) + dy, int(round(centre[1] - (w - 1) / 2)) + dx
        if y < 0 or x < 0 or y + h > H or x + w > W:
            continue
        placed = np.zeros_like(mask, dtype=bool)
        placed[y:y + h, x:x + w] = shape
        if not (placed & ~allowed).any():
            return placed
    return mask.copy()
