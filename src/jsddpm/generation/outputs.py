"""What a generation folder holds: samples.npz, PNG grids and (optionally) NIfTI stacks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..imaging import image_rgb, mask_rgb, save_png, tile_grid, to_uint8, triplet_grid  # noqa: F401


def write_samples(path: Path, images: np.ndarray, zbins: np.ndarray, labels: np.ndarray, n_zbins: int,
                  z: np.ndarray | None = None, cache_fingerprint: str | None = None, **extra: np.ndarray) -> None:
    """The synthetic-set format: `images` (N, C[+1], H, W) float32 in [-1, 1] (mask last, in {-1, +1}),
    `zbin`, `label`, `z` (the z conditioned on; default the bin centre), per-sample vectors in `extra`
    (index, seed, source_index ...) and, when the checkpoint recorded it, `cache_fingerprint` (a 0-d str
    array): the cache the generator was trained on, which exports compare with the cache they export."""
    from ..io import atomic_write_bytes

    z = (zbins + 0.5) / n_zbins if z is None else z
    if cache_fingerprint is not None:
        extra["cache_fingerprint"] = np.array(str(cache_fingerprint))
    buf = io.BytesIO()
    np.savez(buf, images=images, zbin=zbins, label=labels, z=np.asarray(z, np.float32), **extra)
    atomic_write_bytes(path, buf.getvalue())


def write_grids(folder: Path, images: np.ndarray, zbins: np.ndarray, labels: np.ndarray, joint_mask: bool,
                classes: list[str], per_grid: int = 32) -> None:
    """One PNG per class: up to `per_grid` samples spread over the z-bins, in z order."""
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(zbins[idx], kind="stable")]
        if len(idx) > per_grid:
            idx = idx[np.linspace(0, len(idx) - 1, per_grid).round().astype(int)]
        name = classes[c] if c < len(classes) else str(c)
        save_png(folder / f"grid_{name}.png", triplet_grid(images[idx], joint_mask))


# ------------------------------------------------------------------------------------- NIfTI
def slices_to_ras(slices: np.ndarray) -> np.ndarray:
    """(N, H, W[, ...]) slices in the cache's display orientation -> (X, Y, N[, ...]) RAS voxel order.

    The cache's slices have row 0 anterior and columns along RAS x (data/volumes.py), so x = column and
    y = H - 1 - row."""
    return np.ascontiguousarray(np.flip(np.moveaxis(slices, (0, 1, 2), (2, 1, 0)), axis=1))


def ras_affine(spacing_mm) -> np.ndarray:
    """Axis-aligned RAS affine with the given (x, y, z) spacing in mm; voxel (0, 0, 0) at the origin."""
    return np.diag([float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]), 1.0])


def nifti_bytes(data: np.ndarray, spacing_mm, compresslevel: int = 6) -> bytes:
    """gzip NIfTI-1 of RAS voxel data (X, Y, Z[, C]) at `spacing_mm`, qform and sform in scanner
    coordinates (the same bytes for the same data: no time stamp in the gzip header)."""
    import gzip

    import nibabel as nib

    affine = ras_affine(spacing_mm)
    nii = nib.Nifti1Image(data, affine)
    nii.header.set_xyzt_units("mm")
    nii.set_qform(affine, code=1)  # scanner coordinates
    nii.set_sform(affine, code=1)
    return gzip.compress(nii.to_bytes(), compresslevel=compresslevel, mtime=0)


def write_nifti(folder: Path, images: np.ndarray, joint_mask: bool, spacing_mm) -> None:
    """Stacks of the samples as gzip NIfTI in RAS at the cache's spacing: `images.nii.gz` (X, Y, N[, C])
    float32, exactly the values of samples.npz, and `masks.nii.gz` (X, Y, N) uint8 {0, 1}. The third
    axis stacks the samples in samples.npz order (they are not neighbouring slices of one head)."""
    from ..io import atomic_write_bytes

    image_channels = images.shape[1] - (1 if joint_mask else 0)
    img = images[:, :image_channels].transpose(0, 2, 3, 1)  # N, H, W, C
    img = img[..., 0] if image_channels == 1 else img
    volumes = {"images.nii.gz": slices_to_ras(img).astype(np.float32)}
    if joint_mask:
        volumes["masks.nii.gz"] = slices_to_ras((images[:, -1] > 0).astype(np.uint8))
    for name, data in volumes.items():
        atomic_write_bytes(folder / name, nifti_bytes(data, spacing_mm))
