"""Folders of 2D images (ROOT/<class>/*.png|jpg|tif) -> the same slice cache as volumes give.

Each image is its own "subject" (subject_id = its path under ROOT); labels are the sorted class
folder names; there are no masks and one z-bin. The index keeps each file's path (`path` column) so
that a dataset can instead read and resize the original files on the fly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(sorted class names, [(path relative to root, class)]) with one-line errors for empty parts."""
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found; give ROOT holding one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class sub-folders; put the images in ROOT/<class>/")
    files = []
    for name in classes:
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserError(f"{root / name}: class folder has no .png/.jpg/.tif images; add some or remove it")
        files += [(f"{name}/{p.name}", name) for p in found]
    return classes, files


def open_image(path: Path, load: bool = True):
    """A Pillow image; `load=False` reads only the header (mode, size)."""
    from PIL import Image

    try:
        img = Image.open(path)
        if load:
            img.load()
    except Exception as exc:  # Pillow raises several types for truncated or foreign files
        raise UserError(f"{path}: not a readable image ({type(exc).__name__}); re-export or remove it") from None
    return img


def is_colour(img) -> bool:
    if img.mode == "P":
        rgb = np.asarray(img.convert("RGB"))
        return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
    return img.mode not in _GRAY_MODES


def image_to_array(img, channels: int) -> np.ndarray:
    """float32 (channels, H, W) in [-1, 1]: 8-bit images on their fixed scale, deeper ones min-max."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        data = np.asarray(img, dtype=np.float32)
        lo, hi = float(data.min()), float(data.max())
        data = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
        data = data[None]
    else:
        data = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255.0
        data = data.transpose(2, 0, 1) if data.ndim == 3 else data[None]
    if data.shape[0] != channels:  # a grayscale file in an RGB set
        data = np.repeat(data, channels, axis=0)
    return data * 2.0 - 1.0


def resize_array(data: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) float -> (C, size, size) with Pillow's antialiased bilinear filter."""
    from PIL import Image

    if data.shape[1:] == (size, size):
        return data.astype(np.float32, copy=False)
    return np.stack([np.asarray(Image.fromarray(ch.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR)) for ch in data]).astype(np.float32)


def read_image(path: Path, channels: int, size: int | None) -> np.ndarray:
    """One file as float32 (channels, H, W) in [-1, 1], resized to size x size unless size is None."""
    img = open_image(path)
    if img.mode == "F" and not np.isfinite(np.asarray(img, dtype=np.float32)).all():
        # min-max scaling would turn one NaN into a blank image and one Inf into NaN everywhere
        raise UserError(f"{path}: image contains NaN or Inf pixels; replace them (e.g. with 0) and re-save")
    data = image_to_array(img, channels)
    return np.clip(resize_array(data, size), -1.0, 1.0) if size else data


def build_image_cache(root: Path, out: Path, cfg) -> dict:
    """ROOT/<class>/* images -> slice cache at `out` (atomic). Returns stats.json's content."""
    from ..io import atomic_dir
    from .cache import cache_stats, occupancy_priors, write_cache
    from .splits import assign_splits

    data_cfg = cfg.data
    with atomic_dir(out) as tmp:
        classes, files = list_image_folder(root)
        headers = [(rel, open_image(root / rel, load=False)) for rel, _ in files]  # cheap: mode and size
        channels = 3 if any(is_colour(img) for _, img in headers) else 1
        size = data_cfg.image_size if data_cfg.resize_images else None
        if size is None:
            first_rel, first = headers[0]
            for rel, img in headers:
                if img.size != first.size:
                    raise UserError(f"{root / rel}: size {img.size} differs from {first_rel}'s {first.size}; "
                                    "set data.resize_images=true or resize the files")
        multi = [rel for rel, img in headers if getattr(img, "n_frames", 1) > 1]
        if multi:
            print(f"cache: warning: {len(multi)} file(s) hold several frames (e.g. {root / multi[0]}); "
                  "only the first frame of each is used", file=sys.stderr)
        for _, img in headers:
            img.close()
        images = np.stack([read_image(root / rel, channels, size) for rel, _ in files])
        ids = [rel for rel, _ in files]
        groups = [name for _, name in files]
        splits, folds = assign_splits(ids, groups, list(data_cfg.split_fractions), data_cfg.n_folds,
                                      data_cfg.seed, str(root))
        n = len(files)
        index = {
            "subject_id": np.asarray(ids), "group": np.asarray(groups),
            "label": np.asarray([classes.index(g) for g in groups], dtype=np.int64),
            "split": np.asarray(splits), "fold": np.asarray(folds, dtype=np.int64),
            "z": np.zeros(n, np.int64), "z_norm": np.full(n, 0.5, np.float32), "zbin": np.zeros(n, np.int64),
            "has_lesion": np.zeros(n, np.int64), "lesion_area": np.zeros(n, np.int64),
            "path": np.asarray(ids),
        }
        foreground = images.max(axis=1) > -1.0 + 1e-6
        priors = occupancy_priors(foreground, index["zbin"], index["split"] == "train", 1)
        stats = cache_stats(index, classes, 1, {
            "source": "images", "image_root": str(root.resolve()), "channels": channels,
            "image_size": int(images.shape[-1]), "image_shape": list(images.shape[-2:]), "joint": False})
        write_cache(tmp, cfg, images, None, index, priors, stats)
    return stats
