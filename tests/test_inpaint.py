"""Inpainting (RePaint) and SDEdit: the known-region sampling loop against exact answers, then the
`jsddpm inpaint` command and `sample.strength` on a tiny checkpoint."""

import numpy as np
import pytest
import torch
from conftest import write_random_checkpoint

# the exact Gaussian denoiser and the stand-in network of the plain sampler tests
from test_diffusion_samplers import MEAN, SCHEDULE, STD, TinyConvDenoiser, gaussian_denoiser

from jsddpm.diffusion import sample
from jsddpm.diffusion.inpaint import sample_known

pytestmark = pytest.mark.usefixtures("one_thread")


def gens(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 0.5), ("dpmpp_2m", 0.0)])
def test_nothing_known_at_full_strength_is_plain_sampling(sampler, eta):
    net, source = TinyConvDenoiser(), torch.randn(3, 2, 8, 8)
    kwargs = dict(prediction_type="epsilon", sampler=sampler, steps=6, eta=eta)
    plain = sample(net, source.shape, SCHEDULE, generator=gens(3), **kwargs)
    torch.testing.assert_close(sample_known(net, source, SCHEDULE, generator=gens(3), **kwargs), plain,
                               rtol=0, atol=0)
    # strength 0 runs no step: the source comes back
    torch.testing.assert_close(sample_known(net, source, SCHEDULE, strength=0.0, generator=gens(3), **kwargs),
                               source, rtol=0, atol=0)


# (sampler, steps) of the sampler tests whose tolerance is 2%; re-noised tries are first-order steps
@pytest.mark.parametrize(("sampler", "steps", "resample"), [("dpmpp_2m", 50, 0), ("ddim", 250, 2)])
def test_gaussian_data_everything_known_or_nothing_known(sampler, steps, resample):
    n = 32000  # fresh noise at every step: the moments' Monte Carlo error is ~0.4% at this size
    source = MEAN + STD * torch.randn(n, 1, generator=torch.Generator().manual_seed(5))
    kwargs = dict(prediction_type="v", sampler=sampler, steps=steps, resample=resample,
                  generator=torch.Generator().manual_seed(1))
    # empty unknown region: the source itself
    known = sample_known(gaussian_denoiser("v"), source, SCHEDULE, keep=torch.ones_like(source, dtype=torch.bool),
                         **kwargs)
    torch.testing.assert_close(known, source, rtol=0, atol=0)
    # everything unknown: the data distribution (the sampler tests' tolerances: mean 1%, std 2%), with
    # or without re-noising jumps
    x = sample_known(gaussian_denoiser("v"), source, SCHEDULE, keep=torch.zeros_like(source, dtype=torch.bool),
                     **kwargs)
    mean_err, std_err = x.mean().item() / MEAN - 1, x.std().item() / STD - 1
    assert abs(mean_err) < 0.01 and abs(std_err) < 0.02, (mean_err, std_err)
    assert (x - source).abs().mean() > STD / 2  # independent of the source


def test_sdedit_strength_moves_from_the_source_to_fresh_samples():
    n = 32000
    source = MEAN + STD * torch.randn(n, 1, generator=torch.Generator().manual_seed(5))

    def run(strength):
        return sample_known(gaussian_denoiser("epsilon"), source, SCHEDULE, strength=strength,
                            prediction_type="epsilon", sampler="dpmpp_2m", steps=50,
                            generator=torch.Generator().manual_seed(2))

    distance = {s: (run(s) - source).abs().mean().item() for s in (0.1, 0.5, 1.0)}
    assert distance[0.1] < 0.1 * STD  # near 0: the source, up to the low noise levels re-drawn
    assert distance[0.1] < distance[0.5] < distance[1.0]
    x = run(0.5)  # any strength keeps the data distribution when the source is drawn from it
    assert abs(x.mean().item() / MEAN - 1) < 0.01 and abs(x.std().item() / STD - 1) < 0.02


# ------------------------------------------------------------------------- commands, tiny model
TINY64 = ["data.image_size=64", "data.n_zbins=10", "model.base_channels=8", "model.channel_mult=[1,2]",
          "model.attention_resolutions=[]", "model.num_classes=2", "model.prior=concat", "diffusion.timesteps=50",
          "sample.steps=4", "sample.sampler=ddpm", "sample.device=cpu", "sample.batch_size=4"]


