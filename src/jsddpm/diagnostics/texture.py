"""Family 3, texture: GLCM features and Sobel gradient magnitude of the grayscale image (mean of the
image channels), inside the head/brain ROI.

GLCM: a fixed global quantisation of [-1, 1] into `cfg.glcm_levels` levels (an outlier pixel cannot
rescale an image's levels, and levels mean the same intensity in both sets), symmetric co-occurrence
counts for distances `cfg.glcm_distances` and angles 0, 45, 90, 135 degrees (offsets as in
skimage.feature.graycomatrix), over pixel pairs with both pixels in the ROI. Counts come from one
`bincount` per offset over the whole batch. Per-sample features are averaged over offsets.
Gradient: Sobel derivative along one spatial axis, smoothing along the other only (never across the
sample axis), magnitude averaged over the ROI; unnormalised Sobel kernels as scipy.ndimage.sobel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .common import Features, metric, one_blas_thread
from .regions import tissues

NAME = "texture"
GLCM_FEATURES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "entropy")
ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
CHUNK = 128


def quantise(g: np.ndarray, levels: int) -> np.ndarray:
    """Fixed quantisation of [-1, 1] into `levels` integer levels (values outside are clipped)."""
    q = np.floor((np.asarray(g, dtype=np.float32) + 1.0) * (levels / 2.0))
    return np.clip(q, 0, levels - 1).astype(np.int64)


def glcm_offset(distance: int, angle: float) -> tuple[int, int]:
    """(row, column) offset of the pair partner, rounded as skimage.feature.graycomatrix does."""
    return int(round(np.sin(angle) * distance)), int(round(np.cos(angle) * distance))


def glcm(q: np.ndarray, dr: int, dc: int, levels: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Symmetric co-occurrence counts (N, levels, levels) of quantised images q (N, H, W) for pixel
    pairs (r, c) and (r + dr, c + dc); with `valid`, only pairs whose two pixels are valid count."""
    return next(glcm_stack(q, [(dr, dc)], levels, valid))


def glcm_stack(q: np.ndarray, offsets, levels: int, valid: np.ndarray | None = None):
    """`glcm` for each (dr, dc) in `offsets`, sharing the per-batch work. Invalid pixels get an extra
    level that is cut off at the end, so no pair needs masking; one bincount per offset."""
    if valid is not None:  # no valid pair lies outside the valid pixels' bounding box
        rows, cols = np.flatnonzero(valid.any(axis=(0, 2))), np.flatnonzero(valid.any(axis=(0, 1)))
        if len(rows):
            box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            q, valid = q[box], valid[box]
    N, H, W = q.shape
    L1 = levels + 1
    # int64 codes: bincount would convert anything narrower, at the cost of another pass
    q_ext = q.astype(np.int64) if valid is None else np.where(valid, q, levels).astype(np.int64)
    first = q_ext * L1 + (np.arange(N, dtype=np.int64) * (L1 * L1))[:, None, None]
    buffer = np.empty(q_ext.size, dtype=np.int64)  # reused: fresh large arrays cost page faults
    for dr, dc in offsets:
        r0, r1 = max(-dr, 0), H - max(dr, 0)
        c0, c1 = max(-dc, 0), W - max(dc, 0)
        codes = buffer[: N * (r1 - r0) * (c1 - c0)].reshape(N, r1 - r0, c1 - c0)
        np.add(first[:, r0:r1, c0:c1], q_ext[:, r0 + dr : r1 + dr, c0 + dc : c1 + dc], out=codes)
        counts = np.bincount(codes.ravel(), minlength=N * L1 * L1).reshape(N, L1, L1)[:, :levels, :levels]
        yield counts + counts.transpose(0, 2, 1)


