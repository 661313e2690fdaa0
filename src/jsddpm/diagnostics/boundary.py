"""Family 4, boundary: intensity profile across the lesion edge, on lesion-centred patches.

Per lesion (8-connected component of the patch mask), every pixel within `cfg.boundary_max_distance`
(R) of its edge gets a signed distance: outside = (distance to the nearest lesion pixel) - 0.5, inside =
-((distance to the nearest non-lesion pixel) - 0.5), so the edge sits at 0; outside pixels belong to the
nearest lesion. Profiles are binned at 1 px (2R bins, centres -R + 0.5 .. R - 0.5) and oriented so the
lesion side is the brighter one (hypo- and hyperintense lesions do not cancel).
Per set: the pooled mean profile; sharpness = its largest step between adjacent bins (intensity per
pixel), width = |inner plateau - outer plateau| / sharpness (pixels: the width of a linear ramp with
that contrast and slope). When the real set has lesion edges and the synthetic set has none, both
ratios are recorded as absent in the synthetic set (no value), which severity counts as a maximal
deviation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .common import Features, absent, metric
from .regions import IN_PLANE_8, lesion_patches, tissues

NAME = "boundary"


def lesion_profiles(patches: np.ndarray, patch_masks: np.ndarray, R: int):
    """Per-lesion profile sums and counts (n_lesions, 2R) and the patch index of each lesion."""
    labels, n = ndimage.label(patch_masks, structure=IN_PLANE_8)
    if n == 0:
        return np.zeros((0, 2 * R)), np.zeros((0, 2 * R)), np.zeros(0, dtype=np.int64)
    # 2-D transforms patch by patch (a batched 3-D transform pays for a third axis it does not need)
    signed = np.empty(patch_masks.shape)
    owner_label = np.empty(labels.shape, dtype=labels.dtype)
    for k, (pm, lab) in enumerate(zip(patch_masks, labels)):
        d_out, (ny, nx) = ndimage.distance_transform_edt(~pm, return_indices=True)
        d_in = ndimage.distance_transform_edt(pm)
        signed[k] = np.where(pm, 0.5 - d_in, d_out - 0.5)
        owner_label[k] = lab[ny, nx]  # inside pixels are their own nearest lesion pixel
    keep = (np.abs(signed) < R) & (owner_label > 0)
    bins = np.floor(signed[keep]).astype(np.int64) + R
    index = (owner_label[keep] - 1) * 2 * R + bins
    sums = np.bincount(index, weights=patches[keep], minlength=n * 2 * R).reshape(n, 2 * R)
    counts = np.bincount(index, minlength=n * 2 * R).reshape(n, 2 * R).astype(np.float64)
    patch_of_label = np.zeros(n, dtype=np.int64)
    z = np.nonzero(labels)[0]
    patch_of_label[labels[labels > 0] - 1] = z
    return sums, counts, patch_of_label


def features(images: np.ndarray, masks: np.ndarray | None, cfg) -> Features:
    t = tissues(images, masks, cfg)
    N = len(t["gray"])
    R = cfg.boundary_max_distance
    patches, patch_masks, patch_owner = lesion_patches(t["gray"], t["lesion"], cfg.patch_size)
    sums, counts, patch_of_label = lesion_profiles(patches, patch_masks, R)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = sums / counts
    inside = np.nanmean(profile[:, :R], axis=1) if len(profile) else np.zeros(0)
    outside = np.nanmean(profile[:, R:], axis=1) if len(profile) else np.zeros(0)
    sign = np.where(np.nan_to_num(inside - outside) >= 0, 1.0, -1.0)
    ragged = {"profile_sums": sums * sign[:, None], "profile_counts": counts}
    return Features(N, {}, ragged, patch_owner[patch_of_label])


def pooled_profile(f: Features) -> np.ndarray:
    counts = f["profile_counts"].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return f["profile_sums"].sum(axis=0) / counts


def sharpness_width(profile: np.ndarray) -> tuple[float, float]:
    """Largest step between adjacent bins, and the ramp width |inner - outer plateau| / sharpness."""
    valid = np.isfinite(profile)
    if valid.sum() < 2:
        return float("nan"), float("nan")
    p = profile[valid]
    sharp = float(np.max(np.abs(np.diff(p))))
    contrast = abs(p[0] - p[-1])
    return sharp, (contrast / sharp if sharp > 0 else float("nan"))


def compare(real: Features, synth: Features, cfg) -> dict[str, dict]:
    if "profile_sums" not in real or len(real["profile_sums"]) == 0:
        return {}
    sr, wr = sharpness_width(pooled_profile(real))
    if len(synth["profile_sums"]) == 0:
        return {"boundary_sharpness_ratio": absent(sr), "boundary_width_ratio": absent(wr)}
    ss, ws = sharpness_width(pooled_profile(synth))
    return {
        "boundary_sharpness_ratio": metric(ss / sr, sr, ss),
        "boundary_width_ratio": metric(ws / wr, wr, ws),
    }


def detail(real: Features, synth: Features, cfg) -> dict:
    """Figure data: bin centres (signed distance, px; negative = inside) and the pooled profiles."""
    R = cfg.boundary_max_distance
    if len(real["profile_sums"]) == 0 or len(synth["profile_sums"]) == 0:
        return {}
    return {"profile": {"x": (np.arange(2 * R) - R + 0.5).tolist(),
                        "real": np.nan_to_num(pooled_profile(real)).tolist(),
                        "synthetic": np.nan_to_num(pooled_profile(synth)).tolist()}}
