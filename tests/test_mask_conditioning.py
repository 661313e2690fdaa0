"""Mask-conditioned generation (model.mask_conditioning): the network's mask input and its null value, the
guidance composition against exact Gaussian answers, the joint Gaussian's conditional law, training with the
condition, checkpoints and the `draw.sample_batch(..., mask=)` API."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from test_diffusion_samplers import SCHEDULE, standard_normal

from jsddpm.config import from_container, load_config, to_container
from jsddpm.diffusion import PREDICTION_TYPES, ConditionedDenoiser, sample, target_from
from jsddpm.diffusion.analytic import GaussianDenoiser
from jsddpm.diffusion.inpaint import sample_known
from jsddpm.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16
TINY = [f"data.image_size={SIZE}", "model.base_channels=8", "model.channel_mult=[1,2]",
        "model.attention_resolutions=[8]", "model.attention_head_dim=8", "model.prior=concat",
        "model.mask_conditioning=true", "diffusion.timesteps=100", "sample.steps=4"]


def random_net(cfg):
    from jsddpm.model import build_model

    torch.manual_seed(0)
    net = build_model(cfg, verbose=False).eval()
    with torch.no_grad():  # the zero-initialised output layer would make every prediction 0
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def binary_masks(n, seed=0):
    return torch.where(torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) > 0.7, 1.0, -1.0)


# ------------------------------------------------------------------------------------ network
def test_mask_input_null_value_and_its_own_dropout():
    cfg = load_config(None, TINY)
    net = random_net(cfg)
    assert net.in_channels == 2 + 1 + 1  # data, prior, mask
    x, t = torch.randn(3, 2, SIZE, SIZE), torch.tensor([10, 50, 90])
    cond = dict(label=torch.tensor([0, 1, 1]), z=torch.tensor([0.2, 0.5, 0.8]), prior=torch.rand(3, 1, SIZE, SIZE))
    mask = binary_masks(3)
    with torch.no_grad():
        withheld = net(x, t, **cond)
        given = net(x, t, mask=mask, **cond)
        torch.testing.assert_close(net(x, t, mask=mask, mask_drop=True, **cond), withheld, rtol=0, atol=0)
        assert (given - withheld).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        # dropping class / z / prior keeps the mask: the two coins are independent
        nulled = net(x, t, mask=mask, drop_cond=True, **cond)
        assert (nulled - net(x, t, drop_cond=True, **cond)).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        # per-sample flags: each row as if alone
        mixed = net(x, t, mask=mask, mask_drop=torch.tensor([True, False, True]), **cond)
        torch.testing.assert_close(mixed[[0, 2]], withheld[[0, 2]], rtol=0, atol=1e-6)
        torch.testing.assert_close(mixed[1], given[1], rtol=0, atol=1e-6)


def test_config_keys_and_old_checkpoints():
    with pytest.raises(UserError, match="model.mask_conditioning"):
        load_config(None, ["model.mask_conditioning=true", "model.joint_mask=false"])
    for bad in ("train.mask_drop=1.5", "sample.mask_guidance=-1", "inpaint.steps=0", "inpaint.sampler=euler"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            load_config(None, [bad])
    stored = to_container(load_config(None))
    del stored["model"]["mask_conditioning"], stored["train"]["mask_drop"], stored["sample"]["mask_guidance"]
    old = from_container(stored)  # a checkpoint written before the keys existed
    assert old.model.mask_conditioning is False and old.sample.mask_guidance == 1.0


def test_training_dropout_coins_are_independent():
    from jsddpm.training.module import condition_drops

    torch.manual_seed(0)
    cfg = load_config(None, ["model.mask_conditioning=true", "diffusion.condition_dropout=0.2", "train.mask_drop=0.5"])
    drop, mask_drop = condition_drops(cfg, 100_000, "cpu")
    for d, m in ((True, True), (True, False), (False, True), (False, False)):
        expected = (0.2 if d else 0.8) * 0.5
        assert abs(((drop == d) & (mask_drop == m)).float().mean().item() - expected) < 0.005
    assert condition_drops(load_config(None), 4, "cpu")[1] is None


# ------------------------------------------------------------------------ guidance, exact answers
STD = 0.2
MEANS = {(True, True): 0.1, (False, True): 0.2, (False, False): 0.35, (True, False): -0.4}  # (drop_cond, mask_drop)


class BranchNet(torch.nn.Module):
    """Per row, the exact denoiser of N(mu, STD^2) data with mu set by the row's flags (MEANS): the three
    branches have equal variances, so the guided prediction IS the exact denoiser of N(mu_A + s_c (mu_B - mu_A)
    + s_m (mu_C - mu_B), STD^2) and every sampler must draw that law. Records its calls."""

    def __init__(self, prediction_type):
        super().__init__()
        self.prediction_type, self.calls = prediction_type, []

    def forward(self, x_in, t, label=None, mask=None, drop_cond=None, mask_drop=None, self_cond=None):
        n = x_in.shape[0]
        self.calls.append({"batch": n, "self_cond": None if self_cond is None else self_cond.shape[0],
                           "mask": None if mask is None else mask.shape[0]})
        drop = torch.zeros(n, dtype=torch.bool) if drop_cond is None else drop_cond
        withheld = torch.zeros(n, dtype=torch.bool) if mask_drop is None else mask_drop
        table = torch.tensor([MEANS[(d, m)] for d in (False, True) for m in (False, True)], dtype=x_in.dtype)
        mu = table[2 * drop.long() + withheld.long()][:, None]
        a, s = SCHEDULE.coef("a", t, x_in), SCHEDULE.coef("s", t, x_in)
        x_t = x_in / SCHEDULE.network_input(torch.ones_like(x_in), t, self.prediction_type)
        x0 = mu + a * STD**2 / (a**2 * STD**2 + s**2) * (x_t - a * mu)
        return target_from(x0, (x_t - a * x0) / s, a, s, self.prediction_type)


CFG_CASES = [(1.0, 3.0, 2), (2.5, 1.0, 3), (2.0, 3.0, 3)]  # (guidance_scale, mask_guidance, branches)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(("s_c", "s_m", "branches"), CFG_CASES)
def test_guidance_composition_is_exact_on_gaussians(prediction_type, s_c, s_m, branches):
    n = 2000
    net = BranchNet(prediction_type)
    denoiser = ConditionedDenoiser(net, label=torch.ones(n, dtype=torch.long), mask=torch.ones(n, 1))
    x = sample(denoiser, (n, 1), SCHEDULE, prediction_type=prediction_type, sampler="dpmpp_2m", steps=50,
               x_T=standard_normal(n, 0), guidance_scale=s_c, mask_guidance=s_m, clip_x0=False,
               self_conditioning=True)
    a, b, c = MEANS[(True, True)], MEANS[(False, True)], MEANS[(False, False)]
    expected = a + s_c * (b - a) + s_m * (c - b)
    assert abs(x.mean().item() - expected) < 0.005 and abs(x.std().item() / STD - 1) < 0.02
    # every branch in ONE forward on the stacked batch, self-conditioning and mask stacked along
    assert {(c["batch"], c["self_cond"], c["mask"]) for c in net.calls} == {(branches * n,) * 3}


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guidance_composition_with_the_other_samplers(sampler):
    n = 16000
    net = BranchNet("v")
    denoiser = ConditionedDenoiser(net, mask=torch.ones(n, 1))
    x = sample(denoiser, (n, 1), SCHEDULE, prediction_type="v", sampler=sampler, steps=250, x_T=standard_normal(n, 0),
               generator=torch.Generator().manual_seed(3), guidance_scale=2.0, mask_guidance=3.0, clip_x0=False)
    expected = 0.1 + 2.0 * (0.2 - 0.1) + 3.0 * (0.35 - 0.2)
    assert abs(x.mean().item() - expected) < 0.005 and abs(x.std().item() / STD - 1) < 0.04


# joint Gaussian (image x, mask m): the conditional law of x given m, and what guidance on m does to it
MU = np.array([0.3, -0.2])
SX, SM, RHO = 0.3, 0.6, 0.7
COV = np.array([[SX**2, RHO * SX * SM], [RHO * SX * SM, SM**2]])


def guided_reference(w: float, sde: bool) -> tuple[float, float, float]:
    """(mean of x at m = 0, slope of x on m, residual std) that sampling with mask guidance w converges to, from
    the exact branches.

    In y = x_t / a, sigma = s / a, the withheld branch is the joint posterior mean, whose image part is
    mu_x + P_xx (y_x - mu_x) + P_xm (y_m - mu_m), P = C (C + sigma^2 I)^-1, with y_m the given mask re-noised
    at every call: its fresh noise averages out over many steps, leaving y_m = m. The given branch is
    mu_c + g_c (y_x - mu_c) with the conditional law (mu_c, v_c), g_c = v_c / (v_c + sigma^2). The guided
    prediction D = (1 - w) withheld + w given = b + g y_x is affine in y_x, so the result is Gaussian given m;
    its mean M and variance V follow the probability-flow ODE dy/dsigma = (y - D) / sigma,
        dM/dsigma = ((1 - g) M - b) / sigma,   dV/dsigma = 2 (1 - g) V / sigma,
    or the reverse SDE (ancestral sampling): the drift doubled and dV gains -2 sigma. Integrated from pure
    noise at T-1 (M = 0, V = 1 / abar) to sigma = 0. w = 1 gives the exact conditional; the result is NOT
    mean-linear in w unless both branches have the same variance (test_guidance_composition_is_exact...).
    """
    v_c = COV[0, 0] - COV[0, 1] ** 2 / COV[1, 1]
    k = 2.0 if sde else 1.0

    def mean_and_var(m):
        mu_c = MU[0] + COV[0, 1] / COV[1, 1] * (m - MU[1])

        def rhs(u, y):
            sigma = np.exp(u)
            p = COV @ np.linalg.inv(COV + sigma**2 * np.eye(2))
            g_c = v_c / (v_c + sigma**2)
            g = (1 - w) * p[0, 0] + w * g_c
            b = (1 - w) * (MU[0] * (1 - p[0, 0]) + p[0, 1] * (m - MU[1])) + w * (1 - g_c) * mu_c
            return [k * ((1 - g) * y[0] - b), 2 * k * (1 - g) * y[1] - (2 * sigma**2 if sde else 0.0)]

        abar = SCHEDULE.alphas_cumprod[-1].item()
        sol = solve_ivp(rhs, [0.5 * np.log((1 - abar) / abar), np.log(1e-5)], [0.0, 1 / abar], rtol=1e-10,
                        atol=1e-12, method="LSODA")
        return sol.y[0, -1], sol.y[1, -1]

    (m0, v0), (m1, _) = mean_and_var(0.0), mean_and_var(1.0)
    return m0, m1 - m0, v0**0.5


def joint_gaussian_net(prediction_type):
    exact = GaussianDenoiser(MU, COV, SCHEDULE, prediction_type)

    def net(x_in, t, mask, mask_drop=None, drop_cond=None):  # the optimal mask-conditioned network (no class)
        given = torch.zeros(x_in.shape, dtype=torch.bool)
        given[:, 1] = True if mask_drop is None else ~mask_drop
        return exact(x_in, t, given, torch.cat([torch.zeros_like(mask), mask], dim=1))

    return net


@pytest.mark.parametrize(("sampler", "steps", "w", "prediction_type"),
                         [("dpmpp_2m", 50, 1.0, "edm"), ("ddim", 100, 1.0, "epsilon"), ("ddpm", 250, 1.0, "v"),
                          ("dpmpp_2m", 50, 0.0, "sample"), ("dpmpp_2m", 50, 2.0, "v"), ("dpmpp_2m", 50, 3.0, "edm"),
                          ("ddpm", 250, 3.0, "sample")])
def test_joint_gaussian_image_given_mask(sampler, steps, w, prediction_type):
    """With the mask given (kept known, as `draw.sample_batch` does) the image follows x | m exactly at w = 1
    (mean mu_x + 0.35 (m - mu_m), residual std 0.214), and mask guidance w moves it as `guided_reference` derives
    (ODE samplers: slope 0.21 / 0.47 / 0.58 at w = 0 / 2 / 3; ancestral: 0.46 at w = 3); the mask comes back
    exactly."""
    n = 8000
    rng = np.random.default_rng(0)
    source = torch.tensor(rng.standard_normal((n, 2)) @ np.linalg.cholesky(COV).T + MU, dtype=torch.float32)
    denoiser = ConditionedDenoiser(joint_gaussian_net(prediction_type), mask=source[:, 1:].double())
    x = sample_known(denoiser, source, SCHEDULE, keep=torch.tensor([False, True]), prediction_type=prediction_type,
                     sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1), clip_x0=False,
                     mask_guidance=w)
    torch.testing.assert_close(x[:, 1], source[:, 1], rtol=0, atol=0)
    m, img = x[:, 1].double(), x[:, 0].double()
    slope = (((m - m.mean()) * (img - img.mean())).mean() / m.var()).item()
    resid = (img - img.mean() - slope * (m - m.mean())).std().item()
    ref_at_0, ref_slope, ref_resid = guided_reference(w, sampler == "ddpm")
    if w == 1.0:
        assert ref_at_0 == pytest.approx(MU[0] - COV[0, 1] / COV[1, 1] * MU[1], abs=1e-4)
        assert ref_slope == pytest.approx(COV[0, 1] / COV[1, 1], abs=1e-4)
        assert ref_resid == pytest.approx((COV[0, 0] - COV[0, 1] ** 2 / COV[1, 1]) ** 0.5, rel=1e-4)
    # the conditional mean at the masks' mean (intercept and slope together), then its slope and spread
    assert abs(img.mean().item() - (ref_at_0 + ref_slope * m.mean().item())) < 0.006, (img.mean(), ref_at_0)
    assert abs(slope - ref_slope) < 0.012 and abs(resid / ref_resid - 1) < (0.04 if sampler == "ddpm" else 0.025), \
        (slope, ref_slope, resid, ref_resid)


# ------------------------------------------------------------------------------ the draw API
def test_sample_batch_given_masks_returns_them_exactly_in_one_forward_per_step():
    from jsddpm.draw import postprocess, sample_batch

    cfg = load_config(None, [*TINY, "sample.guidance_scale=2", "sample.mask_guidance=3",
                             "diffusion.self_conditioning_prob=0.5"])
    net = random_net(cfg)
    calls = []

    def recording(*args, **kwargs):
        calls.append(args[0].shape[0])
        return net(*args, **kwargs)

    recording.condition_names = net.condition_names  # the stand-in takes what the network takes
    masks, priors = binary_masks(3), torch.rand(4, SIZE, SIZE)
    args = (cfg, [0, 1, 3], [0, 1, 1], [5, 6, 7], priors, "cpu")
    out = sample_batch(recording, *args, mask=masks.numpy())
    torch.testing.assert_close(out[:, -1:], masks, rtol=0, atol=0)
    assert calls == [9] * 4  # three branches stacked, one forward per step
    assert np.array_equal(postprocess(out, True)[:, -1:], masks.numpy())
    assert out[:, 0].std() > 0.01
    # per-sample seeds: a sample does not depend on its batch
    alone = sample_batch(net, cfg, [1], [1], [6], priors, "cpu", mask=masks[1:2])
    torch.testing.assert_close(alone[0], out[1], rtol=0, atol=1e-4)
    # SDEdit of a source with a given mask: the mask channel is the given one, not the source's
    source = np.random.default_rng(0).uniform(-1, 1, (3, 2, SIZE, SIZE)).astype(np.float32)
    cfg.sample.strength = 0.5
    varied = sample_batch(net, *args, source=source, mask=masks)
    torch.testing.assert_close(varied[:, -1:], masks, rtol=0, atol=0)
    # joint mode (no masks) is unchanged: two branches (class guidance only), the mask generated
    calls.clear()
    joint = sample_batch(recording, *args)
    assert calls == [6] * 4 and not torch.equal(joint[:, -1:], masks)


def test_real_unet_stacked_branches_match_one_call_per_branch():
    cfg = load_config(None, [*TINY, "diffusion.self_conditioning_prob=0.5"])
    net = random_net(cfg)
    label, z, mask = torch.tensor([0, 1]), torch.tensor([0.3, 0.7]), binary_masks(2)
    prior = torch.rand(2, 1, SIZE, SIZE)

    class PerBranch:  # a plain callable: `sample` calls it once per branch with bool flags
        mask_conditioned = True

        def __call__(self, x_t, t, self_cond, drop_cond=False, mask_drop=False):
            return net(x_t, t, label=label, z=z, prior=prior, mask=mask, self_cond=self_cond, drop_cond=drop_cond,
                       mask_drop=mask_drop)

    common = dict(prediction_type="edm", sampler="dpmpp_2m", steps=3, self_conditioning=True, guidance_scale=2.0,
                  mask_guidance=1.5)
    stacked = sample(ConditionedDenoiser(net, label=label, z=z, prior=prior, mask=mask), (2, 2, SIZE, SIZE), SCHEDULE,
                     generator=[torch.Generator().manual_seed(i) for i in range(2)], **common)
    separate = sample(PerBranch(), (2, 2, SIZE, SIZE), SCHEDULE,
                      generator=[torch.Generator().manual_seed(i) for i in range(2)], **common)
    torch.testing.assert_close(stacked, separate, rtol=0, atol=1e-5)


def test_given_masks_are_checked():
    from jsddpm.draw import sample_batch

    cfg = load_config(None, TINY)
    net = random_net(cfg)
    args = (cfg, [0, 1], [0, 1], [1, 2], torch.rand(4, SIZE, SIZE), "cpu")
    bad = [torch.zeros(2, 1, SIZE, SIZE), torch.ones(2, SIZE, SIZE), torch.full((2, 1, SIZE, SIZE), float("nan"))]
    for mask in bad:
        with pytest.raises(UserError, match="given masks"):
            sample_batch(net, *args, mask=mask)
    joint_cfg = load_config(None, [t for t in TINY if "mask_conditioning" not in t])
    with pytest.raises(UserError, match="model.mask_conditioning"):
        sample_batch(random_net(joint_cfg), joint_cfg, *args[1:], mask=binary_masks(2))


# ----------------------------------------------------------------------------------- training
def test_training_with_mask_conditioning_and_the_checkpoint_round_trip(tmp_path):
    from test_training import tiny_cfg

    from jsddpm.checkpoint import Checkpoint
    from jsddpm.draw import sample_batch
    from jsddpm.training.trainer import train

    cfg = tiny_cfg(tmp_path, "model.mask_conditioning=true", "train.mask_drop=0.5", "train.max_steps=4",
                   "train.sample_every_n_epochs=1")
    train(cfg)
    run = tmp_path / "run"
    ckpt = Checkpoint.load(run / "checkpoints" / "last.ckpt")
    assert ckpt.record["config"]["model"]["mask_conditioning"] is True and ckpt.mask_conditioned and ckpt.joint
    net, loaded = ckpt.model(True, "cpu"), ckpt.config
    assert net.mask_conditioning and net.in_channels == 2 * 2 + 1  # self-cond
    header = next((run / "logs").glob("version_*/metrics.csv")).read_text().splitlines()[0]
    assert "val/loss_given_mask" in header and "val/loss" in header
    assert list((run / "samples").glob("epoch_*.png"))  # the grid callback draws jointly
    masks = torch.where(torch.arange(16.0)[None, None, :, None].expand(2, 1, 16, 16) > 8, 1.0, -1.0)
    out = sample_batch(net, loaded, [0, 2], [0, 1], [1, 2], ckpt.priors, "cpu", mask=masks)
    torch.testing.assert_close(out[:, -1:], masks, rtol=0, atol=0)
    assert torch.isfinite(out).all()
