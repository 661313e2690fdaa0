"""Data order and augmentation that a resumed run reproduces exactly.

The order of epoch e is a pure function of (seed, e), and each item's augmentation randomness is
seeded from (seed, e, position), so neither depends on how far the loader had prefetched, on the
number of workers, or on the global RNG when a checkpoint was written. Resuming in the middle of
an epoch skips the batches already trained on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..seeding import derive_seed


class EpochSampler(Sampler):
    """Yields (index, item_seed) pairs for this rank's share of epoch `set_epoch(e)`.

    `weights` (one per item, e.g. lesion oversampling) draws the epoch with replacement; without
    weights it is a permutation. Every epoch is padded to a multiple of `world_size * batch_size`
    by wrapping around, so every rank gets the same whole number of batches. `resume(epoch,
    batches_done)` makes the next iteration of that epoch skip the batches already trained on.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: np.ndarray | None = None):
        if n_items < 1:
            raise ValueError("EpochSampler needs at least one item")
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        per_rank = -(-n_items // world_size)
        self.batches_per_epoch = max(1, -(-per_rank // batch_size))

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, batches_done: int) -> None:
        self._resume = (int(epoch), int(batches_done))

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """All ranks' items of an epoch, in order (a pure function of seed and epoch)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        total = len(self) * self.world_size
        if self.weights is None:
            order = torch.randperm(self.n_items, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n_items, replacement=True, generator=g)
        return order.repeat(-(-total // self.n_items))[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order(self.epoch)
        positions = range(self.rank, len(order), self.world_size)
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = min(self._resume[1] * self.batch_size, len(self))
        self._resume = None
        for k in range(start, len(self)):
            pos = positions[k]
            yield int(order[pos]), derive_seed(self.seed, self.epoch, pos)


class SeededItems(Dataset):
    """Wraps a dataset so that item (index, seed) is drawn with torch, numpy and python RNGs seeded
    from `seed`, leaving the global RNG states as they were."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)
