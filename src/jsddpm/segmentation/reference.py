"""The reference segmenter: ONE segmenter trained on a real cache's training split (the utility protocol's
`real` arm, first seed), stored in a small file keyed by (cache fingerprint, settings), so that generation's
fidelity filter and the pairing / utility diagnostics share one trained model.

File: `<store_dir>/segmenter-<key>.pt`, `torch.load(weights_only=True)`-loadable: {"format", "version",
"state_dict", "info"}; info holds the settings, seed, split, cache fingerprint, training record and the
digest of the training data. File I/O lives in `save_segmenter` / `load_segmenter` only.

    seg = reference_segmenter(cache, cfg, out_dir)      # a Segmenter: trained once, then loaded
    masks = seg.predict(images)                         # (N, C, H, W) in [-1, 1] -> (N, H, W) bool
    fidelity = pair_dice(masks, synthetic_masks)        # (N,) per-pair Dice (segmentation.scoring)
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .network import segmentation_unet
from .training import (
    SegmenterSettings,
    one_torch_thread,
    predict_masks,
    settings_from_config,
    split_for_validation,
    train_segmenter,
)

FORMAT = "jsddpm-segmenter"
VERSION = 1


@dataclass
class Segmenter:
    """A trained lesion segmenter: `network` (torch module, eval mode) and `info` (settings, seed, training
    record, data digest; from `reference_segmenter` also path, key, cache_fingerprint, split, source)."""

    network: object
    info: dict

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) bool lesion masks of (N, C, H, W) images in [-1, 1] (probability above 0.5)."""
        return predict_masks(self.network, images)


