"""Family 5, background: intensity outside the head/brain ROI (see regions.py) of the grayscale image
(mean of the image channels), where real data sit at -1. Pooled over all background pixels of a set:
standard deviation and mean |x + 1| (deviation from the background value)."""

from __future__ import annotations

import numpy as np

from .common import Features, metric
from .regions import tissues

NAME = "background"
HIST_RANGE = (-1.0, -0.5)  # background histogram grid for the figure (values beyond go to the end bins)
HIST_BINS = 50


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    t = tissues(images, masks, cfg)
    g, bg = t["gray"], t["background"]
    N = len(g)
    dev = np.where(bg, g + np.float32(1.0), np.float32(0.0))  # x + 1: zero at the ideal background value
    count = bg.sum(axis=(1, 2))
    # histogram: only pixels off the ideal value need binning; the rest all land in bin 0
    off = dev != 0
    lo, hi = HIST_RANGE
    bins = np.clip(((dev[off] - 1.0 - lo) * (HIST_BINS / (hi - lo))).astype(np.int64), 0, HIST_BINS - 1)
    owner = np.repeat(np.arange(N), off.sum(axis=(1, 2)))
    hist = np.bincount(owner * HIST_BINS + bins, minlength=N * HIST_BINS).reshape(N, HIST_BINS)
    hist[:, 0] += count - off.sum(axis=(1, 2))
    per = {
        "count": count.astype(np.float64),
        "sum_dev": dev.sum(axis=(1, 2), dtype=np.float64),
        "sumsq_dev": np.square(dev).sum(axis=(1, 2), dtype=np.float64),
        "absdev": np.abs(dev).sum(axis=(1, 2), dtype=np.float64),
        "hist": hist.astype(np.float32),
    }
    return Features(N, per)


def pooled(f: Features) -> tuple[float, float]:
    """(std, mean |x + 1|) over all background pixels of a set."""
    n = f["count"].sum()
    if n == 0:
        return float("nan"), float("nan")
    mean = f["sum_dev"].sum() / n
    var = max(f["sumsq_dev"].sum() / n - mean**2, 0.0)
    return float(np.sqrt(var)), float(f["absdev"].sum() / n)


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    std_r, dev_r = pooled(real)
    std_s, dev_s = pooled(synth)
    return {
        "background_std_synth": metric(std_s, std_r, std_s),
        "background_std_real": metric(std_r, std_r, None),
        "background_deviation": metric(dev_s, dev_r, dev_s),
    }


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: normalised background histograms on HIST_RANGE (x = bin centres)."""
    edges = np.linspace(*HIST_RANGE, HIST_BINS + 1)
    out = {"x": ((edges[:-1] + edges[1:]) / 2).tolist()}
    for name, f in (("real", real), ("synthetic", synth)):
        h = f["hist"].sum(axis=0, dtype=np.float64)
        out[name] = (h / max(h.sum(), 1)).tolist()
    return {"histogram": out}
