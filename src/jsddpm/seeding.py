"""Seeds derived from tuples of integers: one leaf module that training (data order, per-step noise) and
generation (per-sample noise) both build on, so that neither imports the other."""

from __future__ import annotations

import numpy as np


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative integers."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample_seeds(seed: int, zbins, labels, indices) -> np.ndarray:
    """The per-sample noise seed: a pure function of (seed, z-bin, class, index)."""
    return np.array([derive_seed(seed, z, c, i) for z, c, i in zip(zbins, labels, indices)], dtype=np.int64)
