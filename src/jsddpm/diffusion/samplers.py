"""Samplers for any callable denoiser: ancestral DDPM, DDIM (eta) and DPM-Solver++(2M).

Each sampler is a small class over a respaced step list with the same contract:

    sampler.timesteps            LongTensor of the N visited timesteps, descending, from T-1 to 0
    sampler.needs_noise(i)       whether step i injects fresh Gaussian noise
    sampler.step(i, x_t, x0, eps, noise) -> x at the next (smaller) timestep, or the sample after the last

`x0` is the (clipped) data prediction at timesteps[i] and `eps` the noise consistent with it, so a
sampler never sees the network's parameterisation. Step i goes from abar[timesteps[i]] to
abar[timesteps[i + 1]], and the last step to abar = 1 (clean data). `sample()` drives them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..config import SAMPLERS as SAMPLER_NAMES
from ..errors import UserError
from .parameterization import SIGMA_DATA, check_prediction_type
from .schedule import NoiseSchedule

SPACINGS = ("quadratic", "linear")


def spaced_timesteps(num_train_timesteps: int, steps: int, spacing: str = "quadratic") -> torch.Tensor:
    """N distinct timesteps from T-1 (the pure-noise end of training) down to 0, descending.

    "linear": evenly spaced in t. "quadratic": t_i = (T-1) u_i^2 with u evenly spaced, i.e. denser at
    low noise, where the sample's fine structure is decided; measured on 1-D Gaussian data with the exact
    denoiser (cosine, T=1000) it cuts the std error of DPM-Solver++(2M) at 50 steps from +7% to +0.2%
    and of DDIM at 250 steps from -1.4% to -0.7%. Duplicates left by rounding near t = 0 are lifted
    (t_i = max(t_i, t_{i+1} + 1)), which never passes T-1 while N <= T.
    """
    T = num_train_timesteps
    if not 1 <= steps <= T:
        raise UserError(f"sample.steps={steps}: must be between 1 and diffusion.timesteps={T}; set sample.steps")
    if spacing not in SPACINGS:
        raise UserError(f"spacing={spacing}: unknown timestep spacing; use one of {', '.join(SPACINGS)}")
    u = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    if spacing == "quadratic":
        u = u**2
    t = torch.floor(u * (T - 1) + 0.5).long().tolist()
    for i in range(steps - 2, -1, -1):
        t[i] = max(t[i], t[i + 1] + 1)
    return torch.tensor(t, dtype=torch.long)


class _Sampler:
    def __init__(self, schedule: NoiseSchedule, steps: int, eta: float = 0.0, spacing: str = "quadratic"):
        self.timesteps = spaced_timesteps(schedule.timesteps, steps, spacing)
        abar = schedule.alphas_cumprod[self.timesteps]
        # abar at the current and at the next visited timestep; 1.0 after the last one (clean data)
        self.abar = abar.tolist()
        self.abar_next = abar[1:].tolist() + [1.0]
        self.eta = float(eta)

    def needs_noise(self, i: int) -> bool:
        return False

    def step(self, i: int, x_t, x0, eps, noise=None) -> torch.Tensor:
        raise NotImplementedError


class DDPMSampler(_Sampler):
    """Ancestral sampling from the posterior q(x_prev | x_t, x0) of the RESPACED chain: its betas are
    recomputed from the kept steps, beta_i = 1 - abar_t / abar_prev, so any step count is exact."""

    def _coefficients(self, i: int) -> tuple[float, float, float]:
        ab, ab_prev = self.abar[i], self.abar_next[i]
        beta = 1.0 - ab / ab_prev
        coef_x0 = math.sqrt(ab_prev) * beta / (1.0 - ab)
        coef_xt = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab)
        variance = beta * (1.0 - ab_prev) / (1.0 - ab)
        return coef_x0, coef_xt, variance

    def needs_noise(self, i: int) -> bool:
        return self._coefficients(i)[2] > 0

    def step(self, i, x_t, x0, eps, noise=None):
        coef_x0, coef_xt, variance = self._coefficients(i)
        mean = coef_x0 * x0 + coef_xt * x_t
        return mean if variance <= 0 else mean + math.sqrt(variance) * noise


class DDIMSampler(_Sampler):
    """DDIM (Song et al. 2021): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)); abar_prev from the step list.
    eta = 1 reproduces the ancestral DDPM step."""

    def _sigma(self, i: int) -> float:
        ab, ab_prev = self.abar[i], self.abar_next[i]
        return self.eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))

    def needs_noise(self, i: int) -> bool:
        return self._sigma(i) > 0

    def step(self, i, x_t, x0, eps, noise=None):
        ab_prev, sigma = self.abar_next[i], self._sigma(i)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        return x if sigma <= 0 else x + sigma * noise


class DPMSolverPP2MSampler(_Sampler):
    """DPM-Solver++(2M), data-prediction form (Lu et al. 2022), in lambda = log(a / s):

        x_next = (s_next / s) x_t - a_next (exp(-h) - 1) D,   h = lambda_next - lambda,
        D = x0 at the first step, else (1 + 1/(2r)) x0 - 1/(2r) x0_prev with r = h_prev / h.

    The last step goes to abar = 1 (lambda = inf), where the update reduces to x_next = x0 (first order).
    Stateful: create one per sampling run.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int, eta: float = 0.0, spacing: str = "quadratic"):
        super().__init__(schedule, steps, eta, spacing)
        self.lam = [0.5 * math.log(ab / (1.0 - ab)) for ab in self.abar]
        self._x0_prev: torch.Tensor | None = None
        self._h_prev: float | None = None

    def step(self, i, x_t, x0, eps, noise=None):
        if i == len(self.abar) - 1:
            return x0
        lam_next = self.lam[i + 1]
        h = lam_next - self.lam[i]
        if self._x0_prev is None:
            d = x0
        else:
            half_inv_r = 0.5 * h / self._h_prev
            d = (1.0 + half_inv_r) * x0 - half_inv_r * self._x0_prev
        ab, ab_next = self.abar[i], self.abar_next[i]
        x = math.sqrt((1.0 - ab_next) / (1.0 - ab)) * x_t - math.sqrt(ab_next) * math.expm1(-h) * d
        self._x0_prev, self._h_prev = x0, h
        return x


