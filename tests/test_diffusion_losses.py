"""Training losses on hand-computed cases, min-SNR weights, and the self-conditioning helper."""

import math

import pytest
import torch

from jsddpm.config import LossConfig
from jsddpm.diffusion import (
    PREDICTION_TYPES,
    SIGMA_DATA,
    NoiseSchedule,
    UncertaintyWeighting,
    channel_weight_vector,
    diffusion_loss,
    focal_frequency_loss,
    lesion_weight_map,
    lp_loss,
    min_snr_weights,
    self_condition_input,
)
from jsddpm.errors import UserError

SCHEDULE = NoiseSchedule("cosine", 1000)


def test_lp_loss_with_channel_and_lesion_weights():
    pred = torch.tensor([[[[1.0, -2.0]], [[0.5, 0.0]]]])  # (1, 2 channels, 1, 2)
    mask = torch.tensor([[[[-1.0, 1.0]]]])  # lesion at the second pixel
    loss = lp_loss(pred, torch.zeros_like(pred), p=3.0, channel_weights=[1.0, 4.0],
                   pixel_weights=lesion_weight_map(mask, 10.0))
    # |e|^3 * w_c * w_px = [1*1*1, 8*1*10, 0.125*4*1, 0] -> mean over 4 elements
    assert loss.shape == (1,) and loss.item() == pytest.approx((1 + 80 + 0.5) / 4)
    assert lp_loss(pred, torch.zeros_like(pred), p=1.5).item() == pytest.approx((1 + 2**1.5 + 0.5**1.5) / 4)
    with pytest.raises(UserError, match="loss.p"):
        lp_loss(pred, pred, p=0.0)
    with pytest.raises(UserError, match="channel_weights"):
        lp_loss(pred, pred, channel_weights=[1.0, 1.0, 1.0])


def test_focal_frequency_loss_hand_computed():
    # orthonormal 2x2 DFT of [[3, 1], [0, 0]]: |F| = 2, 1, 2, 1 at (0,0), (0,1), (1,0), (1,1)
    target = torch.tensor([[[[3.0, 1.0], [0.0, 0.0]]]])
    pred = torch.zeros_like(target, requires_grad=True)
    # alpha 1: w = |d| / max = [1, .5, 1, .5]; w |d|^2 = [4, .5, 4, .5]
    loss = focal_frequency_loss(pred, target, alpha=1.0)
    assert loss.item() == pytest.approx(9 / 4)
    assert focal_frequency_loss(pred, target, alpha=2.0).item() == pytest.approx((4 + 0.25 + 4 + 0.25) / 4)
    log_case = (8 + 2 * math.log(2) / math.log(3)) / 4  # w = log(1 + |d|) / log(3)
    assert focal_frequency_loss(pred, target, log_weight=True).item() == pytest.approx(log_case)
    # detached weights: grad = 1/2 * F^H(w * d) with constant w = [1, .5, 1, .5], d = -[2, 1, 2, 1]
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[[[-1.25, -0.75], [0.0, 0.0]]]]))


def test_focal_frequency_loss_patches_and_zero_error():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    patched = focal_frequency_loss(a, b, patch_factor=2)
    by_hand = torch.stack([
        focal_frequency_loss(a[..., i:i + 2, j:j + 2], b[..., i:i + 2, j:j + 2]) for i in (0, 2) for j in (0, 2)
    ]).mean(0)
    torch.testing.assert_close(patched, by_hand)
    assert focal_frequency_loss(a, a).abs().max() == 0  # 0/0 weights become 0, not NaN
    with pytest.raises(UserError, match="ffl_patch_factor"):
        focal_frequency_loss(a, b, patch_factor=3)


def test_uncertainty_weighting_values_and_unclamped_gradients():
    weighting = UncertaintyWeighting()  # default init [0, 1]
    assert [name for name, _ in weighting.named_parameters()] == ["log_vars"]
    total = weighting([torch.tensor(2.0), torch.tensor(3.0)])
    assert total.item() == pytest.approx(2.0 + 0.0 + 3.0 * math.exp(-1) + 1.0)
    total.backward()
    torch.testing.assert_close(weighting.log_vars.grad, torch.tensor([1 - 2.0, 1 - 3.0 * math.exp(-1)]))
    far = UncertaintyWeighting(init=[-40.0, 40.0])  # gradients stay alive far from the optimum
    far([torch.tensor(1e-20), torch.tensor(3.0)]).backward()
    assert far.log_vars.grad[0].item() == pytest.approx(1 - 1e-20 * math.exp(40))
    assert far.log_vars.grad[1].item() == pytest.approx(1.0)