def _pair_weights(levels: int) -> np.ndarray:
    """(L*L, 6) weights of the linear GLCM statistics: (i-j)^2, |i-j|, 1/(1+(i-j)^2), i, i^2, i*j."""
    i, j = (a.ravel().astype(np.float64) for a in np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij"))
    d = i - j
    return np.stack([d**2, np.abs(d), 1.0 / (1.0 + d**2), i, i**2, i * j], axis=1)


def _xlogx_table(max_count: int) -> np.ndarray:
    """c * ln(c) for integer counts 0..max_count (0 for c = 0): entropy by lookup, not by logs."""
    c = np.arange(max_count + 1, dtype=np.float64)
    return c * np.log(np.maximum(c, 1.0))


def glcm_properties(counts: np.ndarray) -> dict[str, np.ndarray]:
    """skimage.feature.graycoprops definitions (natural-log entropy) of symmetric counts, per sample;
    NaN for samples without pairs."""
    N, L, _ = counts.shape
    C = counts.reshape(N, -1)
    total = C.sum(axis=1).astype(np.float64)
    safe_total = np.where(total > 0, total, 1.0)
    # float32 matmul: counts < 2^24 and the weights' relative precision is all the statistics need
    with one_blas_thread():
        lin = (C.astype(np.float32) @ _pair_weights(L).astype(np.float32)).astype(np.float64)
    lin /= safe_total[:, None]
    mean, var = lin[:, 3], np.maximum(lin[:, 4] - lin[:, 3] ** 2, 0)  # symmetric: the i and j marginals agree
    cov = lin[:, 5] - mean**2
    flat = var < 1e-14  # skimage's convention: correlation 1 when a std vanishes
    clogc = _xlogx_table(int(C.max()))[C].sum(axis=1)
    props = {
        "contrast": lin[:, 0],
        "dissimilarity": lin[:, 1],
        "homogeneity": lin[:, 2],
        "energy": np.sqrt((C * C).sum(axis=1).astype(np.float64)) / safe_total,
        "correlation": np.where(flat, 1.0, cov / np.where(flat, 1.0, var)),
        "entropy": np.log(safe_total) - clogc / safe_total,
    }
    empty = total == 0
    return {k: np.where(empty, np.nan, v) for k, v in props.items()}


def sobel_magnitude(g: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of (N, H, W) on the two spatial axes only."""
    deriv, smooth = np.array([-1.0, 0.0, 1.0]), np.array([1.0, 2.0, 1.0])
    gx = ndimage.correlate1d(ndimage.correlate1d(g, deriv, axis=2), smooth, axis=1)
    gy = ndimage.correlate1d(ndimage.correlate1d(g, deriv, axis=1), smooth, axis=2)
    return np.hypot(gx, gy)


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    t = tissues(images, masks, cfg)
    g, roi = t["gray"], t["roi"]
    N = len(g)
    offsets = [glcm_offset(d, a) for d in cfg.glcm_distances for a in ANGLES]
    per = {k: np.zeros(N) for k in GLCM_FEATURES}
    grad_sum, roi_count = np.zeros(N), roi.sum(axis=(1, 2)).astype(np.float64)
    for s in range(0, N, CHUNK):
        sl = slice(s, s + CHUNK)
        q = quantise(g[sl], cfg.glcm_levels)
        for counts in glcm_stack(q, offsets, cfg.glcm_levels, roi[sl]):
            props = glcm_properties(counts)
            for k in GLCM_FEATURES:
                per[k][sl] += props[k] / len(offsets)
        grad_sum[sl] = (sobel_magnitude(g[sl]) * roi[sl]).sum(axis=(1, 2))
    per.update({"grad_sum": grad_sum, "roi_count": roi_count})
    return Features(N, per)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max CDF gap), NaNs dropped."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    x = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, x, "right") / len(a) - np.searchsorted(b, x, "right") / len(b))))


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """(mean b - mean a) / pooled SD, NaNs dropped; 0 when both sets are constant and equal."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    delta = b.mean() - a.mean()
    return float(delta / pooled) if pooled > 0 else (0.0 if delta == 0 else float(np.sign(delta) * np.inf))


def finite_mean(a: np.ndarray) -> float:
    """Mean of the finite values (samples without ROI pairs are NaN); NaN when there are none."""
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else float("nan")


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    out = {}
    ks_all = []
    for k in GLCM_FEATURES:
        a, b = real[k], synth[k]
        mr, ms = finite_mean(a), finite_mean(b)
        ks = ks_statistic(a, b)
        ks_all.append(ks)
        out[f"glcm_{k}_real"] = metric(mr, mr, None)
        out[f"glcm_{k}_synth"] = metric(ms, mr, ms)
        out[f"glcm_{k}_ks"] = metric(ks, mr, ms)
        out[f"glcm_{k}_d"] = metric(cohens_d(a, b), mr, ms)
    out["texture_ks_mean"] = metric(np.mean(ks_all))
    gr = real["grad_sum"].sum() / max(real["roi_count"].sum(), 1)
    gs = synth["grad_sum"].sum() / max(synth["roi_count"].sum(), 1)
    out["gradient_mean_real"] = metric(gr, gr, None)
    out["gradient_mean_synth"] = metric(gs, None, gs)
    out["gradient_ratio"] = metric(gs / gr if gr > 0 else np.nan, gr, gs)
    return out


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: per-sample GLCM feature values of both sets (for distribution plots)."""
    return {f"glcm_{k}": {"real": real[k].tolist(), "synthetic": synth[k].tolist()} for k in GLCM_FEATURES}
