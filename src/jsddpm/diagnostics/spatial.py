"""Family 6, spatial correlation: autocorrelation length inside the head/brain ROI of the grayscale
image (mean of the image channels).

Per sample: z = (x - ROI mean) * ROI; the masked autocorrelation rho(lag) = C_z(lag) / C_roi(lag),
normalised to rho(0) = 1, where C_* are FFT autocorrelations zero-padded by the largest lag (no
wrap-around) and C_roi counts the overlapping ROI pixels; then averaged on integer radii 0..L
(`cfg.spatial_max_lag`). Per set: the mean radial curve, fitted by rho(r) = exp(-r / ell) (least
squares on log rho through the origin, over radii with rho > FIT_FLOOR); `spatial_corr_ratio` =
ell_synth / ell_real.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from .common import Features, metric
from .regions import tissues

NAME = "spatial"
FIT_FLOOR = 0.05  # below this the log of a noisy correlation is meaningless
MIN_OVERLAP = 16  # lags with fewer overlapping ROI pixels are left out
CHUNK = 128


def radial_autocorrelation(g: np.ndarray, roi: np.ndarray, max_lag: int) -> np.ndarray:
    """(N, max_lag + 1) radially averaged masked autocorrelation (NaN where undefined)."""
    N, H, W = g.shape
    shape = (scipy.fft.next_fast_len(H + max_lag), scipy.fft.next_fast_len(W + max_lag, real=True))
    lags = np.arange(-max_lag, max_lag + 1)
    dy, dx = np.meshgrid(lags, lags, indexing="ij")
    radius = np.rint(np.hypot(dy, dx)).astype(np.int64)
    inside = radius <= max_lag
    ry, rx, rbin = dy[inside] % shape[0], dx[inside] % shape[1], radius[inside]
    out = np.full((N, max_lag + 1), np.nan)
    for s in range(0, N, CHUNK):
        x, r = g[s : s + CHUNK], roi[s : s + CHUNK].astype(np.float32)
        count = np.maximum(r.sum(axis=(1, 2)), 1)
        z = (x - ((x * r).sum(axis=(1, 2)) / count)[:, None, None]) * r

        def autocorr(a):
            f = scipy.fft.rfft2(a, s=shape, workers=-1)
            return scipy.fft.irfft2(f.real**2 + f.imag**2, s=shape, workers=-1)[:, ry, rx]

        cz, overlap = autocorr(z), autocorr(r)
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = np.where(overlap > MIN_OVERLAP - 0.5, cz / np.maximum(overlap, 1), np.nan)
            rho = cov / cov[:, [np.flatnonzero(rbin == 0)[0]]]
        valid = np.isfinite(rho)
        n, nb = len(rho), max_lag + 1
        index = (np.arange(n)[:, None] * nb + rbin[None, :])[valid]
        sums = np.bincount(index, weights=rho[valid], minlength=n * nb).reshape(n, nb)
        counts = np.bincount(index, minlength=n * nb).reshape(n, nb)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + CHUNK] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def correlation_length(mean_curve: np.ndarray) -> float:
    """ell of exp(-r / ell) fitted to a radial autocorrelation curve (NaN when nothing to fit)."""
    r = np.arange(len(mean_curve), dtype=np.float64)
    ok = (r > 0) & np.isfinite(mean_curve) & (mean_curve > FIT_FLOOR)
    if not ok.any():
        return float("nan")
    slope = np.sum(r[ok] * np.log(mean_curve[ok])) / np.sum(r[ok] ** 2)
    return float(-1.0 / slope) if slope < 0 else float("inf")


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    t = tissues(images, masks, cfg)
    curves = radial_autocorrelation(t["gray"], t["roi"], cfg.spatial_max_lag)
    return Features(len(curves), {"autocorr": curves})


def mean_curve(f: Features) -> np.ndarray:
    curves = f["autocorr"]
    counts = np.isfinite(curves).sum(axis=0)
    return np.where(counts > 0, np.nansum(curves, axis=0) / np.maximum(counts, 1), np.nan)


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    lr = correlation_length(mean_curve(real))
    ls = correlation_length(mean_curve(synth))
    return {"spatial_corr_ratio": metric(ls / lr, lr, ls)}


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: mean radial autocorrelation curves (lag 0..L px)."""
    return {"autocorrelation": {"x": list(range(real["autocorr"].shape[1])),
                                "real": np.nan_to_num(mean_curve(real)).tolist(),
                                "synthetic": np.nan_to_num(mean_curve(synth)).tolist()}}
