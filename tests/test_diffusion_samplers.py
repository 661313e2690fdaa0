"""Samplers against analytic answers: 1-D Gaussian data has an exact optimal denoiser, so every sampler
must reproduce the data's mean and std; plus batch independence, CFG and self-conditioning contracts."""

import pytest
import torch

from jsddpm.config import load_config
from jsddpm.diffusion import (
    PREDICTION_TYPES,
    SIGMA_DATA,
    ConditionedDenoiser,
    DDIMSampler,
    DDPMSampler,
    NoiseSchedule,
    sample,
    spaced_timesteps,
    target_from,
)
from jsddpm.errors import UserError

MEAN, STD = 0.3, 0.2
SCHEDULE = NoiseSchedule("cosine", 1000)


def gaussian_denoiser(prediction_type, schedule=SCHEDULE, sigma_data=SIGMA_DATA):
    """The exact optimal denoiser for x0 ~ N(MEAN, STD^2): E[x0 | x_t] in closed form, then the
    requested parameterisation of it. edm's network sees c_in x_t / a and answers F = (x0 - c_skip x) / c_out,
    written here from Karras et al.'s sigma form (sigma = s / a, x = x_t / a)."""

    def denoiser(x_in, t):
        assert t.dtype == torch.long and t.shape == (x_in.shape[0],)
        a, s = schedule.coef("a", t, x_in), schedule.coef("s", t, x_in)
        if prediction_type == "edm":
            sigma, sd2 = s / a, sigma_data**2
            c_skip, c_out, c_in = sd2 / (sigma**2 + sd2), sigma * sigma_data / (sigma**2 + sd2).sqrt(), 1 / (
                sigma**2 + sd2).sqrt()
            x_t = x_in * a / c_in
        else:
            x_t = x_in
        x0 = MEAN + a * STD**2 / (a**2 * STD**2 + s**2) * (x_t - a * MEAN)
        if prediction_type == "edm":
            return (x0 - c_skip * x_t / a) / c_out
        return target_from(x0, (x_t - a * x0) / s, a, s, prediction_type)

    return denoiser


def standard_normal(n, seed):
    """Noise with exactly mean 0 and std 1, so a deterministic sampler's error is its own bias."""
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))
    return (z - z.mean()) / z.std()


# (sampler, steps, relative std tolerance) from the issue; the mean must be within 1% everywhere
CASES = [("dpmpp_2m", 50, 0.02), ("ddim", 250, 0.02), ("ddpm", 1000, 0.02), ("ddpm", 250, 0.04)]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(("sampler", "steps", "std_tol"), CASES)
def test_gaussian_data_mean_and_std(prediction_type, sampler, steps, std_tol):
    # ancestral DDPM injects noise at every step, so it needs more samples than the ODE samplers: two
    # chunks of 32000 (larger tensors go multi-threaded, which crawls on a busy 2-core machine)
    n, chunks = (32000, 2) if sampler == "ddpm" else (2000, 1)
    x = torch.cat([
        sample(gaussian_denoiser(prediction_type), (n, 1), SCHEDULE, prediction_type=prediction_type,
               sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1 + c),
               x_T=standard_normal(n, c))
        for c in range(chunks)
    ])
    mean_err, std_err = x.mean().item() / MEAN - 1, x.std().item() / STD - 1
    assert abs(mean_err) < 0.01 and abs(std_err) < std_tol, (mean_err, std_err)


def test_step_list_spans_training_range_and_respaced_ddpm_is_ddim_eta_1():
    for spacing in ("quadratic", "linear"):
        for steps in (1, 2, 7, 50, 999, 1000):
            ts = spaced_timesteps(1000, steps, spacing)
            assert len(ts) == steps and ts[0] == 999 and (steps == 1 or ts[-1] == 0)
            assert (ts[:-1] > ts[1:]).all()
    assert spaced_timesteps(1000, 1000).tolist() == list(range(999, -1, -1))
    with pytest.raises(UserError, match="sample.steps"):
        spaced_timesteps(1000, 1001)
    # the respaced ancestral step is DDIM with eta = 1, and the previous timestep is the list's next entry
    ddpm, ddim = DDPMSampler(SCHEDULE, 37), DDIMSampler(SCHEDULE, 37, eta=1.0)
    assert ddpm.abar_next[:-1] == SCHEDULE.alphas_cumprod[ddpm.timesteps[1:]].tolist()
    x_t, x0, noise = torch.randn(3, 5, 1, dtype=torch.float64).unbind(0)
    for i in (0, 10, 36):
        eps = SCHEDULE.eps_from_x0(x0, x_t, torch.full((5,), int(ddpm.timesteps[i])))
        assert ddpm.needs_noise(i) == ddim.needs_noise(i) == (i < 36)
        torch.testing.assert_close(ddpm.step(i, x_t, x0, eps, noise), ddim.step(i, x_t, x0, eps, noise))


