"""Family 8, intensity distributions of the grayscale image (mean of the image channels): Wasserstein-1
and KS between the pooled pixel values of the two sets, over all pixels and per tissue (lesion, brain
= ROI minus lesion, background = outside the ROI; regions.py).

Per sample: pixel counts per tissue on a fixed grid of `cfg.intensity_bins` bins over [-1, 1], so a
bootstrap only sums histograms. W1 is the area between the two binned CDFs (error below one bin
width, 2 / bins); KS is their largest gap.
"""

from __future__ import annotations

import numpy as np

from .common import Features, metric
from .regions import tissues

NAME = "intensity"
TISSUES = ("lesion", "brain", "background")
CHUNK = 256


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    t = tissues(images, masks, cfg)
    g = t["gray"]
    N, B = len(g), cfg.intensity_bins
    hist = np.zeros((N, len(TISSUES), B), dtype=np.float32)
    for s in range(0, N, CHUNK):
        sl = slice(s, s + CHUNK)
        n = len(g[sl])
        bins = np.clip(((g[sl] + 1.0) * (B / 2.0)).astype(np.int64), 0, B - 1)
        tissue = np.where(t["lesion"][sl], 0, np.where(t["brain"][sl], 1, 2))
        index = (np.arange(n)[:, None, None] * len(TISSUES) + tissue) * B + bins
        hist[sl] = np.bincount(index.ravel(), minlength=n * len(TISSUES) * B).reshape(n, len(TISSUES), B)
    return Features(N, {"hist": hist, "has_mask": np.full(N, masks is not None)})


def binned_distances(h_real: np.ndarray, h_synth: np.ndarray) -> tuple[float, float]:
    """(W1, KS) between two histograms on the same grid over [-1, 1]; NaN if either is empty."""
    if h_real.sum() == 0 or h_synth.sum() == 0:
        return float("nan"), float("nan")
    gap = np.abs(np.cumsum(h_real) / h_real.sum() - np.cumsum(h_synth) / h_synth.sum())
    return float(gap.sum() * 2.0 / len(h_real)), float(gap.max())


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    hr = real["hist"].sum(axis=0, dtype=np.float64)
    hs = synth["hist"].sum(axis=0, dtype=np.float64)
    w_all, ks_all = binned_distances(hr.sum(axis=0), hs.sum(axis=0))
    out = {"wasserstein_all": metric(w_all), "ks_all": metric(ks_all)}
    for k, name in enumerate(TISSUES):
        if name == "lesion" and not (real["has_mask"].all() and synth["has_mask"].all()):
            continue
        w, _ = binned_distances(hr[k], hs[k])
        out[f"wasserstein_{name}"] = metric(None if np.isnan(w) else w)
    return out


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: normalised histograms of all pixels and per tissue (x = bin centres)."""
    B = cfg.intensity_bins
    x = (-1.0 + (np.arange(B) + 0.5) * 2.0 / B).tolist()
    hr = real["hist"].sum(axis=0, dtype=np.float64)
    hs = synth["hist"].sum(axis=0, dtype=np.float64)
    out = {}
    for k, name in enumerate(("all",) + TISSUES):
        a = hr.sum(axis=0) if name == "all" else hr[k - 1]
        b = hs.sum(axis=0) if name == "all" else hs[k - 1]
        out[f"histogram_{name}"] = {"x": x, "real": (a / max(a.sum(), 1)).tolist(),
                                    "synthetic": (b / max(b.sum(), 1)).tolist()}
    return out
