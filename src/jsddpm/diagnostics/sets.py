"""The sets the diagnostics compare: `ImageSet` (one side of a comparison) and reading sets from disk.

This is the wing's input edge, the one diagnostics module besides `stage.py` that reads files. Inputs
(each of real / synthetic / train):
- a slice cache folder (`images.npy` + `index.csv`; masks from `masks.npy`), one split of it;
- a generation folder holding `samples.npz` (its `config.yaml` says how many image channels);
- an `.npz` with `images` (N, C, H, W) in [-1, 1] and optional `zbin`, `label`, `subject`, `has_mask`.
  Without `has_mask` or `--image-channels`, C == 2 or C == 4 means the last channel is the mask.

`Sets` is what a family's run receives: the real and synthetic sets, the generator's training images
(memorisation) and, loaded on first use, real training slices with masks (utility's segmenters) and the
reference lesion segmenter (pairing; `stored_reference_segmenter` finds or trains the stored one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:
    from ..segmentation import Segmenter


@dataclass
class ImageSet:
    """One side of a comparison: image channels, optional binary masks and per-sample metadata."""

    images: np.ndarray  # (N, C, H, W) float32 in [-1, 1], image channels only
    masks: np.ndarray | None = None  # (N, H, W) bool
    subject: np.ndarray | None = None  # (N,) subject ids: resampling and splits keep subjects whole
    zbin: np.ndarray | None = None
    label: np.ndarray | None = None
    source: dict = field(default_factory=dict)  # where it came from, for the output's record

    def __post_init__(self):
        if self.images.ndim != 4:
            raise UserError(f"{self.source.get('path', 'images')}: expected (N, C, H, W) images, "
                            f"got shape {self.images.shape}; reshape the array")
        n = len(self.images)
        for name in ("masks", "subject", "zbin", "label"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise UserError(f"{self.source.get('path', name)}: '{name}' has {len(v)} entries for "
                                f"{n} images; give one per image")

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        def pick(v):
            return None if v is None else v[idx]
        return ImageSet(np.asarray(self.images[idx]), pick(self.masks), pick(self.subject),
                        pick(self.zbin), pick(self.label), dict(self.source))


@dataclass
class Sets:
    """What a family's run gets. `real_train` loads on first use: only the families that need real
    training slices (utility) pay for reading them, and a set that cannot be had raises `UserError`
    saying why (the runner then records the family as skipped)."""

    real: ImageSet
    synthetic: ImageSet
    train: ImageSet | None = None  # the generator's training images (memorisation)
    load_real_train: Callable[[], ImageSet] | None = None  # real training slices with masks, disjoint from real
    # the reference lesion segmenter (pairing); None: trained on real_train when asked for, not stored
    load_segmenter: Callable[[], Segmenter] | None = None
    _segmenter: Segmenter | None = field(default=None, init=False, repr=False)

    @property
    def has_masks(self) -> bool:
        return self.real.masks is not None and self.synthetic.masks is not None

    @cached_property
    def real_train(self) -> ImageSet:
        if self.load_real_train is None:
            raise UserError("no real training slices given (load_real_train)")
        return self.load_real_train()

    def reference_segmenter(self, dcfg, progress=None) -> Segmenter:
        """The reference lesion segmenter, made once: `load_segmenter()` (the stage's: stored and reused),
        else trained on `real_train` exactly as `segmentation.reference_segmenter` trains it (the
        `diagnostics.utility_*` settings, `seed`), kept in memory only."""
        if self._segmenter is None:
            if self.load_segmenter is not None:
                self._segmenter = self.load_segmenter()
            else:
                from ..segmentation import settings_from_config, train_reference

                train = self.real_train
                if train.masks is None or not train.masks.any():
                    raise UserError(f"{train.source.get('path', 'real training set')}: no lesions in the real "
                                    "training slices; the reference segmenter cannot learn to find them")
                if progress:
                    progress(f"  segmenter: training the reference segmenter on {len(train)} real training slices")
                seg = train_reference(train.images, train.masks, train.subject, settings_from_config(dcfg),
                                      int(dcfg.seed))
                seg.info["source"] = "trained (not stored)"
                self._segmenter = seg
        return self._segmenter


# ------------------------------------------------------------------------------------ loading
def _cache_set(path: Path, split: str, role: str) -> ImageSet:
    from ..data.cache import load_cache

    cache = load_cache(path)
    idx = cache.indices(split)
    if len(idx) == 0:
        present = sorted(set(cache.index["split"].tolist())) if "split" in cache.index else []
        fix = "give the training set with --train" if role == "train" else f"choose another with --{role}-split"
        raise UserError(f"{path}: no slices in split '{split}' (splits present: {', '.join(present)}); {fix}")
    images = np.asarray(cache.images[idx], dtype=np.float32)
    masks = None if cache.masks is None else np.asarray(cache.masks[idx])[:, 0].astype(bool)
    def col(name):
        return cache.index[name][idx] if name in cache.index else None
    subjects = col("subject_id")
    source = {"path": str(path), "kind": "cache", "split": split, "n": len(idx),
              "n_subjects": None if subjects is None else len(np.unique(subjects))}
    return ImageSet(images, masks, subjects, col("zbin"), col("label"), source)


def _split_channels(images: np.ndarray, path: Path, image_channels: int | None, has_mask) -> tuple:
    c = images.shape[1]
    if image_channels is not None:
        if c not in (image_channels, image_channels + 1):
            raise UserError(f"{path}: images have {c} channels, which fits neither {image_channels} image "
                            "channels nor image + mask; fix --image-channels")
        n_img = image_channels
    elif has_mask is not None:
        n_img = c - 1 if bool(has_mask) else c
    else:
        n_img = c - 1 if c in (2, 4) else c
    if n_img not in (1, 3):
        raise UserError(f"{path}: {n_img} image channels; expected 1 or 3 (give --image-channels)")
    masks = images[:, n_img] > 0 if c > n_img else None
    return np.ascontiguousarray(images[:, :n_img]), masks


def _npz_set(path: Path, role: str, image_channels: int | None, kind: str = "npz") -> ImageSet:
    from ..io import reading

    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{path}: cannot read as .npz ({exc}); give an .npz written by numpy.savez") from None
    with data, reading(path, ".npz set", "save plain numeric arrays (no Python objects) with numpy.savez"):
        if "images" not in data.files:
            raise UserError(f"{path}: no 'images' array (found {', '.join(data.files) or 'nothing'}); "
                            "save the set as images=(N, C, H, W) in [-1, 1]")
        images = np.asarray(data["images"], dtype=np.float32)
        meta = {k: np.asarray(data[k]) for k in ("zbin", "label", "subject") if k in data.files}
        has_mask = data["has_mask"].item() if "has_mask" in data.files else None
    if images.ndim != 4:
        raise UserError(f"{path}: 'images' has shape {images.shape}; expected (N, C, H, W)")
    if len(images) == 0:
        raise UserError(f"{path}: 'images' holds 0 images; give a set with at least one image")
    if not np.isfinite(images).all():
        raise UserError(f"{path}: 'images' contains NaN or inf; regenerate or clean the set")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise UserError(f"{path}: intensities span [{lo:.3g}, {hi:.3g}]; rescale the images to [-1, 1]")
    imgs, masks = _split_channels(images, path, image_channels, has_mask)
    source = {"path": str(path), "kind": kind, "n": len(imgs)}
    if "subject" in meta:
        source["n_subjects"] = len(np.unique(meta["subject"]))
    return ImageSet(imgs, masks, meta.get("subject"), meta.get("zbin"), meta.get("label"), source)


def _generation_channels(folder: Path) -> int | None:
    cfg_path = folder / "config.yaml"
    if not cfg_path.is_file():
        return None
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(cfg_path)
    return int(OmegaConf.select(cfg, "model.image_channels", default=1) or 1)


def load_set(path, role: str = "real", split: str = "test", image_channels: int | None = None) -> ImageSet:
    """An `ImageSet` from a cache folder (its `split`), a generation folder or an .npz file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found; give a slice cache folder, a generation folder or an .npz file")
    if path.is_dir():
        if (path / "images.npy").is_file():
            return _cache_set(path, split, role)
        if (path / "samples.npz").is_file():
            channels = image_channels or _generation_channels(path)
            s = _npz_set(path / "samples.npz", role, channels, kind="generation")
            s.source["path"] = str(path)
            return s
        raise UserError(f"{path}: neither a slice cache (images.npy) nor a generation folder (samples.npz); "
                        f"give one of those or an .npz file for --{role}")
    if path.suffix != ".npz":
        raise UserError(f"{path}: unsupported file type; give a slice cache folder, a generation folder "
                        "or an .npz with 'images'")
    return _npz_set(path, role, image_channels)


def generator_train_set(real_path, real: ImageSet, dcfg, train_path=None,
                        image_channels: int | None = None) -> ImageSet | None:
    """The generator's training images (memorisation's reference): `train_path` when given, else the
    train split of a real cache (the generator trained on it) unless the real set is that split; None
    when there is none (memorisation is then skipped and the report says why)."""
    if train_path:
        return load_set(train_path, "train", "train", image_channels)
    if real.source.get("kind") != "cache" or dcfg.real_split in ("train", "all"):
        return None
    try:
        train = load_set(real_path, "train", "train", image_channels)
    except UserError:
        return None  # no train split
    train.source["inferred"] = "train split of the real cache"
    return train


def real_training_set(real_path, real: ImageSet, dcfg, train: ImageSet | None = None,
                      image_channels: int | None = None) -> ImageSet:
    """Real training slices with masks for the utility segmenters: the real cache's
    `utility_train_split`, else `train` (--train)."""
    if real.source.get("kind") == "cache":
        split = str(dcfg.utility_train_split)
        if split in (dcfg.real_split, "all"):
            raise UserError(f"diagnostics.utility_train_split={split} overlaps the real test split "
                            f"'{dcfg.real_split}'; train the segmenters on another split (e.g. train)")
        return load_set(real_path, "train", split, image_channels)
    if train is not None:
        return train
    raise UserError(f"{real_path}: utility needs real training slices with masks; give a slice cache as --real "
                    "(its train split trains the segmenters) or the training set with --train")


def stored_reference_segmenter(real_path, dcfg, store_dir, lookup=(), shown_dir=None, progress=None) -> Segmenter:
    """The reference segmenter of the real cache `real_path` (`segmentation.reference_segmenter`: trained
    on its `utility_train_split` under the `utility_*` settings): loaded from the first folder of `lookup`
    (e.g. the synthetic set's generation folder, whose fidelity scores then come from the very same
    file) that holds the file for this cache and these settings, else loaded from or trained into
    `store_dir`. `shown_dir`: the folder the file will end up in when `store_dir` is a temporary one
    (the output folder under construction); its info's `path` names it."""
    from ..data.cache import load_cache
    from ..segmentation import reference_segmenter

    seg = reference_segmenter(load_cache(real_path), dcfg, store_dir, progress, lookup)
    if shown_dir is not None and Path(seg.info["path"]).parent == Path(store_dir):
        seg.info["path"] = str(Path(shown_dir) / Path(seg.info["path"]).name)
    return seg


def generator_config_source(synthetic_path) -> Path | None:
    """The config.yaml that describes how the synthetic set was made, when there is one."""
    p = Path(synthetic_path)
    folder = p if p.is_dir() else (p.parent if p.name == "samples.npz" else None)
    if folder is not None and (folder / "config.yaml").is_file():
        return folder / "config.yaml"
    return None
