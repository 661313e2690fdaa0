"""Noise schedules and the exact eps / x0 / v conversions."""

import math

import pytest
import torch

from jsddpm.diffusion import SCHEDULES, NoiseSchedule, training_target
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
    for ptype in ("epsilon", "sample", "v"):
        pred = training_target(x0, eps, t, sched, ptype)
        torch.testing.assert_close(sched.to_x0(pred, x_t, t, ptype), x0)
        torch.testing.assert_close(sched.to_eps(pred, x_t, t, ptype), eps)
        torch.testing.assert_close(sched.to_v(pred, x_t, t, ptype), v)