# name (sample.sampler, listed in config.SAMPLERS in this order) -> implementation
SAMPLERS: dict[str, type[_Sampler]] = dict(zip(SAMPLER_NAMES, (DDPMSampler, DDIMSampler, DPMSolverPP2MSampler),
                                               strict=True))


# ------------------------------------------------------------------------------------ noise
GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def randn(shape, generator: GeneratorArg, device=None, dtype=None) -> torch.Tensor:
    """Standard normal noise. With a list of generators, row i comes from generator i alone (drawn on
    that generator's device, then moved), so a sample's noise does not depend on its batch."""
    dtype = dtype or torch.float32
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(rows).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


# ---------------------------------------------------------------------------- conditioning
class ConditionedDenoiser:
    """Binds a network's per-sample conditions (label, z, prior ...) into the `denoiser(x_t, t, ...)`
    contract and lets `sample()` evaluate both CFG branches in ONE forward pass.

    With `batched_cfg = True`, `sample()` calls it with a doubled batch [x; x], timesteps [t; t] and
    `drop_cond` a bool tensor (2B,) that is True on the second half; the conditions are repeated to
    match. `drop_cond=True` (a plain bool) drops the condition of every sample.
    """

    batched_cfg = True

    def __init__(self, net: Callable, **conditions):
        self.net = net
        self.conditions = {k: v for k, v in conditions.items() if v is not None}

    def __call__(self, x_t, t, self_cond=None, drop_cond=None):
        batch = x_t.shape[0]
        kwargs = {}
        for name, value in self.conditions.items():
            repeats = batch // value.shape[0]
            kwargs[name] = value.repeat(repeats, *([1] * (value.ndim - 1))) if repeats > 1 else value
        if isinstance(drop_cond, bool):
            drop_cond = torch.full((batch,), drop_cond, dtype=torch.bool, device=x_t.device)
        if self_cond is not None:
            kwargs["self_cond"] = self_cond
        if drop_cond is not None:
            kwargs["drop_cond"] = drop_cond
        return self.net(x_t, t, **kwargs)


def _guided_prediction(denoiser, x_t, t, self_cond, guidance_scale: float) -> torch.Tensor:
    """The network output, with classifier-free guidance pred = uncond + s (cond - uncond)."""
    extra = {} if self_cond is None else {"self_cond": self_cond}
    if guidance_scale == 1.0:
        return denoiser(x_t, t, **extra)
    if getattr(denoiser, "batched_cfg", False):
        batch = x_t.shape[0]
        drop = torch.zeros(2 * batch, dtype=torch.bool, device=x_t.device)
        drop[batch:] = True
        doubled = {k: torch.cat([v, v]) for k, v in extra.items()}
        cond, uncond = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), drop_cond=drop, **doubled).chunk(2)
    else:
        cond = denoiser(x_t, t, **extra)
        uncond = denoiser(x_t, t, drop_cond=True, **extra)
    return uncond + guidance_scale * (cond - uncond)