def as_prediction(x0_hat, x_t, t, ptype, sigma_data=SIGMA_DATA):
    """The output of type `ptype` that implies the x0 estimate `x0_hat` at x_t."""
    eps_hat = SCHEDULE.eps_from_x0(x0_hat, x_t, t)
    return SCHEDULE.training_target(x0_hat, eps_hat, t, ptype, sigma_data)


@pytest.mark.parametrize("p", [1.5, 2.0])
def test_min_snr_weights_give_every_prediction_type_the_same_x0_weighting(p):
    t = torch.arange(0, 1000, 37)
    snr = SCHEDULE.snr(t)
    intended = snr.clamp(max=5.0)
    g = torch.Generator().manual_seed(0)
    x0, noise, err = torch.randn(3, len(t), 2, 4, 4, generator=g, dtype=torch.float64)
    x_t = SCHEDULE.q_sample(x0, t, noise)
    x0_loss = lp_loss(x0 + err, x0, p).double()  # the same x0 error for every type
    for ptype in PREDICTION_TYPES:
        pred = as_prediction(x0 + err, x_t, t, ptype)
        target = SCHEDULE.training_target(x0, noise, t, ptype)
        weighted = lp_loss(pred, target, p).double() * min_snr_weights(SCHEDULE, t, 5.0, ptype, p=p).double()
        torch.testing.assert_close(weighted, (intended * x0_loss), rtol=1e-4, atol=0, msg=ptype)
    if p == 2.0:  # Hang et al.'s published forms
        torch.testing.assert_close(min_snr_weights(SCHEDULE, t, 5.0, "epsilon", p=2.0), (intended / snr).float())
        torch.testing.assert_close(min_snr_weights(SCHEDULE, t, 5.0, "v", p=2.0), (intended / (snr + 1)).float())


def test_lp_loss_gradient_is_finite_at_zero_residual_for_p_below_one():
    target = torch.tensor([[[[1.0, -1.0, 0.3, 0.0]]]])
    pred = torch.tensor([[[[1.0, -1.0, 0.7, 0.0]]]], requires_grad=True)  # three exact zeros (masks sit at +-1)
    loss = lp_loss(pred, target, p=0.5)
    assert loss.item() == pytest.approx(0.4**0.5 / 4)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    torch.testing.assert_close(pred.grad, torch.tensor([[[[0.0, 0.0, 0.5 * 0.4**-0.5 / 4, 0.0]]]]))