class TinyConvDenoiser(torch.nn.Module):
    """A stand-in network that mixes pixels spatially and reads the timestep."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x_t, t):
        return torch.tanh(self.conv(x_t)) * (t.view(-1, 1, 1, 1).float() / 1000)


@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 0.5), ("dpmpp_2m", 0.0)])
def test_per_sample_generators_make_samples_independent_of_batch(sampler, eta):
    net = TinyConvDenoiser()
    seeds = [11, 12, 13, 14]

    def run(batch_seeds):
        gens = [torch.Generator().manual_seed(s) for s in batch_seeds]
        return sample(net, (len(gens), 2, 8, 8), SCHEDULE, prediction_type="epsilon", sampler=sampler,
                      steps=6, eta=eta, generator=gens)

    together = run(seeds)
    reordered = run(seeds[::-1]).flip(0)
    alone = torch.cat([run([s]) for s in seeds])
    torch.testing.assert_close(reordered, together, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


class TwoBranchNet(torch.nn.Module):
    """Conditional output 0.2 * label, unconditional 0.1; records every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_t, t, label=None, self_cond=None, drop_cond=None):
        self.calls.append({"batch": x_t.shape[0], "drop": drop_cond, "self_cond": self_cond})
        cond = 0.2 * label.view(-1, 1, 1, 1).float().expand_as(x_t)
        if drop_cond is None:
            return cond
        return torch.where(drop_cond.view(-1, 1, 1, 1), torch.full_like(x_t, 0.1), cond)


def test_classifier_free_guidance_batched_and_unbatched():
    shape, label = (2, 1, 4, 4), torch.tensor([1, 1])
    net = TwoBranchNet()
    one_step = dict(prediction_type="sample", sampler="ddim", steps=1, generator=torch.Generator().manual_seed(0))
    # one step from T-1 lands on the clean data: the output is the guided x0 prediction itself
    guided = sample(ConditionedDenoiser(net, label=label), shape, SCHEDULE, guidance_scale=3.0, **one_step)
    torch.testing.assert_close(guided, torch.full(shape, 0.1 + 3.0 * (0.2 - 0.1)))
    assert [c["batch"] for c in net.calls] == [4]  # both branches in a single forward
    assert net.calls[0]["drop"].tolist() == [False, False, True, True]

    def unbatched(x_t, t, drop_cond=False):  # a plain callable: two calls, drop_cond=True for uncond
        return torch.full_like(x_t, 0.1 if drop_cond else 0.2)

    torch.testing.assert_close(sample(unbatched, shape, SCHEDULE, guidance_scale=3.0, **one_step), guided)
    net.calls.clear()
    cond_only = sample(ConditionedDenoiser(net, label=label), shape, SCHEDULE, guidance_scale=1.0, **one_step)
    torch.testing.assert_close(cond_only, torch.full(shape, 0.2))
    assert net.calls[0]["batch"] == 2 and net.calls[0]["drop"] is None


