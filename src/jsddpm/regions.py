"""Brain, lesion and background regions of image stacks: shared by the diagnostics (tissue classes for
every metric family) and generation (inpainting places a lesion inside the brain), so it sits below both.

Tissue classes for binary lesion masks:
- head/brain ROI: pixels brighter than `threshold` (diagnostics.roi_threshold, -0.9: just above the -1
  background), specks smaller than `min_component` (diagnostics.roi_min_component) of the image area
  dropped, then holes filled (everything not 4-connected to the image border), so dark structures
  inside the head (ventricles, CSF) still belong to it; lesion pixels always do;
- lesion = mask;
- brain = ROI minus lesion;
- background = outside the ROI.
All morphology runs on the (N, H, W) stack with an in-plane structuring element, so samples never mix.
The rule's two numbers come as arguments, not as a config section: `diagnostics.regions` applies the
diagnostics config, inpainting its own.
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


def brain_roi(g: np.ndarray, masks: np.ndarray | None, threshold: float, min_component: float) -> np.ndarray:
    """(N, H, W) bool head/brain region of grayscale images `g` (see the module docstring)."""
    key = (_fingerprint(g), _fingerprint(masks), float(threshold), float(min_component))
    for k, roi in _ROI_CACHE:
        if k == key:
            return roi
    roi = g > threshold
    roi = remove_small_components(roi, min_component * g.shape[1] * g.shape[2])
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


def tissues(images: np.ndarray, masks: np.ndarray | None, threshold: float,
            min_component: float) -> dict[str, np.ndarray]:
    """Grayscale image and the tissue classes: {"gray", "roi", "lesion", "brain", "background"}."""
    g = gray(images)
    m = as_masks(masks, g.shape)
    roi = brain_roi(g, m, threshold, min_component)
    lesion = m if m is not None else np.zeros_like(roi)
    return {"gray": g, "roi": roi, "lesion": lesion, "brain": roi & ~lesion, "background": ~roi}
