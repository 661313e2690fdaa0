"""Noise schedules, the exact eps / x0 / v / EDM conversions, and the training timestep draws."""

import math

import pytest
import torch

from jsddpm.diffusion import PREDICTION_TYPES, SCHEDULES, NoiseSchedule, sample_timesteps, training_target
from jsddpm.errors import UserError


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedules_run_from_clean_to_noise(kind):
    ab = NoiseSchedule(kind, 1000).alphas_cumprod
    assert ab.shape == (1000,) and ab.dtype == torch.float64
    assert (ab[1:] < ab[:-1]).all() and ab[0] > 0.99 and 0 < ab[-1] < 0.01
    assert NoiseSchedule(kind, 50).alphas_cumprod[-1] < 0.01  # other T keep the same total noise


def test_cosine_schedule_matches_closed_form():
    # abar_t = f((t + 1) / T) / f(0), f(u) = cos^2((u + s) / (1 + s) pi / 2), where beta is not clipped
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = NoiseSchedule("cosine", 1000).alphas_cumprod
    for t in (0, 250, 500, 900):
        assert ab[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)


def test_bad_schedule_values_are_user_errors():
    with pytest.raises(UserError, match="diffusion.schedule"):
        NoiseSchedule("exponential", 1000)
    with pytest.raises(UserError, match="diffusion.timesteps"):
        NoiseSchedule("cosine", 1)
    with pytest.raises(UserError, match="diffusion.prediction_type"):
        NoiseSchedule().to_x0(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), "score")


def test_conversions_round_trip_between_all_prediction_types():
    sched = NoiseSchedule("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = sched.q_sample(x0, t, eps)
    ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    for ptype in PREDICTION_TYPES:
        for sigma_data in (0.5, 0.2, 1.0):
            pred = training_target(x0, eps, t, sched, ptype, sigma_data)
            torch.testing.assert_close(sched.to_x0(pred, x_t, t, ptype, sigma_data), x0)
            torch.testing.assert_close(sched.to_eps(pred, x_t, t, ptype, sigma_data), eps)
            torch.testing.assert_close(sched.to_v(pred, x_t, t, ptype, sigma_data), v)


def test_edm_matches_karras_definition_and_reduces_to_v_for_unit_sigma_data():
    sched = NoiseSchedule("cosine", 1000)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 100, 500, 900, 998, 999])
    x_t, F = torch.randn(2, len(t), 1, 3, 3, generator=g, dtype=torch.float64)
    for sd in (0.5, 1.3):
        # the textbook form: x = x_t / a = x0 + sigma eps, D(x) = c_skip x + c_out F(c_in x)
        ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, sigma = ab.sqrt(), ((1 - ab) / ab).sqrt()
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        torch.testing.assert_close(sched.network_input(x_t, t, "edm", sd), c_in * x_t / a)
        torch.testing.assert_close(sched.to_x0(F, x_t, t, "edm", sd), c_skip * x_t / a + c_out * F)
        # F's target has unit variance at every t for data of variance sd^2: the loss needs no lambda(t)
        unit_x0 = training_target(torch.full_like(ab, sd), torch.zeros_like(ab), t, sched, "edm", sd)
        unit_eps = training_target(torch.zeros_like(ab), torch.ones_like(ab), t, sched, "edm", sd)
        torch.testing.assert_close(unit_x0**2 + unit_eps**2, torch.ones_like(ab))
    # sigma_data = 1: the network sees x_t and F = -v
    x0, eps = torch.randn(2, len(t), 1, 3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sched.network_input(x_t, t, "edm", 1.0), x_t)
    torch.testing.assert_close(training_target(x0, eps, t, sched, "edm", 1.0), -training_target(x0, eps, t, sched, "v"))
    for ptype in ("epsilon", "sample", "v"):  # the others see x_t itself
        assert sched.network_input(x_t, t, ptype, 0.5) is x_t


def _normal_cdf(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return 0.5 * (1 + torch.erf((x - mean) / (std * math.sqrt(2))))


def test_lognormal_timesteps_follow_edm_log_sigma_law_within_discretisation():
    sched, n, p_mean, p_std = NoiseSchedule("cosine", 1000), 200_000, -1.2, 1.2
    t = sample_timesteps(sched, n, "lognormal", p_mean=p_mean, p_std=p_std, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    grid = sched.log_sigma()
    log_sigma = grid[t]
    assert abs(log_sigma.mean().item() - p_mean) < 0.02 and abs(log_sigma.std().item() - p_std) < 0.02
    # empirical CDF at each grid point vs the target normal: off by at most half a cell's mass + sampling
    counts = torch.bincount(t, minlength=1000).double()
    ecdf = counts.cumsum(0) / n
    edges = torch.cat([torch.tensor([-math.inf]), 0.5 * (grid[1:] + grid[:-1]), torch.tensor([math.inf])])
    cell_mass = _normal_cdf(edges[1:], p_mean, p_std) - _normal_cdf(edges[:-1], p_mean, p_std)
    ks = (ecdf - _normal_cdf(grid, p_mean, p_std)).abs().max().item()
    assert ks <= 0.5 * cell_mass.max().item() + 2 / math.sqrt(n), ks
    # and each timestep gets the mass of its cell, the nearest-neighbour law
    assert (counts / n - cell_mass).abs().max().item() < 5 * math.sqrt(cell_mass.max().item() / n)
    # shifting p_mean moves the draws towards more noise
    assert sample_timesteps(sched, 1000, "lognormal", p_mean=1.0, generator=torch.Generator().manual_seed(0)
                            ).float().mean() > t.float().mean()


def test_timestep_draws_are_reproducible_and_uniform_is_unchanged():
    sched = NoiseSchedule("cosine", 1000)
    for method in ("uniform", "lognormal"):
        torch.manual_seed(3)
        first = sample_timesteps(sched, 64, method)
        torch.manual_seed(3)
        assert torch.equal(sample_timesteps(sched, 64, method), first)
    torch.manual_seed(3)
    expected = torch.randint(0, 1000, (64,))  # what training drew before t_sampling existed
    torch.manual_seed(3)
    assert torch.equal(sample_timesteps(sched, 64, "uniform"), expected)
    with pytest.raises(UserError, match="diffusion.t_sampling"):
        sample_timesteps(sched, 4, "beta")
