"""Family 14, structure: anatomy that per-pixel, spectral and texture statistics do not see. A generator
can match the real brain's mean, std, fine-scale energy and spectral slope and still draw no midline, no
symmetric hemispheres and ragged outlines; these three per-image measures name that.

All three run on a working grid: the grayscale image (mean of the image channels) and its head/brain ROI
block-averaged until the longer side is at most `cfg.structure_max_side` pixels (0 = native), so the
scales below follow the brain's size rather than the scanner's resolution ("px" = working pixels; the
demo's 48 px slices are used as they are). Smoothing inside the ROI is normalised convolution
(G * (x m) / G * m, m the ROI), so the brain's outline against the -1 background never enters a band.

- Left-right symmetry about the brain's own axis. The band-pass d = S_1(x) - S_4(x) (S_s: smoothing
  with a Gaussian of sigma s px inside the ROI) keeps anatomy (ventricles, fissure, sulci) and drops
  the pixel noise and the smooth bias field, which would otherwise decide the correlation. Candidate
  midlines pass through the ROI centroid at angles within +-ANGLE_SPAN degrees of both the ROI's own
  principal axis (the axis nearer the image vertical) and the image vertical (the principal axis of a
  round slice is arbitrary); d is reflected about each (bilinear) and correlated with itself over the
  pixels inside both the ROI and its reflection; the best candidate's correlation is the image's
  symmetry. A mirrored image has the mirrored candidates, hence the same symmetry.
  `asymmetry_ratio` = (1 - mean symmetry synthetic) / (1 - mean symmetry real): above 1 = less
  symmetric than real anatomy. Less noise (a blur) raises symmetry: that is the fine-detail families'
  finding, so severity counts this ratio one-sided.
- Outline irregularity: roughness = perimeter of the ROI / perimeter of the ROI smoothed at
  OUTLINE_SIGMA px (marching-squares lengths, morphology.py; >= 1 up to pixel effects), and solidity =
  ROI area / convex hull area. `outline_roughness_ratio` = (roughness - 1) synthetic / real, the
  excess outline length over its smooth version: above 1 = ragged outlines, below 1 = smoother than
  real. `outline_solidity_ratio` = solidity synthetic / real: below 1 = notches and bays.
- Mid-scale texture: energies (mean square inside the ROI eroded by EROSION px) of the band-passes
  S_1 - S_2 ("2-4 px" structures) and S_2 - S_4 ("4-8 px"); `midscale_band_ratio` = (E_2-4 / E_4-8)
  synthetic / real, pooled means. Above 1 = blotchy texture at 2-4 px without the larger structures
  real anatomy carries at 4-8 px (also what tiles permuted within the brain do); below 1 = blur.

An image whose ROI (eroded) is smaller than MIN_PIXELS working pixels gives NaN and is left out of the
set's means (the tip of a brain is no outline to judge).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .common import Features, metric
from .morphology import contour_length, hull_areas
from .regions import IN_PLANE_8, downsample, tissues

NAME = "structure"
SYMMETRY_BAND = (1.0, 4.0)  # sigmas (working px) of the band-pass whose mirror correlation is symmetry
ANGLE_SPAN, ANGLE_STEP = 6.0, 3.0  # candidate midlines: +-span degrees in steps, about two base axes
OUTLINE_SIGMA = 2.0  # working px: the smooth outline the ROI's perimeter is compared with
TEXTURE_SIGMAS = (1.0, 2.0, 4.0)  # bands S_1 - S_2 (2-4 px) and S_2 - S_4 (4-8 px)
EROSION = 2  # working px: band energies away from the outline, where normalised smoothing is thin
MIN_PIXELS = 64  # working px of (eroded) ROI below which an image is not measured
CHUNK = 64


# ----------------------------------------------------------------------------------- helpers
def working_grid(images: np.ndarray, masks: np.ndarray | None, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(gray, roi) block-averaged to the working grid (longer side <= cfg.structure_max_side)."""
    t = tissues(images, masks, cfg)
    side = int(cfg.structure_max_side)
    g = downsample(t["gray"], side)
    roi = downsample(t["roi"].astype(np.float32), side) > 0.5
    return g, roi


