"""Family 1, spectral: radially averaged power spectrum of the grayscale image (mean of the image
channels), brain-ROI mean removed and a 2-D Hann window applied first.

Per sample (in `features`): the radial spectrum on integer frequency bins 1..min(H, W)//2 (bin k =
radius k / min(H, W) cycles per pixel), the power in `n_spectral_bands` log-spaced radial bands, and
the power below / above half the maximum frequency (0.25 cycles per pixel). Band and HF/LF powers are
sums over the FFT grid scaled so that, with the DC term, they add up to sum(x**2) (Parseval).
Per set (in `compare`): the slope of the MEAN radial spectrum (positive = falling), JS divergence of
the normalised mean spectra, the HF/LF ratio change and the band power ratios.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from .common import Features, metric
from .regions import tissues

NAME = "spectral"
HF_CUTOFF = 0.25  # cycles per pixel: half the maximum (Nyquist) frequency
CHUNK = 256  # samples per FFT batch, bounds memory


def frequency_grid(H: int, W: int):
    """Radius (cycles/pixel) and Parseval weight of every rfft2 bin of an H x W image: columns that
    stand for a conjugate pair count twice."""
    fy = scipy.fft.fftfreq(H)[:, None]
    fx = scipy.fft.rfftfreq(W)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    weight = np.full(radius.shape, 2.0)
    weight[:, 0] = 1.0
    if W % 2 == 0:
        weight[:, -1] = 1.0
    return radius, weight


def band_edges(size: int, n_bands: int, max_radius: float) -> np.ndarray:
    """Log-spaced radial band edges from half the first non-DC bin to beyond the grid's corner."""
    return np.geomspace(0.5 / size, max_radius * (1 + 1e-9), n_bands + 1)


def power_spectra(g: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Per-sample power |F|^2 / (H W) on the rfft2 grid, after ROI-mean removal and a Hann window."""
    N, H, W = g.shape
    window = (np.hanning(H)[:, None] * np.hanning(W)[None, :]).astype(np.float32)
    out = np.empty((N, H, W // 2 + 1), dtype=np.float32)
    for s in range(0, N, CHUNK):
        x, r = g[s : s + CHUNK], roi[s : s + CHUNK]
        count = np.maximum(r.sum(axis=(1, 2)), 1)
        mean = (x * r).sum(axis=(1, 2)) / count
        z = (x - mean[:, None, None].astype(np.float32)) * window
        f = scipy.fft.rfft2(z, workers=-1)
        out[s : s + CHUNK] = (f.real**2 + f.imag**2) / (H * W)
    return out


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    t = tissues(images, masks, cfg)
    g = t["gray"]
    N, H, W = g.shape
    size = min(H, W)
    n_radial = size // 2
    radius, weight = frequency_grid(H, W)
    power = power_spectra(g, t["roi"]) * weight.astype(np.float32)  # Parseval-weighted
    flat = power.reshape(N, -1)

    # radial mean power on integer bins 1..n_radial (bin 0 = DC, beyond = corners)
    rbin = np.rint(radius * size).astype(np.int64).ravel()
    in_radial = (rbin >= 1) & (rbin <= n_radial)
    sums = _binned_sum(flat[:, in_radial], rbin[in_radial] - 1, n_radial)
    counts = np.bincount(rbin[in_radial] - 1, weights=weight.ravel()[in_radial], minlength=n_radial)
    radial = sums / counts

    edges = band_edges(size, cfg.n_spectral_bands, radius.max())
    bands_idx = np.clip(np.searchsorted(edges, radius.ravel(), side="right") - 1, 0, cfg.n_spectral_bands - 1)
    non_dc = radius.ravel() > 0
    bands = _binned_sum(flat[:, non_dc], bands_idx[non_dc], cfg.n_spectral_bands)
    hf = flat[:, radius.ravel() > HF_CUTOFF].sum(axis=1, dtype=np.float64)
    lf = flat[:, non_dc & (radius.ravel() <= HF_CUTOFF)].sum(axis=1, dtype=np.float64)
    return Features(N, {"radial": radial, "bands": bands, "hf": hf, "lf": lf})


def _binned_sum(values: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """(N, P) values summed per sample into `n_bins` bins given by `bins` (P,)."""
    onehot = np.zeros((len(bins), n_bins), dtype=np.float32)
    onehot[np.arange(len(bins)), bins] = 1.0
    return (values @ onehot).astype(np.float64)


def spectral_slope(mean_radial: np.ndarray) -> float:
    """beta of P(k) ~ k^-beta from a least-squares line in log-log over bins k = 1..K (positive = falling)."""
    k = np.arange(1, len(mean_radial) + 1)
    ok = mean_radial > 0
    slope = np.polyfit(np.log10(k[ok]), np.log10(mean_radial[ok]), 1)[0]
    return -float(slope)


def js_divergence_bits(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    sr, ss = real["radial"].mean(axis=0), synth["radial"].mean(axis=0)
    beta_r, beta_s = spectral_slope(sr), spectral_slope(ss)
    ratio_r = real["hf"].sum() / real["lf"].sum()
    ratio_s = synth["hf"].sum() / synth["lf"].sum()
    out = {
        "spectral_slope_real": metric(beta_r, beta_r, None),
        "spectral_slope_synth": metric(beta_s, None, beta_s),
        "spectral_slope_diff": metric(abs(beta_s - beta_r), beta_r, beta_s),
        "spectral_js": metric(js_divergence_bits(sr, ss)),
        "hf_ratio_diff": metric((ratio_s - ratio_r) / ratio_r, ratio_r, ratio_s),
    }
    br, bs = real["bands"].mean(axis=0), synth["bands"].mean(axis=0)
    for b in range(len(br)):
        out[f"band_power_ratio_{b + 1}"] = metric(bs[b] / br[b], br[b], bs[b])
    return out


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: frequency (cycles/pixel) and the mean radial spectra of both sets."""
    n_radial = real["radial"].shape[1]
    size = 2 * n_radial  # min(H, W), up to one pixel for odd sizes
    return {"spectrum": {"x": (np.arange(1, n_radial + 1) / size).tolist(),
                         "real": real["radial"].mean(axis=0).tolist(),
                         "synthetic": synth["radial"].mean(axis=0).tolist()}}
