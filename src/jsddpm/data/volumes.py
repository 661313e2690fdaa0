"""NIfTI volume (+ lesion mask) -> normalised axial slices on a fixed RAS grid.

Loading checks every way a file can be wrong and raises `UserError` naming it. The target grid is
axis-aligned in RAS: in-plane `image_size` x `image_size` centred on the head, along z the whole
volume; resampling is one affine map per volume (image linear, mask nearest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import UserError, first_line

AFFINE_TOL_MM = 1e-3


@dataclass(frozen=True)
class Grid:
    origin: np.ndarray  # RAS mm of output voxel (0, 0, 0)
    spacing: np.ndarray  # mm per output voxel along x, y, z
    shape: tuple[int, int, int]


@dataclass
class SubjectSlices:
    images: np.ndarray  # (n, 1, H, W) float32 in [-1, 1]
    masks: np.ndarray | None  # (n, 1, H, W) uint8 in {0, 1}
    brain: np.ndarray  # (n, H, W) bool head/brain occupancy
    z: np.ndarray  # (n,) slice index on the resampled grid
    z_norm: np.ndarray  # (n,) position in [0, 1] within the kept axial range


def why_not_a_file(path: Path) -> str:
    """What a path that is not a readable regular file is: a folder, a symlink loop, a dangling link..."""
    import os

    if path.is_dir():
        return "is a folder, not a file"
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a symlink loop so
            return "is a symlink loop"
        except OSError as exc:
            if getattr(exc, "errno", None) == 40:  # ELOOP
                return "is a symlink loop"
            return f"is a symlink to a missing file ({os.readlink(path)})"
    if path.exists():
        return "is not a regular file"
    return "file not found"


def load_nifti(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 3D data in RAS orientation, its affine); every defect is a one-line UserError."""
    import nibabel as nib

    if not path.is_file():
        raise UserError(f"{path}: {what} {why_not_a_file(path)}; fix the path in the manifest")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many types for truncated / non-NIfTI files
        raise UserError(f"{path}: not a readable NIfTI {what} ({first_line(exc)}); re-export the file") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserError(f"{path}: {what} has shape {data.shape}, expected a 3D volume; "
                        "split 4D series and give one volume per row")
    if not np.isfinite(data).all():
        raise UserError(f"{path}: {what} contains NaN or Inf voxels; replace them (e.g. with 0) and re-save")
    return data, np.asarray(img.affine, dtype=np.float64)


def check_image(data: np.ndarray, path: Path) -> None:
    if not np.any(data):
        raise UserError(f"{path}: image is all zeros; remove this subject from the manifest or fix the file")


def check_mask(mask: np.ndarray, mask_affine: np.ndarray, image_shape, image_affine: np.ndarray,
               path: Path, threshold: float | None) -> np.ndarray:
    """The mask as uint8 {0, 1}, matching its image's grid."""
    if mask.shape != tuple(image_shape):
        raise UserError(f"{path}: mask shape {mask.shape} differs from its image's {tuple(image_shape)}; "
                        "resample the mask onto the image grid")
    if not np.allclose(mask_affine, image_affine, atol=AFFINE_TOL_MM):
        raise UserError(f"{path}: mask affine differs from its image's; resample the mask onto the image grid")
    if threshold is not None:
        return (mask > threshold).astype(np.uint8)
    if not np.isin(mask, (0.0, 1.0)).all():
        values = np.unique(mask)[:5]
        raise UserError(f"{path}: mask values must be 0 and 1, found {values.tolist()}...; "
                        "binarise it or set data.mask_threshold=0.5")
    return mask.astype(np.uint8)


