"""Family 7, pixel statistics: per-pixel Welch t-test between the sets, Benjamini-Hochberg FDR at
`cfg.fdr_alpha`, on the grayscale image (mean of the image channels).

Pixels are block means that bring the longer side to at most `cfg.pixel_max_side` (0 = full
resolution): the test needs the whole stack in every bootstrap resample, and a 3 x 3 block at 160 px
is still far below any anatomical structure. `pixel_frac_significant` = fraction of all pixels
significant after FDR. A pixel constant in both sets is significant when the constants differ.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .common import Features, metric
from .regions import downsample, gray

NAME = "pixel"


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    small = downsample(gray(images), cfg.pixel_max_side)
    n = len(small)
    return Features(n, {"pixels": small.reshape(n, -1), "grid": np.tile(small.shape[1:], (n, 1))})


def welch_p_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sided Welch t-test p-values per column of (n_a, P) and (n_b, P)."""
    na, nb = len(a), len(b)
    # float32 moments: values in [-1, 1], relative error ~ n * 6e-8, far below any test's resolution
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    va = np.einsum("ij,ij->j", a - ma, a - ma).astype(np.float64) / ((na - 1) * na)
    vb = np.einsum("ij,ij->j", b - mb, b - mb).astype(np.float64) / ((nb - 1) * nb)
    ma, mb = ma.astype(np.float64), mb.astype(np.float64)
    se2 = va + vb
    degenerate = se2 <= 1e-20
    se2 = np.where(degenerate, 1.0, se2)
    t = (mb - ma) / np.sqrt(se2)
    df = se2**2 / np.maximum(va**2 / (na - 1) + vb**2 / (nb - 1), 1e-300)
    p = 2.0 * special.stdtr(df, -np.abs(t))
    return np.where(degenerate, np.where(np.isclose(ma, mb, rtol=0, atol=1e-7), 1.0, 0.0), p)


def benjamini_hochberg(p: np.ndarray, alpha: float) -> np.ndarray:
    """Boolean rejections of the BH step-up procedure at FDR `alpha`."""
    order = np.argsort(p)
    m = len(p)
    below = p[order] <= alpha * np.arange(1, m + 1) / m
    reject = np.zeros(m, dtype=bool)
    if below.any():
        reject[order[: np.flatnonzero(below).max() + 1]] = True
    return reject


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    if len(real["pixels"]) < 2 or len(synth["pixels"]) < 2:
        return {}
    reject = benjamini_hochberg(welch_p_values(real["pixels"], synth["pixels"]), cfg.fdr_alpha)
    return {"pixel_frac_significant": metric(reject.mean())}


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: significance map (signed -log10 p where significant after FDR, else 0)."""
    h, w = (int(v) for v in real["grid"][0])
    p = welch_p_values(real["pixels"], synth["pixels"])
    reject = benjamini_hochberg(p, cfg.fdr_alpha)
    sign = np.sign(synth["pixels"].mean(axis=0) - real["pixels"].mean(axis=0))
    signed = np.where(reject, -np.log10(np.maximum(p, 1e-300)) * sign, 0.0)
    return {"significance_map": signed.reshape(h, w).tolist()}
