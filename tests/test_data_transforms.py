"""Augmentation pieces and the SliceDataset over the demo cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jsddpm.config import load_config
from jsddpm.data.cache import load_cache
from jsddpm.data.dataset import SliceDataset, lesion_weights, make_sampler
from jsddpm.data.transforms import (
    Augment,
    apply_spatial,
    compose,
    crop_affine,
    hflip_affine,
    intensity_jitter,
    rotation_affine,
)


def blob_pair(size=48):
    """A smooth off-centre blob image in [-1, 1] (background -1) and its mask image > 0."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r2 = ((yy - 0.35 * size) ** 2 + (xx - 0.6 * size) ** 2) / (0.18 * size) ** 2
    image = (2 * torch.exp(-r2) - 1)[None].float()
    image[image < -0.99] = -1.0
    return image, (image > 0).float()


def test_hflip_is_an_exact_mirror():
    image, mask = blob_pair()
    prior = torch.rand(1, 48, 48)
    theta = hflip_affine(p=1.0)
    out_image, out_mask, out_prior = apply_spatial(theta, image, mask, prior)
    torch.testing.assert_close(out_image, image.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out_mask, mask.flip(-1))
    torch.testing.assert_close(out_prior, prior.flip(-1), atol=1e-5, rtol=0)


def test_compose_matches_sequential_application():
    g = torch.Generator().manual_seed(0)
    crop, rot = crop_affine(1.25, g), rotation_affine(15.0, g)
    image, _ = blob_pair()
    one_pass = apply_spatial(compose(crop, rot), image)[0]
    two_pass = apply_spatial(rot, apply_spatial(crop, image)[0])[0]
    inner = (slice(None), slice(8, 40), slice(8, 40))  # away from the border, where resampling twice differs
    assert (one_pass - two_pass)[inner].abs().mean() < 0.02
    # two rotations compose into one by the summed angle
    a, b = math.radians(10), math.radians(-25)
    ra = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    rb = torch.tensor([[math.cos(b), -math.sin(b), 0.0], [math.sin(b), math.cos(b), 0.0]])
    rab = torch.tensor([[math.cos(a + b), -math.sin(a + b), 0.0], [math.sin(a + b), math.cos(a + b), 0.0]])
    torch.testing.assert_close(compose(ra, rb), rab)


def test_crop_zooms_in_and_stays_inside_the_larger_image():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        theta = crop_affine(1.2, g)
        assert theta[0, 0] == pytest.approx(1 / 1.2) and theta[1, 1] == pytest.approx(1 / 1.2)
        # the crop's corners (+-1) map inside the original image's extent [-1, 1]
        assert (theta[:, 2].abs() + 1 / 1.2 <= 1 + 1e-6).all()


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("seed", range(6))
def test_augment_keeps_image_and_mask_aligned_and_mask_binary(seed):
    image, mask = blob_pair()
    prior = mask.clone()
    augment = Augment(crop_scale=1.3, hflip=True, rotate_deg=25.0, brightness=0.0, contrast=0.0)
    out_image, out_mask, out_prior = augment(image, mask, prior, generator=torch.Generator().manual_seed(seed))
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_mask, mask)  # it did move
    assert iou(out_image > 0, out_mask > 0.5) > 0.9
    assert iou(out_prior > 0.5, out_mask > 0.5) > 0.9
    assert out_image.min() >= -1.0 and out_image.max() <= 1.0


def test_default_spatial_augmentation_never_resamples():
    """Resampling low-passes slices (the generator then learns smoothed images): by default a slice is
    only mirrored, pixel for pixel."""
    cfg = load_config(None, ["data.augment.brightness=0", "data.augment.contrast=0"]).data.augment
    image = torch.rand(1, 24, 24) * 2 - 1  # white noise: any interpolation would change it
    mask = (torch.rand(24, 24) > 0.9).float()
    flipped = 0
    for seed in range(8):
        out, out_mask, _ = Augment.from_config(cfg)(image, mask, None, generator=torch.Generator().manual_seed(seed))
        mirrored = torch.equal(out, image.flip(-1))
        assert mirrored or torch.equal(out, image)
        assert torch.equal(out_mask, mask.flip(-1) if mirrored else mask)
        flipped += mirrored
    assert 0 < flipped < 8


def test_intensity_jitter_keeps_background_range_and_order():
    image, _ = blob_pair()
    g = torch.Generator().manual_seed(2)
    out = intensity_jitter(image, brightness=0.2, contrast=0.3, generator=g)
    background = image == -1
    assert torch.equal(out[background], image[background])
    assert out.min() >= -1 and out.max() <= 1
    fg = ~background & (out < 1) & (out > -1)
    order = torch.argsort(image[fg])
    assert (out[fg][order].diff() >= -1e-6).all()  # monotone: contrast jitter never inverts intensities
    assert not torch.allclose(out, image)


def test_dataset_items_follow_the_contract(demo_cache):
    cfg = load_config(None, ["data.augment.enabled=false"]).data
    cache = load_cache(demo_cache)
    dataset = SliceDataset(cache, "train", cfg, train=True)
    assert len(dataset) == len(cache.indices("train"))
    rows = cache.indices("train")
    lesion_item = int(np.flatnonzero(cache.index["has_lesion"][rows])[0])
    item = dataset[lesion_item]
    row = rows[lesion_item]
    assert item["x"].shape == (2, 64, 64) and item["x"].dtype == torch.float32
    np.testing.assert_array_equal(item["x"].numpy(), cache.joint([row])[0])
    assert set(item["x"][1].unique().tolist()) == {-1.0, 1.0}
    assert item["label"].dtype == torch.int64 and int(item["label"]) == cache.index["label"][row]
    assert int(item["zbin"]) == cache.index["zbin"][row]
    assert float(item["z"]) == pytest.approx(float(cache.index["z_norm"][row]))
    np.testing.assert_allclose(item["prior"][0].numpy(), cache.priors[cache.index["zbin"][row]])

    augmented = SliceDataset(cache, "train", load_config(None, []).data, train=True)
    torch.manual_seed(0)
    x = augmented[lesion_item]["x"]
    assert x.shape == (2, 64, 64) and set(x[1].unique().tolist()) <= {-1.0, 1.0}
    batch = next(iter(torch.utils.data.DataLoader(augmented, batch_size=4)))
    assert batch["x"].shape == (4, 2, 64, 64) and batch["prior"].shape == (4, 1, 64, 64)


def test_lesion_oversampling_rate(demo_cache):
    np.testing.assert_array_equal(lesion_weights(np.array([0, 1, 1, 0]), 3.0), [1.0, 3.0, 3.0, 1.0])
    cfg = load_config(None, ["data.lesion_oversample=4"]).data
    dataset = SliceDataset(demo_cache, "train", cfg, train=False)
    has_lesion = dataset.cache.index["has_lesion"][dataset.rows]
    n_les = has_lesion.sum()
    expected = 4 * n_les / (4 * n_les + (len(has_lesion) - n_les))
    sampler = make_sampler(dataset, num_samples=20000, generator=torch.Generator().manual_seed(0))
    drawn = has_lesion[np.fromiter(sampler, dtype=np.int64)].mean()
    assert drawn == pytest.approx(expected, abs=0.02)
    assert make_sampler(SliceDataset(demo_cache, "train", load_config().data)) is None