def make_stepper(schedule: NoiseSchedule, prediction_type: str, sampler: str, steps: int, eta: float,
                 spacing: str) -> _Sampler:
    """The configured sampler, after the checks every sampling loop shares (one line each)."""
    check_prediction_type(prediction_type)
    if sampler not in SAMPLERS:
        raise UserError(f"sample.sampler={sampler}: unknown; use one of {', '.join(SAMPLERS)}")
    if eta < 0:
        raise UserError(f"sample.eta={eta}: must be >= 0; set sample.eta")
    return SAMPLERS[sampler](schedule, steps, eta, spacing)


def denoise(denoiser, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, x0_prev, *, prediction_type: str,
            guidance_scale: float, clip_x0: bool, sigma_data: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) at x_t = x from one (guided) network call; with clip_x0, x0 clipped to [-1, 1] and eps
    made consistent with it."""
    x_in = schedule.network_input(x, t, prediction_type, sigma_data)
    # guidance on the raw output equals guidance on x0: x0 is affine in it with the same x_t term
    pred = _guided_prediction(denoiser, x_in, t, x0_prev, guidance_scale).to(dtype)
    x0, eps = schedule.x0_and_eps(pred, x, t, prediction_type, sigma_data)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = schedule.eps_from_x0(x0, x, t)
    return x0, eps


# ----------------------------------------------------------------------------------- driver
@torch.no_grad()
def sample(
    denoiser: Callable,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    prediction_type: str,
    sampler: str = "ddpm",
    steps: int,
    eta: float = 0.0,
    generator: GeneratorArg = None,
    clip_x0: bool = True,
    self_conditioning: bool = False,
    guidance_scale: float = 1.0,
    x_T: torch.Tensor | None = None,
    device=None,
    dtype=None,
    progress: Callable[[int, int], None] | None = None,
    spacing: str = "quadratic",
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """Draw x0 of `shape` by running `sampler` for `steps` respaced steps.

    denoiser(x_in, t[, self_cond=x0_prev][, drop_cond=True]) returns the `prediction_type` output for a
    LongTensor t of shape (B,); x_in is x_t, or for edm x_t / sqrt(1 - abar + abar sigma_data^2) (EDM's
    c_in x_t / sqrt(abar), see parameterization.py), so a network trained by jsddpm needs no wrapper.
    With guidance_scale != 1 the prediction is uncond + s (cond - uncond):
    a plain callable is called twice (the second time with drop_cond=True); one with `batched_cfg = True`
    (e.g. `ConditionedDenoiser(net, label=..., z=..., prior=...)`) once, on the doubled batch.
    `generator`: one torch.Generator, or a list with one per sample (then sample i depends on generator i
    only). `progress(i, n)` is called after each step. `spacing`: see `spaced_timesteps`. `eta` is DDIM's
    (the config refuses it with the other samplers: ddpm is always ancestral, dpmpp_2m deterministic).
    Returns the final x0 estimate (clipped to [-1, 1] with clip_x0).
    """
    stepper = make_stepper(schedule, prediction_type, sampler, steps, eta, spacing)
    dtype = dtype or (x_T.dtype if x_T is not None else torch.float32)
    device = device or (x_T.device if x_T is not None else None)
    x = randn(shape, generator, device, dtype) if x_T is None else x_T.to(device=device, dtype=dtype)
    x0_prev = torch.zeros_like(x) if self_conditioning else None
    n = len(stepper.timesteps)
    for i, t_value in enumerate(stepper.timesteps.tolist()):
        t = torch.full((x.shape[0],), t_value, dtype=torch.long, device=x.device)
        x0, eps = denoise(denoiser, schedule, x, t, x0_prev, prediction_type=prediction_type,
                          guidance_scale=guidance_scale, clip_x0=clip_x0, sigma_data=sigma_data, dtype=dtype)
        noise = randn(x.shape, generator, x.device, dtype) if stepper.needs_noise(i) else None
        x = stepper.step(i, x, x0, eps, noise)
        if self_conditioning:
            x0_prev = x0
        if progress is not None:
            progress(i + 1, n)
    return x
