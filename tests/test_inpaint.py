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
from jsddpm.errors import UserError

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
    # strength 0 would return the source itself (real data as synthetic): refused in one line
    with pytest.raises(UserError, match="sample.strength"):
        sample_known(net, source, SCHEDULE, strength=0.0, generator=gens(3), **kwargs)


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


def coupling(x: torch.Tensor, std: float, rho: float) -> tuple[float, float]:
    """(slope of column 1 on column 0, residual std / the exact conditional's)."""
    k, u = x[:, 0].double(), x[:, 1].double()
    slope = (((k - k.mean()) * (u - u.mean())).mean() / k.var()).item()
    return slope, (u - u.mean() - slope * (k - k.mean())).std().item() / (std * (1 - rho**2) ** 0.5)


@pytest.mark.parametrize("settings", ["defaults", "before"])
def test_partially_known_gaussian_couples_like_the_exact_conditional(settings):
    """Issue 20 section 4: (k, u) ~ N(0, 0.5^2 [[1, 0.9], [0.9, 1]]) with k known. Exact: u's slope on k is 0.90,
    its residual std 0.436 x 0.5. The inpaint defaults (DPM-Solver++ 30 steps, 9 re-noising jumps: 300 calls
    per result) must give the slope within 0.06 (the issue's reference, ancestral DDPM 250 x 4, gives 0.855)
    and the residual std within 5% (benchmarks/inpaint_coupling_bench.py has the whole table); the former
    2 jumps gave 0.71."""
    from jsddpm.config import load_config
    from jsddpm.diffusion.analytic import GaussianDenoiser

    std, rho, n = 0.5, 0.9, 20000
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64) * std**2
    source = (torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
              @ torch.linalg.cholesky(cov).T).float()
    p = load_config(None).inpaint
    sampler, steps, resample = (p.sampler, p.steps, p.resample) if settings == "defaults" else ("dpmpp_2m", 30, 2)
    x = sample_known(GaussianDenoiser([0.0, 0.0], cov, SCHEDULE), source, SCHEDULE, keep=torch.tensor([True, False]),
                     resample=resample, prediction_type="sample", sampler=sampler, steps=steps,
                     generator=torch.Generator().manual_seed(1), clip_x0=False)
    torch.testing.assert_close(x[:, 0], source[:, 0], rtol=0, atol=0)
    slope, resid = coupling(x, std, rho)
    if settings == "defaults":
        assert abs(slope - rho) < 0.06 and abs(resid - 1) < 0.05, (slope, resid)
    else:
        assert slope < 0.75, slope


@pytest.mark.parametrize(("strength", "prediction_type"),
                         [(0.02, "epsilon"), (0.3, "epsilon"), (0.5, "epsilon"), (0.8, "epsilon"), (0.5, "edm")])
def test_sdedit_strength_is_the_noise_level(strength, prediction_type):
    """From x_t0 = a x0 + s eps the exact probability-flow ODE of N(MEAN, STD^2) data maps y = x_t0 / a to
    MEAN + (y - MEAN) STD / sqrt(STD^2 + sigma^2), sigma^2 = (1 - abar) / abar: the result keeps the data's
    law and its correlation with the source is STD / sqrt(STD^2 + sigma_t0^2), with t0 = round(S (T - 1)).
    EDM starts at that same level, sigma_t0 (its network is fed the same discrete timesteps)."""
    n = 32000
    source = MEAN + STD * torch.randn(n, 1, generator=torch.Generator().manual_seed(5))
    seen = []

    def denoiser(x_in, t):
        seen.append(int(t[0]))
        return gaussian_denoiser(prediction_type)(x_in, t)

    x = sample_known(denoiser, source, SCHEDULE, strength=strength, prediction_type=prediction_type, sampler="dpmpp_2m",
                     steps=50, generator=torch.Generator().manual_seed(2))
    t0 = round(strength * 999)
    assert seen[0] == t0 and seen == sorted(set(seen), reverse=True)
    abar = SCHEDULE.alphas_cumprod[t0].item()
    expected = STD / (STD**2 + (1 - abar) / abar) ** 0.5
    corr = torch.corrcoef(torch.stack([x[:, 0], source[:, 0]]))[0, 1].item()
    assert abs(corr - expected) < 0.01, (corr, expected)
    assert abs(x.mean().item() / MEAN - 1) < 0.01 and abs(x.std().item() / STD - 1) < 0.02


def test_tiny_strength_still_runs_a_network_step():
    """Issue 22: a strength that once rounded to zero steps returned the sources bit for bit. Every strength
    > 0 starts at t0 = round(S (T - 1)) >= 0 and runs that step: the result is the network's."""
    source = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []

    def net(x_in, t):
        seen.append(t.tolist())
        return torch.zeros_like(x_in)  # x0 = 0 whatever the input

    x = sample_known(net, source, SCHEDULE, strength=1e-6, prediction_type="sample", sampler="dpmpp_2m", steps=30,
                     generator=gens(3))
    assert seen == [[0, 0, 0]]
    torch.testing.assert_close(x, torch.zeros_like(source), rtol=0, atol=0)


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


def test_sdedit_strength_one_is_plain_generation_and_near_zero_still_generated(demo_checkpoint, demo_cache, tmp_path,
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
    # t0 = round(0.05 x 49) = 2: the network's result, never the sources themselves (issue 22)
    assert not np.array_equal(runs["s0"]["images"][:, 0], cache.joint(rows)[:, 0])
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

    condition_names = ()  # it takes no conditions

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


def test_inpainting_has_its_own_guidance_scale():
    """inpaint.guidance_scale replaces sample.guidance_scale for inpainting only (null: the sample one)."""
    from jsddpm.config import load_config
    from jsddpm.draw import sampler_settings

    cfg = load_config(None, ["sample.guidance_scale=1.5"])
    assert sampler_settings(cfg, inpainting=True)["guidance_scale"] == 1.5
    cfg = load_config(None, ["sample.guidance_scale=1.5", "inpaint.guidance_scale=3"])
    assert sampler_settings(cfg, inpainting=True)["guidance_scale"] == 3.0
    assert sampler_settings(cfg)["guidance_scale"] == 1.5  # plain generation keeps its own
    with pytest.raises(UserError, match="inpaint.guidance_scale must be null"):
        load_config(None, ["inpaint.guidance_scale=-1"])
