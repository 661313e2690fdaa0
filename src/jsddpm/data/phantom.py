"""The demo cohort: FLAIR-like volumes with focal-cortical-dysplasia-like lesions, built from the
MNI152 2009 template and its grey/white-matter maps that ship inside nilearn (no download).

Each subject is the template's anatomy under a smooth random deformation, with a per-subject
contrast, a multiplicative bias field, Rician noise and a scanner-like integer intensity scale.
Patients get 1-2 irregular hyperintense blobs at the grey/white junction whose junction is blurred.
Everything is drawn from `np.random.default_rng([seed, subject_number])`, so a subject does not
depend on how many others are built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

# FLAIR-like tissue intensities relative to grey matter (GM > WM, CSF dark)
GM_LEVEL = 1.0
WM_LEVEL = 0.72
CSF_LEVEL = 0.12


@dataclass(frozen=True)
class Template:
    gm: np.ndarray  # grey-matter probability, float32
    wm: np.ndarray  # white-matter probability
    brain: np.ndarray  # brain mask as float32 in [0, 1]
    affine: np.ndarray  # voxel -> RAS mm
    voxel_mm: float
    junction: np.ndarray  # (n, 3) voxels at the grey/white junction of the cerebrum: lesion sites


@functools.lru_cache(maxsize=2)
def load_template(resolution: int = 2) -> Template:
    """The MNI152 2009 tissue maps at `resolution` mm, read from the nilearn package."""
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    gm = np.clip(np.asarray(gm_img.get_fdata(), dtype=np.float32), 0, 1)
    wm = np.clip(np.asarray(datasets.load_mni152_wm_template(resolution=resolution).get_fdata(),
                            dtype=np.float32), 0, 1)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).get_fdata(), dtype=np.float32)
    brain = np.maximum(brain, (gm + wm) > 0.1).astype(np.float32)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    z_mm = affine[2, 2] * np.arange(gm.shape[2]) + affine[2, 3]
    cerebrum = (z_mm > -10.0)[None, None, :]  # above the cerebellum: FCD is a cortical lesion
    junction = np.argwhere((gm > 0.35) & (wm > 0.35) & cerebrum)
    return Template(gm=gm, wm=wm, brain=brain, affine=affine, voxel_mm=float(abs(affine[0, 0])), junction=junction)


def flair_contrast(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray, levels=(GM_LEVEL, WM_LEVEL, CSF_LEVEL)):
    """Intensity from tissue fractions: CSF is what the brain mask holds beyond grey and white matter."""
    g, w, c = levels
    csf = np.clip(brain - gm - wm, 0, 1)
    return (g * gm + w * wm + c * csf).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int, amplitude: float) -> np.ndarray:
    """Smooth random field with standard deviation `amplitude`: a coarse Gaussian grid spread over
    `shape` by separable Gaussian bumps (one small matrix product per axis, so it is cheap)."""
    field = rng.standard_normal(size=(coarse,) * len(shape), dtype=np.float32)
    for n in shape:  # contract the leading coarse axis, append the full-size axis at the end
        centres = np.linspace(0, n - 1, coarse, dtype=np.float32)
        width = (n - 1) / max(coarse - 1, 1)
        basis = np.exp(-0.5 * ((np.arange(n, dtype=np.float32)[:, None] - centres[None, :]) / width) ** 2)
        field = np.tensordot(field, basis, axes=([0], [1]))
    field *= amplitude / (field.std() + 1e-12)
    return field


def lesion_blob(rng: np.random.Generator, shape: tuple[int, int, int], centre: np.ndarray,
                radius_vox: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """An irregular blob around `centre`: a random ellipsoid with a noisy boundary.

    Returns the bounding slices in the volume and the boolean blob inside them; the centre voxel is
    always part of the blob, so even the smallest lesion has one voxel.
    """
    half = int(np.ceil(radius_vox * 1.6)) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    coords = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), -1) - centre
    axes = radius_vox * rng.uniform(0.65, 1.35, size=3)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    dist = np.sqrt((((coords @ rotation) / axes) ** 2).sum(-1))
    noise = ndimage.gaussian_filter(rng.normal(size=dist.shape), sigma=max(radius_vox / 3, 0.7))
    noise /= noise.std() + 1e-8
    blob = dist + 0.25 * noise < 1.0
    blob[tuple(centre - lo)] = True
    return box, blob


def add_lesion(image: np.ndarray, mask: np.ndarray, template: Template, rng: np.random.Generator) -> None:
    """Place one FCD-like lesion at a random grey/white junction voxel (in place)."""
    centre = template.junction[rng.integers(len(template.junction))]
    # 3-20 mm, weighted towards the larger lesions that FLAIR reading finds (density ~ diameter - 3)
    diameter_mm = 3.0 + 17.0 * np.sqrt(rng.uniform())
    box, blob = lesion_blob(rng, image.shape, centre, diameter_mm / 2 / template.voxel_mm)
    blob &= (template.gm[box] + template.wm[box]) > 0.2  # stays in tissue
    soft = ndimage.gaussian_filter(blob.astype(np.float32), sigma=0.8)
    local = image[box]
    blurred = ndimage.gaussian_filter(local, sigma=1.2)  # the blurred grey/white junction
    brighter = blurred * (1.0 + rng.uniform(0.18, 0.35))
    image[box] = local * (1 - soft) + brighter * soft
    mask[box] |= blob


def deformation_coords(rng: np.random.Generator, shape: tuple[int, int, int], disp_sd_vox: float,
                       scale_jitter: float) -> np.ndarray:
    """Sampling coordinates (3, *shape) of a random per-axis scaling plus a smooth elastic field whose
    displacement has standard deviation `disp_sd_vox` along each axis."""
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    scales = 1.0 + rng.uniform(-scale_jitter, scale_jitter, size=3)
    axes = [(np.arange(n, dtype=np.float32) - c) / s + c for n, c, s in zip(shape, centre, scales)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    for k in range(3):
        coords[k] += smooth_field(rng, shape, coarse=6, amplitude=disp_sd_vox)
    return coords


def warp_mask(mask: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Resample a boolean mask at `coords` (linear, > 0.5), evaluating only near the lesions."""
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    voxels = np.argwhere(mask)
    lo = (voxels.min(0) - 1).reshape(3, 1, 1, 1)
    hi = (voxels.max(0) + 1).reshape(3, 1, 1, 1)
    near = np.all((coords >= lo) & (coords <= hi), axis=0)
    warped = ndimage.map_coordinates(mask.astype(np.float32), coords[:, near], order=1, mode="constant")
    out[near] = warped > 0.5
    if not out.any():  # a one-voxel lesion can fall between voxels: keep its peak
        out[near] = warped >= warped.max()
    return out