def robust_foreground(data: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels above `fraction` of the 99.5th percentile of the non-zero voxels (head / brain)."""
    step = 2 if data.size > 2**20 else 1  # every 8th voxel estimates a percentile of a large volume well
    sample = data[::step, ::step, ::step]
    nonzero = sample[sample > 0]
    if nonzero.size == 0:
        return np.zeros(data.shape, dtype=bool)
    return data > fraction * np.percentile(nonzero, 99.5)


def plan_grid(foreground: np.ndarray, affine: np.ndarray, spacing: np.ndarray, size: int) -> Grid:
    """In-plane: `size` x `size` voxels centred on the foreground; along z: the whole volume.

    The origin is snapped to an input voxel centre so that resampling at the input's own spacing
    moves no voxel by a fraction (and a mask keeps its exact area).
    """
    vox = np.argwhere(foreground)
    if len(vox) == 0:
        vox = np.argwhere(np.ones(foreground.shape, dtype=bool))
    lo, hi = np.percentile(vox, [0.5, 99.5], axis=0)  # robust to isolated noise voxels
    centre_world = affine[:3, :3] @ ((lo + hi) / 2) + affine[:3, 3]
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in foreground.shape], indexing="ij")).reshape(3, -1)
    corners_world = affine[:3, :3] @ corners + affine[:3, 3:4]
    z_lo, z_hi = corners_world[2].min(), corners_world[2].max()
    n_z = int(np.floor((z_hi - z_lo) / spacing[2] + 1e-6)) + 1
    origin = np.array([centre_world[0] - (size - 1) / 2 * spacing[0],
                       centre_world[1] - (size - 1) / 2 * spacing[1], z_lo])
    inverse = np.linalg.inv(affine)
    origin_vox = np.rint(inverse[:3, :3] @ origin + inverse[:3, 3])
    origin = affine[:3, :3] @ origin_vox + affine[:3, 3]
    return Grid(origin=origin, spacing=np.asarray(spacing, dtype=np.float64), shape=(size, size, n_z))


def resample(data: np.ndarray, affine: np.ndarray, grid: Grid, order: int) -> np.ndarray:
    """`data` (voxel grid of `affine`) sampled on `grid`; outside the volume is 0."""
    inverse = np.linalg.inv(affine)
    matrix = inverse[:3, :3] @ np.diag(grid.spacing)
    offset = inverse[:3, :3] @ grid.origin + inverse[:3, 3]
    return ndimage.affine_transform(data, matrix, offset=offset, output_shape=grid.shape, order=order,
                                    mode="constant", cval=0.0, prefilter=False)


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Largest connected foreground component, holes filled slice by slice (ventricles, dark CSF)."""
    fg = robust_foreground(volume)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
        fg = labels == (1 + int(np.argmax(sizes)))
    for k in range(fg.shape[2]):
        if fg[:, :, k].any():
            fg[:, :, k] = ndimage.binary_fill_holes(fg[:, :, k])
    return fg


def normalise(volume: np.ndarray, foreground: np.ndarray, percentiles, path: Path) -> np.ndarray:
    """Clip to the foreground's percentiles, map linearly to [-1, 1]; background is -1."""
    lo, hi = np.percentile(volume[foreground], percentiles) if foreground.any() else (0.0, 0.0)
    if hi <= lo:
        raise UserError(f"{path}: image has no intensity contrast inside the head; check the file")
    out = (np.clip(volume, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0
    out[~foreground] = -1.0
    return out.astype(np.float32)


def kept_z_range(brain_area: np.ndarray, z_range: str, z_trim: float, path: Path) -> tuple[int, int]:
    """Inclusive (lo, hi) slice indices: `auto` = the brain's axial extent trimmed at each end."""
    n = len(brain_area)
    if z_range == "auto":
        occupied = np.flatnonzero(brain_area > 0)
        if len(occupied) == 0:
            raise UserError(f"{path}: no foreground found after resampling; check the image and its affine")
        lo, hi = int(occupied[0]), int(occupied[-1])
        trim = int(round(z_trim * (hi - lo + 1)))
        lo, hi = lo + trim, hi - trim
        if hi < lo:
            raise UserError(f"{path}: data.z_trim={z_trim} trims away every slice; lower it")
        return lo, hi
    try:
        lo_s, hi_s = z_range.split(":")
        lo, hi = int(lo_s), int(hi_s) - 1
    except ValueError:
        raise UserError(f"data.z_range={z_range!r}: expected 'auto' or 'lo:hi' slice indices") from None
    lo, hi = max(lo, 0), min(hi, n - 1)
    if hi < lo:
        raise UserError(f"{path}: data.z_range={z_range} selects no slice of the {n} after resampling")
    return lo, hi


def target_spacing(cfg_data) -> np.ndarray:
    spacing = np.asarray(list(cfg_data.spacing_mm), dtype=np.float64)
    if cfg_data.fov_mm and cfg_data.fov_mm > 0:
        spacing[:2] = cfg_data.fov_mm / cfg_data.image_size
    return spacing


def volume_to_slices(image_path: Path, mask_path: Path | None, cfg_data) -> SubjectSlices:
    """Load, check, resample, normalise and slice one subject.

    Axial slices in neurological display: row 0 is anterior, columns run from the subject's left to
    right (RAS x). `z_norm` is relative to the kept range, before near-empty slices are dropped.
    """
    data, affine = load_nifti(image_path, "image")
    check_image(data, image_path)
    mask = None
    if mask_path is not None:
        mask_data, mask_affine = load_nifti(mask_path, "mask")
        mask = check_mask(mask_data, mask_affine, data.shape, affine, mask_path, cfg_data.mask_threshold)

    grid = plan_grid(robust_foreground(data), affine, target_spacing(cfg_data), cfg_data.image_size)
    volume = resample(data, affine, grid, order=1)
    brain = head_mask(volume)
    volume = normalise(volume, brain, list(cfg_data.clip_percentiles), image_path)
    area = brain.sum(axis=(0, 1))
    lo, hi = kept_z_range(area, cfg_data.z_range, cfg_data.z_trim, image_path)
    z = np.arange(lo, hi + 1)
    z = z[area[z] >= cfg_data.min_brain_fraction * cfg_data.image_size ** 2]
    z_norm = ((z - lo) / max(hi - lo, 1)).astype(np.float32)

    # (x, y, z) -> (z, y, x), then flip y so that anterior is the top row
    def to_slices(vol):
        return np.ascontiguousarray(np.flip(vol[:, :, z].transpose(2, 1, 0), axis=1))[:, None]

    masks = None
    if mask is not None:
        masks = to_slices(resample(mask.astype(np.float32), affine, grid, order=0) > 0.5).astype(np.uint8)
    return SubjectSlices(images=to_slices(volume), masks=masks, brain=to_slices(brain)[:, 0], z=z, z_norm=z_norm)
