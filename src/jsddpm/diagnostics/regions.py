"""Region definitions shared by the metric families, and lesion-centred patches.

Tissue classes for binary lesion masks:
- head/brain ROI: pixels brighter than `cfg.roi_threshold` (default -0.9, just above the -1 background),
  specks smaller than `cfg.roi_min_component` of the image area dropped, then holes filled (everything
  not 4-connected to the image border), so dark structures inside the head (ventricles, CSF) still
  belong to it; lesion pixels always do;
- lesion = mask;
- brain = ROI minus lesion;
- background = outside the ROI.
All morphology runs on the (N, H, W) stack with an in-plane structuring element, so samples never mix.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

# in-plane 3 x 3 neighbourhoods on an (N, H, W) stack: nothing connects neighbouring samples
IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE_8[1] = True
IN_PLANE_4 = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE_4[1] = ndimage.generate_binary_structure(2, 1)

_ROI_CACHE: list[tuple[tuple, np.ndarray]] = []  # the last few ROIs: several families ask for the same one


def gray(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) or (N, H, W) -> (N, H, W) float32: the mean of the image channels (= channel 0 when C = 1)."""
    images = np.asarray(images)
    if images.ndim == 3:
        return images.astype(np.float32, copy=False)
    if images.shape[1] == 1:
        return np.ascontiguousarray(images[:, 0], dtype=np.float32)
    return images.mean(axis=1, dtype=np.float32)


def as_masks(masks, shape) -> np.ndarray | None:
    """Masks as an (N, H, W) bool stack (accepts (N, 1, H, W), {0, 1} or {-1, +1} values), or None."""
    if masks is None:
        return None
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.shape != tuple(shape):
        raise ValueError(f"masks of shape {masks.shape} do not match images {tuple(shape)}")
    return masks > 0


def _fingerprint(x: np.ndarray | None) -> tuple | None:
    """Shape, dtype and a CRC of the bytes: cheap next to the morphology it saves."""
    if x is None:
        return None
    return (x.shape, x.dtype.str, zlib.crc32(np.ascontiguousarray(x).view(np.uint8)))


def brain_roi(g: np.ndarray, masks: np.ndarray | None, cfg) -> np.ndarray:
    """(N, H, W) bool head/brain region of grayscale images `g` (see the module docstring)."""
    key = (_fingerprint(g), _fingerprint(masks), cfg.roi_threshold, cfg.roi_min_component)
    for k, roi in _ROI_CACHE:
        if k == key:
            return roi
    roi = g > cfg.roi_threshold
    roi = remove_small_components(roi, cfg.roi_min_component * g.shape[1] * g.shape[2])
    roi = fill_holes(roi)
    if masks is not None:
        roi |= masks
    _ROI_CACHE.append((key, roi))
    del _ROI_CACHE[:-4]
    return roi


def remove_small_components(binary: np.ndarray, min_size: float) -> np.ndarray:
    """Drop in-plane 8-connected components smaller than `min_size` pixels from an (N, H, W) stack."""
    if min_size <= 1:
        return binary
    labels, n = ndimage.label(binary, structure=IN_PLANE_8)
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_size
    keep[0] = False
    return keep[labels]


def fill_holes(binary: np.ndarray) -> np.ndarray:
    """Everything but the outside: the in-plane 4-connected components of ~binary that touch the image
    border. 4-connectivity of the outside means a diagonal one-pixel gap in the head outline does not
    let the outside leak in (the job a closing would do, at the cost of one labelling)."""
    labels, _ = ndimage.label(~binary, structure=IN_PLANE_4)
    edge = np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(),
                           labels[:, :, -1].ravel()])
    outside = np.zeros(labels.max() + 1, dtype=bool)
    outside[edge] = True
    outside[0] = False
    return ~outside[labels]


def one_blas_thread():
    """Context for the small matrix products of a `compare`: BLAS threads on matrices this size cost
    more in hand-offs than they save, and a bootstrap runs hundreds of them."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def tissues(images: np.ndarray, masks: np.ndarray | None, cfg) -> dict[str, np.ndarray]:
    """Grayscale image and the tissue classes: {"gray", "roi", "lesion", "brain", "background"}."""
    g = gray(images)
    m = as_masks(masks, g.shape)
    roi = brain_roi(g, m, cfg)
    lesion = m if m is not None else np.zeros_like(roi)
    return {"gray": g, "roi": roi, "lesion": lesion, "brain": roi & ~lesion, "background": ~roi}


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
