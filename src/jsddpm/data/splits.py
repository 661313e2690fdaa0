"""Subject-level train/val/test splits stratified by group, and k-fold assignment over train+val."""

from __future__ import annotations

import numpy as np

from ..errors import UserError

SPLITS = ("train", "val", "test")


def split_counts(n: int, fractions) -> list[int]:
    """Subjects per split for one group: largest remainder rounding of n * fractions, then at least one
    subject in each split with a non-zero fraction (taken from the largest split) when n allows it."""
    fractions = np.asarray(fractions, dtype=np.float64)
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    if n >= (fractions > 0).sum():
        for k in np.flatnonzero((fractions > 0) & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    return counts.tolist()


def assign_splits(subject_ids, groups, fractions, n_folds: int, seed: int, source: str = "manifest"):
    """Per subject: (split name, fold) with fold -1 for test subjects.

    Within each group the subjects are shuffled with `seed` and cut by `split_counts`; folds are dealt
    round-robin within each group so that they are stratified too. A split with a non-zero fraction
    that ends up empty raises a UserError naming `source`.
    """
    subject_ids = list(subject_ids)
    groups = list(groups)
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    fold_of: dict[str, int] = {}
    next_fold = 0
    for group in sorted(set(groups)):
        members = [s for s, g in zip(subject_ids, groups) if g == group]
        members = [members[i] for i in rng.permutation(len(members))]
        counts = split_counts(len(members), fractions)
        start = 0
        for name, count in zip(SPLITS, counts):
            for s in members[start:start + count]:
                split_of[s] = name
            start += count
        for s in members:
            if split_of[s] == "test":
                fold_of[s] = -1
            else:
                fold_of[s] = next_fold % max(n_folds, 1)
                next_fold += 1
    for name, fraction in zip(SPLITS, fractions):
        if fraction > 0 and name not in split_of.values():
            raise UserError(f"{source}: split '{name}' would be empty with {len(subject_ids)} subjects and "
                            f"data.split_fractions={list(fractions)}; add subjects or set its fraction to 0")
    return [split_of[s] for s in subject_ids], [fold_of[s] for s in subject_ids]
