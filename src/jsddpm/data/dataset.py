"""The training Dataset over a slice cache, and lesion oversampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .cache import SliceCache, load_cache
from .transforms import Augment


def lesion_weights(has_lesion: np.ndarray, factor: float) -> np.ndarray:
    """Sampling weight per slice: `factor` for lesion slices, 1 for the others."""
    return np.where(np.asarray(has_lesion) > 0, float(factor), 1.0)


class SliceDataset(torch.utils.data.Dataset):
    """Rows of one split as dicts: `x` float32 (C[+1], H, W) with the mask channel in {-1, +1} last,
    `label` int64, `zbin` int64, `z` float32 (= z_norm), `prior` float32 (1, H, W).

    With `train=True` and `cfg_data.augment.enabled`, each item is augmented (the same spatial
    transform moves image, mask and prior). With `cfg_data.resize_on_the_fly` on an image-folder
    cache, each item is read from the original file and resized to `cfg_data.image_size`.
    """

    def __init__(self, cache: SliceCache | str | Path, split: str | None, cfg_data, train: bool = True):
        self.cache = cache if isinstance(cache, SliceCache) else load_cache(cache)
        self.rows = self.cache.indices(split)
        if len(self.rows) == 0:
            raise UserError(f"{self.cache.root}: split '{split}' has no slices; rebuild the cache or pick a split")
        self.cfg = cfg_data
        self.augment = Augment.from_config(cfg_data.augment) if train and cfg_data.augment.enabled else None
        self.channels = int(self.cache.images.shape[1])
        self.image_root = None
        if cfg_data.resize_on_the_fly:
            if "path" not in self.cache.index:
                raise UserError(f"{self.cache.root}: data.resize_on_the_fly needs a cache built from an image "
                                "folder (jsddpm cache --images); set it to false for volume caches")
            self.image_root = Path(cfg_data.image_root or self.cache.stats.get("image_root", ""))
            if not self.image_root.is_dir():
                raise UserError(f"{self.image_root}: original image folder not found; set data.image_root")
        size = cfg_data.image_size if self.image_root is not None else self.cache.images.shape[-1]
        priors = torch.from_numpy(np.asarray(self.cache.priors, dtype=np.float32))[:, None]
        if priors.shape[-1] != size:
            priors = F.interpolate(priors, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        self.priors = priors  # (n_zbins, 1, H, W)

    def __len__(self) -> int:
        return len(self.rows)

    def sample_weights(self) -> np.ndarray:
        """Per-item weights for a WeightedRandomSampler (lesion slices x data.lesion_oversample)."""
        return lesion_weights(self.cache.index["has_lesion"][self.rows], self.cfg.lesion_oversample)

    def _image(self, row: int) -> torch.Tensor:
        if self.image_root is not None:
            from .images import read_image

            path = self.image_root / str(self.cache.index["path"][row])
            return torch.from_numpy(read_image(path, self.channels, self.cfg.image_size))
        return torch.from_numpy(np.array(self.cache.images[row], dtype=np.float32))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        index = self.cache.index
        zbin = int(index["zbin"][row])
        image = self._image(row)
        mask = None
        if self.cache.masks is not None:
            mask = torch.from_numpy(np.array(self.cache.masks[row], dtype=np.float32))
        prior = self.priors[zbin]
        if self.augment is not None:
            image, mask, prior = self.augment(image, mask, prior)
        x = image if mask is None else torch.cat([image, mask * 2.0 - 1.0])
        return {
            "x": x.contiguous(),
            "label": torch.tensor(int(index["label"][row]), dtype=torch.int64),
            "zbin": torch.tensor(zbin, dtype=torch.int64),
            "z": torch.tensor(float(index["z_norm"][row]), dtype=torch.float32),
            "prior": prior.contiguous(),
        }


def make_sampler(dataset: SliceDataset, num_samples: int | None = None,
                 generator: torch.Generator | None = None):
    """A WeightedRandomSampler oversampling lesion slices, or None when data.lesion_oversample is 1."""
    if dataset.cfg.lesion_oversample == 1.0:
        return None
    weights = torch.as_tensor(dataset.sample_weights(), dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples or len(weights), replacement=True,
                                                  generator=generator)
