"""Region helpers of the metric families: lesion-centred patches and block-mean downsampling. The
tissue classes (brain ROI, lesion, brain, background) live in `jsddpm.regions`, below the stages, since
inpainting uses them too; `brain_roi` and `tissues` here apply the diagnostics config's ROI rule
(diagnostics.roi_threshold, roi_min_component) to them.
"""

from __future__ import annotations

import numpy as np

from .. import regions
from ..regions import (  # noqa: F401  (the families' region vocabulary, re-exported)
    IN_PLANE_4,
    IN_PLANE_8,
    as_masks,
    fill_holes,
    gray,
    remove_small_components,
)


def brain_roi(g: np.ndarray, masks: np.ndarray | None, cfg) -> np.ndarray:
    """`regions.brain_roi` under the diagnostics section `cfg`'s ROI rule."""
    return regions.brain_roi(g, masks, float(cfg.roi_threshold), float(cfg.roi_min_component))


def tissues(images: np.ndarray, masks: np.ndarray | None, cfg) -> dict[str, np.ndarray]:
    """`regions.tissues` under the diagnostics section `cfg`'s ROI rule."""
    return regions.tissues(images, masks, float(cfg.roi_threshold), float(cfg.roi_min_component))


def lesion_patches(g: np.ndarray, masks: np.ndarray, size: int):
    """One `size` x `size` patch per sample that has a lesion, centred on the bounding-box centre of the
    sample's lesion pixels; pixels outside the image read -1 (image) and False (mask).

    Returns (patch_images (M, size, size) float32, patch_masks (M, size, size) bool, owner (M,) int64).
    """
    owner = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    if len(owner) == 0:
        empty = np.zeros((0, size, size))
        return empty.astype(np.float32), empty.astype(bool), owner.astype(np.int64)
    m = masks[owner]
    rows = m.any(axis=2)
    cols = m.any(axis=1)
    H, W = rows.shape[1], cols.shape[1]
    r0 = rows.argmax(axis=1)
    r1 = H - 1 - rows[:, ::-1].argmax(axis=1)
    c0 = cols.argmax(axis=1)
    c1 = W - 1 - cols[:, ::-1].argmax(axis=1)
    top = (r0 + r1) // 2 - size // 2
    left = (c0 + c1) // 2 - size // 2
    pad = size // 2 + 1  # enough for any centre inside the image
    g_pad = np.pad(g[owner], ((0, 0), (pad, pad), (pad, pad)), constant_values=-1.0)
    m_pad = np.pad(m, ((0, 0), (pad, pad), (pad, pad)), constant_values=False)
    rr = (top + pad)[:, None, None] + np.arange(size)[None, :, None]
    cc = (left + pad)[:, None, None] + np.arange(size)[None, None, :]
    k = np.arange(len(owner))[:, None, None]
    return g_pad[k, rr, cc].astype(np.float32), m_pad[k, rr, cc], owner.astype(np.int64)


def downsample(g: np.ndarray, max_side: int) -> np.ndarray:
    """Block-mean (N, H, W) by the smallest integer factor that brings the longer side to <= max_side
    (0 = keep); trailing rows/columns that do not fill a block are dropped."""
    f = 1 if max_side <= 0 else int(np.ceil(max(g.shape[1:]) / max_side))
    if f == 1:
        return g.astype(np.float32, copy=False)
    N, H, W = g.shape
    h, w = H // f, W // f
    blocks = g[:, : h * f, : w * f].reshape(N, h, f, w, f)
    return blocks.mean(axis=(2, 4), dtype=np.float32)
