"""Scoring lesion predictions against true masks: per-slice counts (pixels, lesions, false-positive
components), per-unit sums, the metrics as ratios of those sums, and per-pair Dice. Pure numpy / scipy."""

from __future__ import annotations

import numpy as np

# columns of `unit_sums`: TP / predicted / true pixels over lesion slices, true lesions, detected lesions,
# false-positive components, slices, whether the unit holds a lesion
SUM_COLUMNS = ("tp", "pred", "true", "lesions", "detected", "fp", "slices", "has_lesion")

_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True  # 8-connected within a slice, never across slices


def _components(masks: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Labels of the 2-D connected components of every slice, their count, and each one's slice."""
    from scipy import ndimage

    labels, n = ndimage.label(masks, structure=_IN_PLANE_8)
    owner = np.zeros(n + 1, dtype=np.int64)
    owner[labels[labels > 0]] = np.nonzero(labels)[0]
    return labels, n, owner[1:]


def slice_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per slice: TP / predicted / true pixels, true lesions (8-connected components), detected lesions
    (touched by any predicted pixel), false-positive components (touching no true lesion). `pred`,
    `truth`: (N, H, W) bool. Every metric is a ratio of sums of these."""
    n = len(truth)
    flat_p, flat_t = pred.reshape(n, -1), truth.reshape(n, -1)
    t_lab, n_t, t_owner = _components(truth)
    p_lab, n_p, p_owner = _components(pred)
    detected = np.zeros(n_t + 1, dtype=bool)
    detected[t_lab[pred]] = True
    touches = np.zeros(n_p + 1, dtype=bool)
    touches[p_lab[truth]] = True
    return {"tp": (flat_p & flat_t).sum(axis=1).astype(float), "pred": flat_p.sum(axis=1).astype(float),
            "true": flat_t.sum(axis=1).astype(float),
            "lesions": np.bincount(t_owner, minlength=n).astype(float),
            "detected": np.bincount(t_owner, weights=detected[1:], minlength=n),
            "fp": np.bincount(p_owner, weights=~touches[1:], minlength=n),
            "slices": np.ones(n)}


def unit_sums(counts: dict[str, np.ndarray], unit: np.ndarray) -> np.ndarray:
    """(n_units, 8) sums per unit (a subject, or a slice), columns `SUM_COLUMNS`: TP and predicted pixels
    count over lesion slices only. `unit`: (N,) indices 0..n_units-1."""
    les = counts["true"] > 0
    n_units = int(unit.max()) + 1 if len(unit) else 0
    cols = [counts["tp"] * les, counts["pred"] * les, counts["true"], counts["lesions"], counts["detected"],
            counts["fp"], counts["slices"]]
    sums = np.stack([np.bincount(unit, weights=c, minlength=n_units) for c in cols], axis=1)
    return np.concatenate([sums, (sums[:, 2] > 0)[:, None].astype(float)], axis=1)


def metrics_from_sums(sums: np.ndarray) -> dict[str, float]:
    """The four metrics of one segmenter from its `unit_sums` (n_units, 8): `dice` (2 TP / (predicted +
    true) pooled over the lesion slices), `sensitivity` (detected / true lesions), `fp_per_slice` and
    `subject_dice` (each lesion unit's pooled Dice, averaged over those units). NaN where undefined."""
    tot = sums.sum(axis=0)
    has_lesion = sums[:, 7] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        unit_dice = 2 * sums[has_lesion, 0] / (sums[has_lesion, 1] + sums[has_lesion, 2])
        return {"dice": float(2 * tot[0] / (tot[1] + tot[2])), "sensitivity": float(tot[4] / tot[3]),
                "fp_per_slice": float(tot[5] / tot[6]),
                "subject_dice": float(unit_dice.mean()) if has_lesion.any() else float("nan")}


def pooled_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2 TP / (predicted + true) pooled over the slices of `truth` that hold a lesion (NaN without any)."""
    les = truth.reshape(len(truth), -1).any(axis=1)
    p, t = pred[les], truth[les]
    denom = p.sum() + t.sum()
    return float(2 * (p & t).sum() / denom) if denom else float("nan")


def pair_dice(pred: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) Dice of each (prediction, mask) pair: 2 |P and M| / (|P| + |M|); 1.0 where both are empty (they
    agree that there is no lesion). `pred`, `masks`: (N, H, W) bool."""
    p, m = np.asarray(pred, bool), np.asarray(masks, bool)
    axes = tuple(range(1, m.ndim))  # not reshape(n, -1): an empty set has no -1 to infer
    inter, total = (p & m).sum(axis=axes), p.sum(axis=axes) + m.sum(axis=axes)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