def make_subject(template: Template, rng: np.random.Generator, n_lesions: int) -> tuple[np.ndarray, np.ndarray]:
    """One subject: (int16 FLAIR-like volume, uint8 lesion mask) on the template's grid."""
    levels = (GM_LEVEL, WM_LEVEL * rng.uniform(0.93, 1.07), CSF_LEVEL * rng.uniform(0.7, 1.3))
    image = flair_contrast(template.gm, template.wm, template.brain, levels)
    image *= 1.0 + smooth_field(rng, image.shape, coarse=5, amplitude=0.015)  # regional intensity drift
    mask = np.zeros(image.shape, dtype=bool)
    for _ in range(n_lesions):
        add_lesion(image, mask, template, rng)

    coords = deformation_coords(rng, image.shape, disp_sd_vox=3.0 / template.voxel_mm, scale_jitter=0.04)
    image = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    mask = warp_mask(mask, coords)

    bias = np.exp(smooth_field(rng, image.shape, coarse=3, amplitude=0.12))
    scale = rng.uniform(700.0, 1100.0)  # scanner units of grey matter
    signal = image * bias * scale
    sigma = scale * rng.uniform(0.02, 0.04)
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    noisy = np.hypot(real, sigma * rng.standard_normal(signal.shape, dtype=np.float32))
    return np.clip(np.rint(noisy), 0, 32767).astype(np.int16), mask.astype(np.uint8)


def write_cohort(out: Path, n_controls: int, n_patients: int, seed: int) -> list[dict[str, str]]:
    """Write images/, masks/ and manifest.csv into `out` (an existing, empty folder)."""
    import csv

    import nibabel as nib

    template = load_template(2)
    (out / "images").mkdir()
    (out / "masks").mkdir()
    rows = []
    for number in range(n_controls + n_patients):
        patient = number >= n_controls
        subject_id = f"sub-{number + 1:03d}"
        rng = np.random.default_rng([seed, number])
        n_lesions = int(rng.integers(1, 3)) if patient else 0
        volume, mask = make_subject(template, rng, n_lesions)
        image_path = f"images/{subject_id}_flair.nii.gz"
        nifti = nib.Nifti1Image(volume, template.affine)
        nifti.header.set_data_dtype(np.int16)
        nifti.header.set_xyzt_units("mm")
        nib.save(nifti, out / image_path)
        mask_path = ""
        if patient:
            mask_path = f"masks/{subject_id}_lesion.nii.gz"
            nib.save(nib.Nifti1Image(mask, template.affine), out / mask_path)
        rows.append({"subject_id": subject_id, "image": image_path, "mask": mask_path,
                     "group": "patient" if patient else "control"})
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject_id", "image", "mask", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return rows