@pytest.mark.parametrize("p", [1.5, 2.0])
def test_focal_frequency_loss_weighted_like_the_spatial_loss_for_every_prediction_type(p):
    """Each arm's FFL / spatial ratio, at the same x0 error, is the x0 arm's: only the parameterisation's
    own timestep weight W(t) differs, also at t = T-1 where the x0 implied by eps is ~1e4 times its error."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 2, 8, 8, generator=g) * 2 - 1
    noise, err = torch.randn(2, 1, 2, 8, 8, generator=g)
    cfg = LossConfig(p=p, ffl_weight=1.0)
    for t_value in (0, 500, 999):
        t = torch.tensor([t_value])
        x_t = SCHEDULE.q_sample(x0, t, noise)
        ratios = {}
        for ptype in PREDICTION_TYPES:
            pred = as_prediction(x0 + 0.1 * err, x_t, t, ptype)
            _, parts = diffusion_loss(pred, x0, noise, x_t, t, SCHEDULE, ptype, cfg, joint_mask=True)
            ratios[ptype] = (parts["loss_frequency"] / parts["loss_spatial"]).item()
        for ptype in PREDICTION_TYPES:
            assert ratios[ptype] == pytest.approx(ratios["sample"], rel=1e-3), (t_value, ratios)
    # eps at t = T-1 with an eps error of unit size: for p = 2 the frequency term is at most the spatial one
    # (Parseval, spectrum weights <= 1); unweighted it was ~1 / snr = 4e8 times the eps error
    t = torch.tensor([999])
    x_t = SCHEDULE.q_sample(x0, t, noise)
    _, parts = diffusion_loss(noise + err, x0, noise, x_t, t, SCHEDULE, "epsilon", LossConfig(p=2.0, ffl_weight=1.0),
                              joint_mask=False)
    assert 0 < parts["loss_frequency"] <= parts["loss_spatial"] * 1.0001


def test_diffusion_loss_assembles_configured_parts():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 8, 8, generator=g) * 2 - 1
    x0[:, 1] = torch.where(x0[:, 1] > 0.5, 1.0, -1.0)
    noise, pred = torch.randn(2, 3, 2, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    x_t = SCHEDULE.q_sample(x0, t, noise)
    cfg = LossConfig(p=2.0, channel_weights=[1.0, 2.0], lesion_weight=3.0, min_snr_gamma=5.0)
    total, parts = diffusion_loss(pred, x0, noise, x_t, t, SCHEDULE, "v", cfg, joint_mask=True)
    target = SCHEDULE.training_target(x0, noise, t, "v")
    expected = lp_loss(pred, target, 2.0, [1.0, 2.0], lesion_weight_map(x0[:, 1:], 3.0))
    expected = (expected * min_snr_weights(SCHEDULE, t, 5.0, "v", p=2.0)).mean()
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"loss_spatial", "loss"}

    cfg = LossConfig(p=1.5, ffl_weight=0.5, uncertainty_weighting=True)
    weighting = UncertaintyWeighting(cfg.uncertainty_init)
    total, parts = diffusion_loss(pred, x0, noise, x_t, t, SCHEDULE, "sample", cfg, joint_mask=True,
                                  uncertainty=weighting)
    torch.testing.assert_close(parts["loss_frequency"], 0.5 * focal_frequency_loss(pred, x0).mean())
    torch.testing.assert_close(total, weighting([parts["loss_spatial"], parts["loss_frequency"]]))
    with pytest.raises(UserError, match="ffl_weight"):
        diffusion_loss(pred, x0, noise, x_t, t, SCHEDULE, "sample", LossConfig(), joint_mask=True,
                       uncertainty=weighting)


def test_self_condition_input():
    calls = []

    def net(x_t, t, self_cond, label):
        calls.append((self_cond.clone(), label))
        return torch.full_like(x_t, 1.7)  # an x0 prediction outside [-1, 1]

    x_t, t = torch.randn(2, 2, 4, 4), torch.tensor([3, 700])
    assert (self_condition_input(net, x_t, t, SCHEDULE, "sample", 0.0, label=1) == 0).all() and not calls
    x0 = self_condition_input(net, x_t, t, SCHEDULE, "sample", 1.0, label=1)
    assert (x0 == 1.0).all() and not x0.requires_grad  # clipped like at sampling, no gradient
    assert len(calls) == 1 and (calls[0][0] == 0).all() and calls[0][1] == 1
    coins = [self_condition_input(net, x_t, t, SCHEDULE, "sample", 0.5, label=1,
                                  generator=torch.Generator().manual_seed(s)).abs().sum().item() > 0
             for s in range(40)]
    assert 8 < sum(coins) < 32


def test_self_condition_input_feeds_edm_its_scaled_input():
    seen = []

    def net(x_in, t, self_cond):
        seen.append(x_in)
        return torch.zeros_like(x_in)  # F = 0: x0 = c_skip x_t / a

    x_t, t = torch.randn(2, 1, 4, 4, dtype=torch.float64) * 3, torch.tensor([3, 700])
    x0 = self_condition_input(net, x_t, t, SCHEDULE, "edm", 1.0, sigma_data=0.2)
    a, s = SCHEDULE.coef("a", t, x_t), SCHEDULE.coef("s", t, x_t)
    r2 = s**2 + (0.2 * a) ** 2
    torch.testing.assert_close(seen[0], x_t / r2.sqrt())
    torch.testing.assert_close(x0, (0.04 * a / r2 * x_t).clamp(-1, 1))


def test_channel_weight_vector_expands_config_weights():
    assert channel_weight_vector([1.0, 3.0], 2, joint_mask=True) == [1.0, 3.0]
    assert channel_weight_vector([1.0, 3.0], 4, joint_mask=True) == [1.0, 1.0, 1.0, 3.0]  # RGB + mask
    assert channel_weight_vector([2.0, 3.0], 3, joint_mask=False) == [2.0, 2.0, 2.0]
    assert channel_weight_vector([0.5], 2, joint_mask=True) == [0.5, 0.5]
    with pytest.raises(UserError, match="loss.channel_weights"):
        channel_weight_vector([1.0, 2.0, 3.0], 2, joint_mask=True)