def test_self_conditioning_feeds_previous_clipped_x0():
    seen = []

    def denoiser(x_t, t, self_cond):
        seen.append(self_cond.clone())
        return torch.full_like(x_t, 1.5 if len(seen) == 1 else 0.25)  # x0 prediction; 1.5 gets clipped

    sample(denoiser, (3, 1, 2, 2), SCHEDULE, prediction_type="sample", sampler="dpmpp_2m", steps=3,
           self_conditioning=True, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 3
    assert (seen[0] == 0).all() and (seen[1] == 1.0).all() and (seen[2] == 0.25).all()


def test_real_unet_batched_cfg_with_self_conditioning_matches_two_calls():
    model = pytest.importorskip("jsddpm.model")
    from jsddpm.config import load_config

    cfg = load_config(None, ["data.image_size=16", "model.base_channels=8", "model.channel_mult=[1,2]",
                             "model.attention_resolutions=[8]", "model.attention_head_dim=8", "model.prior=concat",
                             "diffusion.self_conditioning_prob=0.5"])
    torch.manual_seed(0)
    net = model.build_model(cfg, verbose=False).eval()
    label, z, prior = torch.tensor([0, 1, 1]), torch.tensor([0.1, 0.5, 0.9]), torch.rand(3, 1, 16, 16)

    def two_calls(x_t, t, self_cond, drop_cond=None):
        return net(x_t, t, label=label, z=z, prior=prior, self_cond=self_cond, drop_cond=drop_cond)

    common = dict(prediction_type="v", sampler="dpmpp_2m", steps=4, self_conditioning=True, guidance_scale=2.5)
    batched = sample(ConditionedDenoiser(net, label=label, z=z, prior=prior), (3, 2, 16, 16), SCHEDULE,
                     generator=[torch.Generator().manual_seed(i) for i in range(3)], **common)
    unbatched = sample(two_calls, (3, 2, 16, 16), SCHEDULE,
                       generator=[torch.Generator().manual_seed(i) for i in range(3)], **common)
    torch.testing.assert_close(batched, unbatched, rtol=0, atol=1e-5)
    assert batched.abs().max() <= 1.0 and batched.std() > 0.01


def test_edm_with_other_sigma_data_samples_the_gaussian_exactly():
    n = 2000
    x = sample(gaussian_denoiser("edm", sigma_data=0.1), (n, 1), SCHEDULE, prediction_type="edm", sampler="dpmpp_2m",
               steps=50, x_T=standard_normal(n, 0), sigma_data=0.1)
    assert abs(x.mean().item() / MEAN - 1) < 0.01 and abs(x.std().item() / STD - 1) < 0.02


def x0_as_output(x0_value, x_in, t, ptype):
    """A constant x0 prediction written as the `ptype` output a network fed x_in would give."""
    x_t = x_in / SCHEDULE.network_input(torch.ones_like(x_in), t, ptype)
    x0 = torch.full_like(x_t, x0_value)
    return SCHEDULE.training_target(x0, SCHEDULE.eps_from_x0(x0, x_t, t), t, ptype)


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_guidance_and_self_conditioning_act_on_x0_for_every_prediction_type(ptype):
    shape = (2, 1, 4, 4)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # eps at T-1 needs it
    one_step = dict(prediction_type=ptype, sampler="ddim", steps=1, x_T=x_T, clip_x0=False)

    def two_branch(x_in, t, drop_cond=False):  # conditional x0 = 0.2, unconditional 0.1
        return x0_as_output(0.1 if drop_cond else 0.2, x_in, t, ptype)

    guided = sample(two_branch, shape, SCHEDULE, guidance_scale=3.0, **one_step)
    torch.testing.assert_close(guided, torch.full_like(x_T, 0.1 + 3.0 * (0.2 - 0.1)))
    seen = []

    def self_conditioned(x_in, t, self_cond):
        seen.append(self_cond.clone())
        return x0_as_output(1.5 if len(seen) == 1 else 0.25, x_in, t, ptype)  # 1.5 gets clipped

    sample(self_conditioned, shape, SCHEDULE, prediction_type=ptype, sampler="dpmpp_2m", steps=3,
           self_conditioning=True, x_T=x_T)
    assert (seen[0] == 0).all()
    torch.testing.assert_close(seen[1], torch.ones_like(x_T))
    torch.testing.assert_close(seen[2], torch.full_like(x_T, 0.25))


def test_eta_refused_where_the_sampler_would_ignore_it():
    for preset in ("baseline", "proposal"):  # DDIM with eta > 0
        assert load_config(preset).sample.eta > 0
    for sampler in ("dpmpp_2m", "ddpm"):
        with pytest.raises(UserError, match="sample.eta"):
            load_config(None, [f"sample.sampler={sampler}", "sample.eta=0.3"])
    assert load_config(None, ["sample.sampler=ddim", "sample.eta=0.3"]).sample.eta == 0.3