def data_digest(images: np.ndarray, masks: np.ndarray, subject: np.ndarray | None) -> str:
    """16 hex digits of SHA-256 over a training set's images, masks and subject ids: whether two callers
    hold the same real training slices (in the same order)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    h.update(np.packbits(np.asarray(masks, bool)).tobytes())
    if subject is not None:
        h.update("\0".join(map(str, subject)).encode())
    return h.hexdigest()[:16]


def segmenter_key(fingerprint: str, settings: SegmenterSettings, seed: int, split: str) -> str:
    """16 hex digits naming the stored segmenter of (cache fingerprint, settings, seed, training split)."""
    text = json.dumps({"version": VERSION, "cache": fingerprint, "settings": settings.as_dict(), "seed": int(seed),
                       "split": split}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_reference(images: np.ndarray, masks: np.ndarray, subject: np.ndarray | None,
                    settings: SegmenterSettings, seed: int) -> Segmenter:
    """The real arm's first segmenter: validation subjects carved from the training set, early stopping on
    them. Pure (arrays in, network and record out); `run_utility` trains its `real` arm the same way."""
    t0 = time.perf_counter()
    fit, val = split_for_validation(masks, subject, settings, seed)
    with one_torch_thread():
        model, record = train_segmenter(images[fit], masks[fit], settings, seed, images[val], masks[val])
    record = dict(record, curve=[[int(s), float(d)] for s, d in record["curve"]])
    info = {"settings": settings.as_dict(), "seed": int(seed), "in_channels": int(images.shape[1]),
            "image_size": [int(v) for v in images.shape[2:]], "n_fit": int(len(fit)), "n_val": int(len(val)),
            "n_val_lesion_slices": int(masks[val].reshape(len(val), -1).any(axis=1).sum()),
            "data_digest": data_digest(images, masks, subject), "training": record,
            "seconds": time.perf_counter() - t0}
    return Segmenter(model, info)


def save_segmenter(path, segmenter: Segmenter) -> None:
    """Write the segmenter file atomically (nothing half-written survives a crash)."""
    import torch

    from ..io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "state_dict": segmenter.network.state_dict(),
                "info": segmenter.info}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_segmenter(path) -> Segmenter:
    """The segmenter of a file of `save_segmenter` (network in eval mode); a damaged or foreign file is a
    UserError."""
    import torch

    path = Path(path)
    try:
        blob = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("version") != VERSION:
            raise ValueError("not a jsddpm segmenter file of this version")
        info = blob["info"]
        model = segmentation_unet(int(info["in_channels"]), info["settings"]["widths"])
        model.load_state_dict(blob["state_dict"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: cannot read the stored segmenter ({type(exc).__name__}: {exc}); delete the "
                        "file, the next run trains it again") from exc
    return Segmenter(model.eval(), info)


def segmenter_store(cache_root) -> Path:
    """THE place a cache's reference segmenters live, so that generation's fidelity filter and the
    diagnostics find one another's: `<cache>/segmenters/` (beside the slices they learn; the cache
    fingerprint covers index.csv and stats.json only, so the cache stays the same cache), or, when the cache
    folder cannot be written (a shared read-only cache), `$XDG_CACHE_HOME/jsddpm/segmenters/` (default
    ~/.cache/jsddpm/segmenters/): the file names hold the cache fingerprint, so one folder serves every
    cache."""
    import os

    inside = Path(cache_root) / "segmenters"
    if os.access(inside if inside.is_dir() else Path(cache_root), os.W_OK):
        return inside
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jsddpm" / "segmenters"


def reference_segmenter(cache, cfg, store_dir, progress=None, lookup=()) -> Segmenter:
    """The reference segmenter of `cache` (a `SliceCache` or its folder) under `cfg` (the config or its
    diagnostics section: the `utility_*` keys, `seed`, `utility_train_split`): loaded from the first folder
    of `lookup` (e.g. a synthetic set's generation folder) that holds the file for this (cache fingerprint,
    settings), else from `store_dir` when it holds it, else trained on the cache's training split and
    written to `store_dir`. Its info adds `path`, `key`, `cache_fingerprint`, `split` and `source`
    ("loaded" or "trained") to the record of `train_reference`."""
    from ..data.cache import SliceCache, load_cache

    cache = cache if isinstance(cache, SliceCache) else load_cache(cache)
    dcfg = getattr(cfg, "diagnostics", cfg)
    settings, seed, split = settings_from_config(dcfg), int(dcfg.seed), str(dcfg.utility_train_split)
    fingerprint = cache.fingerprint
    key = segmenter_key(fingerprint, settings, seed, split)
    name = f"segmenter-{key}.pt"
    path = next((Path(d) / name for d in lookup if d and (Path(d) / name).is_file()), Path(store_dir) / name)
    where = {"path": str(path), "key": key, "cache_fingerprint": fingerprint, "split": split}
    if path.is_file():
        stored = load_segmenter(path)
        info = stored.info
        if (info.get("cache_fingerprint"), info.get("settings"), info.get("seed"), info.get("split")) == (
                fingerprint, settings.as_dict(), seed, split):
            return Segmenter(stored.network, dict(info, **where, source="loaded"))
        if progress:  # a file of this name for other inputs: only a hash collision or a hand-made file
            progress(f"segmenter: {path} was made for another cache or settings; training it again")
    idx = cache.indices(split)
    if cache.masks is None or len(idx) == 0:
        raise UserError(f"{cache.root}: the reference segmenter needs lesion masks in split '{split}' "
                        "(diagnostics.utility_train_split); use a joint image + mask cache")
    images = np.asarray(cache.images[idx], dtype=np.float32)
    masks = np.asarray(cache.masks[idx])[:, 0].astype(bool)
    subject = cache.index["subject_id"][idx] if "subject_id" in cache.index else None
    if not masks.any():
        raise UserError(f"{cache.root}: no lesions in split '{split}'; the reference segmenter cannot learn "
                        "to find them")
    if progress:
        progress(f"segmenter: training the reference segmenter on {len(idx)} slices of {cache.root} ({split})")
    trained = train_reference(images, masks, subject, settings, seed)
    trained.info.update(cache_fingerprint=fingerprint, split=split, key=key)
    save_segmenter(path, trained)
    return Segmenter(trained.network, dict(trained.info, **where, source="trained"))