@pytest.fixture(scope="module")
def demo_checkpoint(demo_cache, tmp_path_factory):
    """A checkpoint as `jsddpm train` writes it for the demo cache, around a randomly perturbed tiny
    network: the known-answer properties below hold for any network."""
    from jsddpm.config import load_config
    from jsddpm.data.cache import load_cache

    cache = load_cache(demo_cache)
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", load_config(None, TINY64), 0.1,
                                   cache.classes, cache.priors, cache.stats["spacing_mm"])


def test_inpaint_keeps_the_source_outside_the_ring_and_the_requested_mask(demo_checkpoint, demo_cache, tmp_path):
    from scipy import ndimage

    from jsddpm.cli import main
    from jsddpm.data.cache import load_cache

    cache = load_cache(demo_cache)
    out = tmp_path / "inp"
    assert main(["inpaint", "--ckpt", str(demo_checkpoint), "--source", str(demo_cache), "--out", str(out),
                 "--n", "5", "inpaint.dilate_px=2", "inpaint.resample=1"]) == 0
    with np.load(out / "samples.npz") as f:
        images, rows, label, zbin, z = f["images"], f["source_index"], f["label"], f["zbin"], f["z"]
        first = {k: f[k] for k in ("images", "seed", "index", "source_index")}
    assert images.shape == (5, 2, 64, 64) and (cache.index["has_lesion"][rows] == 0).all()
    assert (cache.index["split"][rows] == "train").all() and (label == cache.classes.index("lesion")).all()
    np.testing.assert_array_equal(zbin, cache.index["zbin"][rows])
    np.testing.assert_array_equal(z, cache.index["z_norm"][rows])
    source = cache.joint(rows)
    mask = images[:, 1] > 0
    assert set(np.unique(images[:, 1])) == {-1.0, 1.0} and mask.any(axis=(1, 2)).all()
    cross = ndimage.generate_binary_structure(2, 1)
    for k in range(5):
        ring = ndimage.binary_dilation(mask[k], structure=cross, iterations=2)
        np.testing.assert_array_equal(images[k, 0][~ring], source[k, 0][~ring])  # exactly the source
        assert np.abs(images[k, 0][ring] - source[k, 0][ring]).max() > 0  # generated inside
        assert (source[k, 0][mask[k]] > -0.9).all()  # the lesion lies inside the head
    assert (out / "grid_inpaint.png").is_file() and (out / "config.yaml").is_file()
    # deterministic per (seed, source, index): a shorter run gives the same first results
    again = tmp_path / "again"
    assert main(["inpaint", "--ckpt", str(demo_checkpoint), "--source", str(demo_cache), "--out", str(again),
                 "--n", "2", "inpaint.dilate_px=2", "inpaint.resample=1", "sample.batch_size=1"]) == 0
    with np.load(again / "samples.npz") as f:
        for key, value in first.items():
            np.testing.assert_allclose(f[key], value[:2], atol=1e-5)


