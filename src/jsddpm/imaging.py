"""Samples (N, C, H, W) in [-1, 1] -> RGB uint8 grids and PNG files: the picture helpers that the training
sample grid, generation and inpainting outputs share (a leaf module below all of them)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def tile_grid(panels: list[np.ndarray], ncols: int = 4) -> np.ndarray:
    """RGB uint8 grid of tiles; `panels` are (N, H, W, 3) arrays laid side by side inside each tile."""
    n, h, w, _ = panels[0].shape
    gap = 2
    tile_w = len(panels) * w + (len(panels) - 1) * gap
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    grid = np.full((nrows * (h + gap * 2), ncols * (tile_w + gap * 4), 3), 255, np.uint8)
    for k in range(n):
        r, col = divmod(k, ncols)
        y, x = r * (h + gap * 2), col * (tile_w + gap * 4)
        for p, panel in enumerate(panels):
            x0 = x + p * (w + gap)
            grid[y:y + h, x0:x0 + w] = panel[k]
    return grid


def image_rgb(images: np.ndarray, image_channels: int) -> np.ndarray:
    """(N, H, W, 3) uint8 of the image channels of (N, C, H, W) samples in [-1, 1]."""
    img = images[:, :image_channels]
    img = np.repeat(img, 3, axis=1) if image_channels == 1 else img
    return to_uint8(img.transpose(0, 2, 3, 1))


def mask_rgb(mask: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8, white where the bool mask (N, H, W) is set."""
    return np.repeat(np.where(mask, 255, 0).astype(np.uint8)[..., None], 3, axis=-1)


def overlay_rgb(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask in red over the image."""
    overlay = rgb.copy()
    overlay[mask] = (0.5 * overlay[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    return overlay


def triplet_grid(images: np.ndarray, joint_mask: bool, ncols: int = 4) -> np.ndarray:
    """RGB uint8 grid, one tile per sample: image | mask | overlay (mask in red over the image).

    Image-only samples get one panel each. `images` is (N, C, H, W) in [-1, 1].
    """
    image_channels = images.shape[1] - 1 if joint_mask else images.shape[1]
    rgb = image_rgb(images, image_channels)
    panels = [rgb]
    if joint_mask:
        mask = images[:, -1] > 0
        panels += [mask_rgb(mask), overlay_rgb(rgb, mask)]
    return tile_grid(panels, ncols)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    from PIL import Image

    from .io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
