"""Augmentation for (image, mask, prior) slices, in torch.

Each spatial piece is a random 2x3 affine in grid_sample's normalised coordinates (output -> input);
`compose` multiplies them so a whole chain costs one resampling. The same grid moves the image
(bilinear), the prior (bilinear) and the mask (nearest, so it stays binary). Outside the slice the
image is -1 (background), mask and prior 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
MIRROR = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def crop_affine(scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of the original size out of the image resized by `scale` (>= 1)."""
    if scale <= 1.0:
        return IDENTITY.clone()
    margin = (scale - 1.0) / scale  # the crop centre moves at most this far in normalised units
    tx, ty = _uniform(-margin, margin, generator), _uniform(-margin, margin, generator)
    return torch.tensor([[1.0 / scale, 0.0, tx], [0.0, 1.0 / scale, ty]])


def hflip_affine(p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Left-right mirror with probability p."""
    flip = float(torch.rand((), generator=generator)) < p
    return torch.tensor([[-1.0 if flip else 1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def rotation_affine(max_deg: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotation by an angle uniform in [-max_deg, max_deg] about the centre (square slices)."""
    angle = math.radians(_uniform(-max_deg, max_deg, generator)) if max_deg > 0 else 0.0
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0]])


def compose(*thetas: torch.Tensor) -> torch.Tensor:
    """One affine equal to applying the transforms in the given order (first one first)."""
    total = torch.eye(3)
    for theta in thetas:
        total = total @ torch.cat([theta, torch.tensor([[0.0, 0.0, 1.0]])])
    return total[:2]


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample (C, H, W) `x` with output->input affine `theta`; zeros outside."""
    grid = F.affine_grid(theta[None].to(x.dtype), [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None], grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


def apply_spatial(theta: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None = None,
                  prior: torch.Tensor | None = None):
    """The same spatial transform on image ([-1, 1], background -1), mask ({0, 1}) and prior."""
    if torch.equal(theta, IDENTITY):
        return image, mask, prior
    if torch.equal(theta, MIRROR):  # pixels land on pixels: flip exactly rather than resample

        def mirror(x):
            return None if x is None else x.flip(-1)

        return mirror(image), mirror(None if mask is None else mask.float()), mirror(prior)
    image = warp(image + 1.0, theta, "bilinear") - 1.0  # zero padding of image+1 is background -1
    if mask is not None:
        mask = warp(mask.float(), theta, "nearest")
    if prior is not None:
        prior = warp(prior, theta, "bilinear")
    return image, mask, prior


def intensity_jitter(image: torch.Tensor, brightness: float, contrast: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Contrast (multiplicative around the background level -1) and brightness (additive) jitter of
    the foreground; background pixels stay exactly -1 and the result stays in [-1, 1]."""
    c = _uniform(1.0 - contrast, 1.0 + contrast, generator)
    b = _uniform(-brightness, brightness, generator)
    jittered = torch.clamp(c * (image + 1.0) - 1.0 + b, -1.0, 1.0)
    return torch.where(image > -1.0 + 1e-6, jittered, image)


class Augment:
    """Random crop-from-larger, horizontal flip, small rotation, then brightness/contrast jitter."""

    def __init__(self, crop_scale: float = 1.0, hflip: bool = True, rotate_deg: float = 0.0,
                 brightness: float = 0.05, contrast: float = 0.05):
        self.crop_scale, self.hflip, self.rotate_deg = crop_scale, hflip, rotate_deg
        self.brightness, self.contrast = brightness, contrast

    @classmethod
    def from_config(cls, cfg) -> Augment:
        return cls(cfg.crop_scale, cfg.hflip, cfg.rotate_deg, cfg.brightness, cfg.contrast)

    def __call__(self, image, mask=None, prior=None, generator: torch.Generator | None = None):
        theta = compose(crop_affine(self.crop_scale, generator),
                        rotation_affine(self.rotate_deg, generator),
                        hflip_affine(0.5 if self.hflip else 0.0, generator))
        image, mask, prior = apply_spatial(theta, image, mask, prior)
        if self.brightness > 0 or self.contrast > 0:
            image = intensity_jitter(image, self.brightness, self.contrast, generator)
        return image, mask, prior
