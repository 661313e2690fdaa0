"""Family 14, pairing: does each synthetic mask sit on a lesion in its image? (pure numpy on arrays; the
segmenter's predictions come in as arrays or through a `predict` callable)

A synthetic pair can have the right image statistics and the right mask shapes and still fail a
segmenter trained on it: the mask may sit where the image shows no lesion, or the lesion under it may
be too faint. Two views of the agreement, both on the lesion pairs (slices whose mask holds a lesion)
of each set:

- Fidelity: the reference lesion segmenter (`segmentation.reference_segmenter`: trained on the real
  cache's training split, the same file generation's fidelity filter uses) predicts on every image; a
  pair's fidelity is the Dice of that prediction against the pair's mask (`segmentation.pair_dice`).
  `pairing_dice`: the mean fidelity of the synthetic lesion pairs; `pairing_dice_real`: the same on the
  held-out real lesion slices (the ceiling: how well real pairs agree with this segmenter);
  `pairing_dice_ratio` = synthetic / real (1 = synthetic pairs agree as well as real ones do).
- Lesion contrast, per lesion (in-plane 8-connected component of the mask): mean image intensity
  inside it minus the mean over a ring RING_PX = 2-4 px outside it (Euclidean distance to the lesion;
  the first pixel is skipped, it mixes lesion and surround at the edge), within the brain ROI
  (`jsddpm.regions.brain_roi`) and excluding every lesion pixel; a ring pixel belongs to its nearest
  lesion only. In units of the slice's brain intensity SD (ROI minus lesions), so that a set with
  another intensity scale is compared fairly. `lesion_contrast_real` / `_synth`: the means over the
  sets' lesions (signed: hyperintense lesions are positive); `lesion_contrast_ratio` = synthetic / real
  (meaningful when real lesions stand out from their surround, as they must for a segmenter to find
  them). A lesion whose ring holds no brain pixel, or a slice without brain variation, is left out.

`features` holds per-pair values (fidelity, mask area) and per-lesion contrasts owned by their pair, so
the runner resamples them like a resampled family's (families.Resample): bootstrap CIs over synthetic
pairs and real subjects, and the real-vs-real null at the compared sizes (runner.py). Per-pair scores of
every synthetic slice go to `pairing.csv` (`pair_rows`): generation can filter pairs with them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from ..segmentation import pair_dice
from .common import Features, absent, metric
from .regions import IN_PLANE_8, as_masks, brain_roi, gray

NAME = "pairing"
RING_PX = (2.0, 4.0)  # the surround of a lesion: pixels this far from it (inclusive), Euclidean
N_WORST = 8  # synthetic pairs shown in the report, lowest fidelity first


# ------------------------------------------------------------------------------------ contrast
def lesion_contrast(images: np.ndarray, masks: np.ndarray, cfg, ring: tuple[float, float] = RING_PX) -> dict:
    """Per lesion of an (N, C, H, W) / (N, H, W) image stack with (N, H, W) masks: {"contrast" (inside
    mean - ring mean) / brain SD of its slice, "owner" (its slice), "area" (pixels), "surround" (the ring
    mean), "label" (its number in `ndimage.label(masks, IN_PLANE_8)`)}; lesions without a measurable ring
    or brain SD are left out. `cfg`: the diagnostics section (brain ROI settings)."""
    g = gray(images).astype(np.float64)
    m = as_masks(masks, g.shape)
    labels, n = ndimage.label(m, structure=IN_PLANE_8)
    if n == 0:
        empty = np.zeros(0)
        return {"contrast": empty, "owner": empty.astype(np.int64), "area": empty, "surround": empty,
                "label": empty.astype(np.int64)}
    brain = brain_roi(g.astype(np.float32), m, cfg) & ~m
    lab = labels[m] - 1
    area = np.bincount(lab, minlength=n).astype(np.float64)
    inside = np.bincount(lab, weights=g[m], minlength=n) / area
    owner = np.zeros(n, dtype=np.int64)
    owner[lab] = np.nonzero(m)[0]
    ring_sum, ring_count = np.zeros(n + 1), np.zeros(n + 1)
    for i in np.unique(owner):  # 2-D transforms slice by slice: a 3-D one would mix neighbouring slices
        dist, (ny, nx) = ndimage.distance_transform_edt(~m[i], return_indices=True)
        nearest = labels[i][ny, nx]  # the lesion each pixel is nearest to
        sel = (dist >= ring[0]) & (dist <= ring[1]) & brain[i]
        ring_sum += np.bincount(nearest[sel], weights=g[i][sel], minlength=n + 1)
        ring_count += np.bincount(nearest[sel], minlength=n + 1)
    count = brain.sum(axis=(1, 2))
    mean = np.where(count > 0, (g * brain).sum(axis=(1, 2)) / np.maximum(count, 1), np.nan)
    var = np.where(count > 1, (((g - mean[:, None, None]) ** 2) * brain).sum(axis=(1, 2)) / np.maximum(count - 1, 1),
                   np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        surround = ring_sum[1:] / ring_count[1:]
        contrast = (inside - surround) / np.sqrt(var[owner])
    keep = np.isfinite(contrast)
    return {"contrast": contrast[keep], "owner": owner[keep], "area": area[keep], "surround": surround[keep],
            "label": np.flatnonzero(keep) + 1}


# ------------------------------------------------------------------------------------ features
def lesion_pairs(masks: np.ndarray) -> np.ndarray:
    """Indices of the pairs whose mask holds a lesion: the pairs pairing scores."""
    return np.flatnonzero(np.asarray(masks).any(axis=(1, 2)))


def features(images: np.ndarray, masks: np.ndarray, cfg, pred: np.ndarray | None = None) -> Features:
    """Per pair: `area` (mask pixels) and, with the segmenter's predictions `pred` (N, H, W) bool,
    `fidelity` (Dice of prediction vs mask); per lesion (ragged, owned by its pair): `contrast`. Give
    lesion pairs only (`lesion_pairs`): the means run over every pair given."""
    m = as_masks(masks, gray(images).shape)
    per = {"area": m.sum(axis=(1, 2)).astype(np.float64)}
    if pred is not None:
        per["fidelity"] = pair_dice(pred, m)
    lc = lesion_contrast(images, m, cfg)
    return Features(len(m), per, {"contrast": lc["contrast"]}, lc["owner"])


def _mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if len(x) else None


def _ratio(s: float | None, r: float | None) -> float | None:
    return None if s is None or r is None or r == 0 else s / r


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    """The pairing metrics of two sets of lesion-pair features (see the module docstring); the
    fidelity metrics only when both carry predictions."""
    out = {}
    if "fidelity" in real and "fidelity" in synth:
        dr, ds = _mean(real["fidelity"]), _mean(synth["fidelity"])
        out["pairing_dice"] = metric(ds, dr, ds)
        out["pairing_dice_real"] = metric(dr, dr, ds)
        out["pairing_dice_ratio"] = metric(_ratio(ds, dr), dr, ds)
    cr, cs = _mean(real["contrast"]), _mean(synth["contrast"])
    out["lesion_contrast_real"] = metric(cr, cr, cs)
    out["lesion_contrast_synth"] = metric(cs, cr, cs)
    out["lesion_contrast_ratio"] = metric(_ratio(cs, cr), cr, cs)
    return out


def absent_metrics(real: Features) -> dict[str, dict]:
    """The metrics when the synthetic set has no lesion pair while the real set has: the synthetic-side
    ones absent (severity: a maximal deviation), the real-side ones measured."""
    out = {}
    if "fidelity" in real:
        dr = _mean(real["fidelity"])
        out["pairing_dice"] = absent(dr, "lesion pairs")
        out["pairing_dice_real"] = metric(dr, dr, None)
        out["pairing_dice_ratio"] = absent(dr, "lesion pairs")
    cr = _mean(real["contrast"])
    out["lesion_contrast_real"] = metric(cr, cr, None)
    out["lesion_contrast_synth"] = absent(cr, "lesion pairs")
    out["lesion_contrast_ratio"] = absent(cr, "lesion pairs")
    return out


# ------------------------------------------------------------------------- per-pair output
def evaluate(images: np.ndarray, masks: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], cfg,
             zbin=None, label=None) -> dict:
    """Predictions and per-pair scores of one set (N, C, H, W) with (N, H, W) masks: {"pred" (N, H, W),
    "fidelity" (N,) Dice of every pair (1.0 where mask and prediction are both empty), "lesion" (indices
    of the lesion pairs), "features" (of the lesion pairs), "contrast" (N,) mean lesion contrast per pair
    (NaN without a measured lesion), "rows" (one per pair, for pairing.csv)}."""
    m = as_masks(masks, gray(images).shape)
    pred = np.asarray(predict(images), dtype=bool)
    fidelity = pair_dice(pred, m)
    lesion = lesion_pairs(m)
    feats = features(images[lesion], m[lesion], cfg, pred[lesion])
    contrast = np.full(len(m), np.nan)
    if len(feats.ragged["contrast"]):
        sums = np.bincount(feats.owner, weights=feats.ragged["contrast"], minlength=len(lesion))
        counts = np.bincount(feats.owner, minlength=len(lesion))
        with np.errstate(invalid="ignore", divide="ignore"):
            contrast[lesion] = sums / counts
    labels, n = ndimage.label(m, structure=IN_PLANE_8)
    first = np.zeros(n + 1, dtype=np.int64)
    first[labels[m]] = np.nonzero(m)[0]  # each lesion's slice
    n_lesions = np.bincount(first[1:], minlength=len(m))
    area = m.sum(axis=(1, 2))
    rows = [{"index": int(i), "zbin": None if zbin is None else int(zbin[i]),
             "class": None if label is None else int(label[i]), "lesion_area": int(area[i]),
             "n_lesions": int(n_lesions[i]), "predicted_area": int(pred[i].sum()), "fidelity": float(fidelity[i]),
             "lesion_contrast": None if not np.isfinite(contrast[i]) else float(contrast[i])}
            for i in range(len(m))]
    return {"pred": pred, "fidelity": fidelity, "lesion": lesion, "features": feats, "contrast": contrast,
            "rows": rows}


def detail(real: dict, synth: dict) -> dict:
    """Figure data: fidelity vs lesion area of every lesion pair of both sets (`evaluate` results)."""
    def side(ev):
        idx = ev["lesion"]
        return {"area": ev["features"]["area"].tolist(), "fidelity": ev["fidelity"][idx].tolist(),
                "index": idx.tolist()}

    return {"fidelity_vs_area": {"real_pairs": side(real), "synthetic_pairs": side(synth)}}


def worst_pairs(images: np.ndarray, masks: np.ndarray, ev: dict, k: int = N_WORST) -> dict[str, np.ndarray]:
    """The k lesion pairs of lowest fidelity (larger lesions first among ties) for the report: gray
    images, masks, predictions, their indices and fidelities."""
    idx = ev["lesion"]
    if not len(idx):
        return {}
    area = np.asarray(masks).sum(axis=(1, 2))[idx]
    order = np.lexsort((-area, ev["fidelity"][idx]))[:k]
    pick = idx[order]
    return {"worst_images": gray(images[pick]).astype(np.float32), "worst_masks": np.asarray(masks[pick], bool),
            "worst_pred": ev["pred"][pick], "worst_index": pick.astype(np.int64),
            "worst_fidelity": ev["fidelity"][pick].astype(np.float64)}