def smooth_inside(g: np.ndarray, m: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution of (N, H, W) `g` within the float mask `m`: the Gaussian-weighted mean of
    the ROI pixels around each pixel (0 where no ROI pixel is near)."""
    sig = (0, sigma, sigma)
    num = ndimage.gaussian_filter(g * m, sig, mode="constant")
    den = ndimage.gaussian_filter(m, sig, mode="constant")
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)


def midline_candidates(roi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROI centroids (N, 2) (row, col) and candidate axis angles (N, A) in radians from the row axis:
    +-ANGLE_SPAN about the principal axis nearer the vertical and about the vertical itself."""
    N, H, W = roi.shape
    r = roi.astype(np.float64)
    area = np.maximum(r.sum(axis=(1, 2)), 1.0)
    rr, cc = np.mgrid[:H, :W]
    cr, cc_ = (r * rr).sum(axis=(1, 2)) / area, (r * cc).sum(axis=(1, 2)) / area
    dr, dc = rr[None] - cr[:, None, None], cc[None] - cc_[:, None, None]
    vrr, vcc, vrc = ((r * a * b).sum(axis=(1, 2)) / area for a, b in ((dr, dr), (dc, dc), (dr, dc)))
    theta = 0.5 * np.arctan2(2 * vrc, vrr - vcc)  # major axis, from the row axis
    theta = np.where(np.abs(theta) > np.pi / 4, theta - np.sign(theta) * np.pi / 2, theta)  # nearer vertical
    offsets = np.deg2rad(np.arange(-ANGLE_SPAN, ANGLE_SPAN + 1e-9, ANGLE_STEP))
    angles = np.concatenate([theta[:, None] + offsets, np.broadcast_to(offsets, (N, len(offsets)))], axis=1)
    return np.stack([cr, cc_], axis=1), angles


def reflect(images: list[np.ndarray], centre: np.ndarray, angles: np.ndarray) -> list[np.ndarray]:
    """Each (N, H, W) stack of `images` reflected about the line through each image's `centre` at each
    of its `angles`: (N, A, H, W) per stack; bilinear, 0 outside the image.

    The reflection about a line at angle t through c maps p to c + M (p - c) with M = [[cos 2t, sin 2t],
    [sin 2t, -cos 2t]] in (row, column) coordinates; the four neighbours are gathered by flat index."""
    N, H, W = images[0].shape
    rr, cc = np.mgrid[:H, :W].astype(np.float32)
    cos2, sin2 = (f(2 * angles).astype(np.float32)[..., None, None] for f in (np.cos, np.sin))
    c_r, c_c = (centre[:, i, None, None, None].astype(np.float32) for i in (0, 1))
    pr, pc = rr - c_r, cc - c_c
    qr = c_r + cos2 * pr + sin2 * pc + 1.0  # + 1: coordinates in the zero-padded stack
    qc = c_c + sin2 * pr - cos2 * pc + 1.0
    np.clip(qr, 0.0, H + 0.999, out=qr)  # beyond the pad every neighbour is 0 anyway
    np.clip(qc, 0.0, W + 0.999, out=qc)
    r0, c0 = qr.astype(np.int32), qc.astype(np.int32)
    fr, fc = qr - r0.astype(np.float32), qc - c0.astype(np.float32)
    flat = (np.arange(N, dtype=np.int64)[:, None, None, None] * (H + 2) + r0) * (W + 2) + c0
    out = []
    for x in images:
        p = np.pad(x.astype(np.float32), ((0, 0), (1, 1), (1, 1))).ravel()
        top = p.take(flat) * (1 - fc) + p.take(flat + 1) * fc
        bottom = p.take(flat + (W + 2)) * (1 - fc) + p.take(flat + (W + 3)) * fc
        out.append(top * (1 - fr) + bottom * fr)
    return out


def symmetry(g: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """(N,) mirror correlation of the band-passed image about its best candidate midline (module docstring)."""
    m = roi.astype(np.float32)
    d = smooth_inside(g, m, SYMMETRY_BAND[0]) - smooth_inside(g, m, SYMMETRY_BAND[1])
    centre, angles = midline_candidates(roi)
    d_m, roi_m = reflect([d, m], centre, angles)
    roi_m = roi_m > 0.5
    both = roi[:, None] & roi_m
    n = both.sum(axis=(2, 3))
    x = np.where(both, d[:, None], 0.0)
    y = np.where(both, d_m, 0.0)
    nn = np.maximum(n, 1)
    mx, my = x.sum(axis=(2, 3)) / nn, y.sum(axis=(2, 3)) / nn
    cov = (x * y).sum(axis=(2, 3)) / nn - mx * my
    vx = (x * x).sum(axis=(2, 3)) / nn - mx * mx
    vy = (y * y).sum(axis=(2, 3)) / nn - my * my
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where((n >= MIN_PIXELS) & (vx > 0) & (vy > 0), cov / np.sqrt(vx * vy), -np.inf)
    best = corr.max(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def outline(roi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(roughness, solidity) per image: perimeter / perimeter of the smoothed outline, area / hull area."""
    N = len(roi)
    smooth = ndimage.gaussian_filter(roi.astype(np.float32), (0, OUTLINE_SIGMA, OUTLINE_SIGMA)) > 0.5
    p, p_smooth = contour_length(roi), contour_length(smooth)
    z, r, c = np.nonzero(roi)
    area = roi.sum(axis=(1, 2)).astype(np.float64)
    hull = np.ones(N)
    has = area > 0
    hull[has] = hull_areas(np.searchsorted(np.flatnonzero(has), z), r, c, int(has.sum()))
    ok = (area >= MIN_PIXELS) & (p_smooth > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, p / p_smooth, np.nan), np.where(ok, area / hull, np.nan)


def band_energies(g: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """(N, 2) mean squared band-pass S_1 - S_2 and S_2 - S_4 inside the eroded ROI (NaN if too small)."""
    m = roi.astype(np.float32)
    levels = [smooth_inside(g, m, s) for s in TEXTURE_SIGMAS]
    inner = ndimage.binary_erosion(roi, IN_PLANE_8, iterations=EROSION)
    count = inner.sum(axis=(1, 2))
    out = np.stack([(np.square(a - b) * inner).sum(axis=(1, 2)) for a, b in zip(levels[:-1], levels[1:])], axis=1)
    return np.where((count >= MIN_PIXELS)[:, None], out / np.maximum(count, 1)[:, None], np.nan)


# ------------------------------------------------------------------------------------ family
def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    g, roi = working_grid(images, masks, cfg)
    N = len(g)
    sym = np.concatenate([symmetry(g[s : s + CHUNK], roi[s : s + CHUNK]) for s in range(0, N, CHUNK)])
    rough, solid = outline(roi)
    bands = band_energies(g, roi)
    return Features(N, {"symmetry": sym, "roughness": rough, "solidity": solid, "band_fine": bands[:, 0],
                        "band_coarse": bands[:, 1]})


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else np.nan


def _ratio(s: float, r: float) -> float:
    return s / r if np.isfinite(r) and np.isfinite(s) and r > 0 else np.nan


def _band_ratio(f: Features) -> float:
    ok = np.isfinite(f["band_fine"]) & np.isfinite(f["band_coarse"])
    return _ratio(f["band_fine"][ok].mean(), f["band_coarse"][ok].mean()) if ok.any() else np.nan


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    sym_r, sym_s = _mean(real["symmetry"]), _mean(synth["symmetry"])
    rough_r, rough_s = _mean(real["roughness"]) - 1.0, _mean(synth["roughness"]) - 1.0
    sol_r, sol_s = _mean(real["solidity"]), _mean(synth["solidity"])
    band_r, band_s = _band_ratio(real), _band_ratio(synth)
    return {
        "symmetry_real": metric(sym_r, sym_r, None),
        "symmetry_synth": metric(sym_s, sym_r, sym_s),
        "asymmetry_ratio": metric(_ratio(1.0 - sym_s, 1.0 - sym_r), 1.0 - sym_r, 1.0 - sym_s),
        "outline_roughness_ratio": metric(_ratio(rough_s, rough_r), rough_r, rough_s),
        "outline_solidity_ratio": metric(_ratio(sol_s, sol_r), sol_r, sol_s),
        "midscale_band_ratio": metric(_ratio(band_s, band_r), band_r, band_s),
    }


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: per-image symmetry, roughness and 2-4 / 4-8 px band ratio as histograms."""
    def finite(x):
        return x[np.isfinite(x)].tolist()

    def per_image_band(f):
        with np.errstate(invalid="ignore", divide="ignore"):
            return f["band_fine"] / f["band_coarse"]

    return {"symmetry": {"real": finite(real["symmetry"]), "synthetic": finite(synth["symmetry"])},
            "outline_roughness": {"real": finite(real["roughness"]), "synthetic": finite(synth["roughness"])},
            "band_2-4_over_4-8_px": {"real": finite(per_image_band(real)), "synthetic": finite(per_image_band(synth))}}


# ------------------------------------------------------------------------------ known answer
def permute_tiles(g: np.ndarray, roi: np.ndarray, tile: int, rng: np.random.Generator) -> np.ndarray:
    """(N, H, W) images whose `tile` x `tile` tiles lying wholly inside the ROI are shuffled among
    themselves, image by image: local statistics (histogram, texture within a tile, the outline) are
    kept and anatomy is destroyed. The known answer of this family and of the classifier (tests,
    benchmarks/structure_bench.py)."""
    out = np.array(g, copy=True)
    N, H, W = g.shape
    tops, lefts = np.meshgrid(np.arange(0, H - tile + 1, tile), np.arange(0, W - tile + 1, tile), indexing="ij")
    tops, lefts = tops.ravel(), lefts.ravel()
    blocks = roi[:, : len(np.unique(tops)) * tile, : len(np.unique(lefts)) * tile]
    inside = blocks.reshape(N, -1, tile, blocks.shape[2] // tile, tile).all(axis=(2, 4)).reshape(N, -1)
    for n in range(N):
        cells = np.flatnonzero(inside[n])
        for dst, src in zip(cells, rng.permutation(cells)):
            t, left, ts, ls = tops[dst], lefts[dst], tops[src], lefts[src]
            out[n, t : t + tile, left : left + tile] = g[n, ts : ts + tile, ls : ls + tile]
    return out