def test_sdedit_strength_one_is_plain_generation_and_near_zero_the_source(demo_checkpoint, demo_cache, tmp_path,
                                                                          capsys):
    from jsddpm.cli import main
    from jsddpm.data.cache import load_cache

    base = ["generate", "--ckpt", str(demo_checkpoint)]
    spec = tmp_path / "spec.json"
    spec.write_text('{"count": 1, "zbins": [6, 7]}')  # the train split has lesion slices there
    runs = {}
    for name, extra in (("plain", []), ("s1", ["--source", str(demo_cache), "sample.strength=1"]),
                        ("s0", ["--source", str(demo_cache), "sample.strength=0.05"]),
                        ("s05", ["--source", str(demo_cache), "sample.strength=0.5"])):
        assert main([*base, "--out", str(tmp_path / name), "--spec", str(spec), *extra]) == 0
        with np.load(tmp_path / name / "samples.npz") as f:
            runs[name] = {k: f[k] for k in f.files}
    np.testing.assert_array_equal(runs["s1"]["images"], runs["plain"]["images"])
    rows = runs["s0"]["source_index"]
    cache = load_cache(demo_cache)
    np.testing.assert_array_equal(cache.index["zbin"][rows], runs["s0"]["zbin"])
    np.testing.assert_array_equal(cache.index["label"][rows], runs["s0"]["label"])
    np.testing.assert_array_equal(runs["s0"]["images"], cache.joint(rows))  # 0.05 x 4 steps rounds to none
    np.testing.assert_array_equal(runs["s05"]["source_index"], rows)  # a sample's source: (seed, z-bin, class, index)
    assert not np.allclose(runs["s05"]["images"], runs["s0"]["images"])
    assert main([*base, "--out", str(tmp_path / "x"), "sample.strength=0.5"]) == 2  # no --source
    assert main([*base, "--out", str(tmp_path / "x"), "sample.strength=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--source" in err[0] and "sample.strength" in err[1]


def test_bank_mask_placement_lies_inside_the_allowed_region():
    from jsddpm.generation.inpaint import place_mask

    yy, xx = np.mgrid[:32, :32]
    allowed = (yy - 20) ** 2 + (xx - 12) ** 2 < 8**2  # a disc off the centre
    mask = np.zeros((32, 32), bool)
    mask[2:5, 25:31] = True  # a 3 x 6 bar outside it
    rng = np.random.default_rng(0)
    placed = [place_mask(mask, allowed, rng) for _ in range(20)]
    assert all(p is not None and p.any() and not (p & ~allowed).any() for p in placed)
    assert all(0.75 * mask.sum() <= p.sum() <= 1.3 * mask.sum() for p in placed)  # rotation keeps the area
    assert len({np.flatnonzero(p).tobytes() for p in placed}) > 10  # random flips, angles and places
    assert place_mask(mask, allowed & (xx < 10) & (yy < 14), rng) is None  # fits nowhere


class BlobNet(torch.nn.Module):
    """An x0-predicting stand-in: image 0, mask +1 on a 5 x 5 square at the centre, -1 elsewhere."""

    def forward(self, x_t, t, **conditions):
        out = torch.zeros_like(x_t)
        out[:, 1] = -1.0
        c = x_t.shape[-1] // 2
        out[:, 1, c - 2:c + 3, c - 2:c + 3] = 1.0
        return out


def test_generated_masks_are_the_models_and_the_ring_is_generated(demo_cache):
    from jsddpm.checkpoint import Checkpoint
    from jsddpm.config import load_config
    from jsddpm.data.cache import load_cache
    from jsddpm.generation.inpaint import dilate_in_plane, inpaint_batch, source_order

    cache = load_cache(demo_cache)
    cfg = load_config(None, [*TINY64, "diffusion.prediction_type=sample", "inpaint.dilate_px=1"])
    rows = source_order(cache, "train", 0)[:3]
    ckpt = Checkpoint("stand-in.ckpt", {"priors": cache.priors}, {})
    res = inpaint_batch(BlobNet(), cfg, ckpt, cache, rows, np.arange(3) + 10, 1, "generated", "cpu")
    mask = res["images"][:, 1] > 0
    assert (mask.sum(axis=(1, 2)) >= 0.75 * 25).all() and (mask.sum(axis=(1, 2)) <= 1.3 * 25).all()
    ring = dilate_in_plane(mask, 1)
    np.testing.assert_array_equal(res["images"][:, 0][ring], 0.0)  # the network's x0 inside the ring
    np.testing.assert_array_equal(res["images"][:, 0][~ring], cache.joint(rows)[:, 0][~ring])  # the source outside


def test_generated_and_inpainted_sets_record_the_cache_their_checkpoint_was_trained_on(demo_checkpoint, demo_cache,
                                                                                        tmp_path):
    """samples.npz carries the checkpoint's cache fingerprint (a 0-d string), so an export can refuse a
    synthetic set made from a generator of another cache; a checkpoint without one writes none."""
    from jsddpm.cli import main
    from jsddpm.data.cache import load_cache

    fingerprint = load_cache(demo_cache).fingerprint
    raw = torch.load(demo_checkpoint, weights_only=True)
    raw["jsddpm"]["cache_fingerprint"] = fingerprint
    ckpt = tmp_path / "with_cache.ckpt"
    torch.save(raw, ckpt)
    assert main(["inpaint", "--ckpt", str(ckpt), "--source", str(demo_cache), "--out", str(tmp_path / "inp"),
                 "--n", "1", "inpaint.resample=0"]) == 0
    assert main(["generate", "--ckpt", str(ckpt), "--out", str(tmp_path / "gen"), "sample.n_per_condition=1"]) == 0
    assert main(["generate", "--ckpt", str(demo_checkpoint), "--out", str(tmp_path / "old"),
                 "sample.n_per_condition=1"]) == 0
    for name in ("inp", "gen"):
        with np.load(tmp_path / name / "samples.npz") as f:
            assert f["cache_fingerprint"].shape == () and str(f["cache_fingerprint"]) == fingerprint
    with np.load(tmp_path / "old" / "samples.npz") as f:
        assert "cache_fingerprint" not in f.files
