"""Noise schedules: the forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t = 0..T-1.

`NoiseSchedule` holds `alphas_cumprod` (float64, index t = 0..T-1) and does the per-timestep
gathering; the parameterisation maths itself lives in `parameterization.py`.
"""

from __future__ import annotations

import math

import torch

from ..config import SCHEDULES, T_SAMPLINGS
from ..errors import UserError
from . import parameterization as param

MAX_BETA = 0.999  # cap on beta_t: keeps abar_{T-1} > 0 so every timestep has a finite log-SNR


def make_betas(kind: str, timesteps: int) -> torch.Tensor:
    """beta_t for t = 0..T-1 in float64. Linear-family endpoints are DDPM's (1e-4, 0.02) at T = 1000,
    rescaled by 1000 / T so that other T keep the same total noise."""
    if timesteps < 2:
        raise UserError(f"diffusion.timesteps={timesteps}: need at least 2; set diffusion.timesteps")
    T = timesteps
    start, end = 1e-4 * 1000 / T, 0.02 * 1000 / T
    if kind == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float64)
    elif kind == "quadratic":
        betas = torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64) ** 2
    elif kind == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6.0, 6.0, T, dtype=torch.float64)) * (end - start) + start
    elif kind == "cosine":
        # Nichol & Dhariwal (2021): abar(u) = f(u) / f(0), f(u) = cos^2((u + s) / (1 + s) * pi / 2),
        # beta_t = 1 - abar((t + 1) / T) / abar(t / T), clipped at MAX_BETA.
        s = 0.008
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1 - f[1:] / f[:-1]
    else:
        raise UserError(f"diffusion.schedule={kind}: unknown schedule; use one of {', '.join(SCHEDULES)}")
    return betas.clamp(0.0, MAX_BETA)


class NoiseSchedule:
    """`NoiseSchedule("cosine", 1000)`: alphas_cumprod[t] = prod_{s <= t} (1 - beta_s), t = 0..T-1.

    Per-sample coefficients are gathered for a LongTensor `t` of shape (B,) and broadcast over the
    other dimensions of `x`, in `x`'s dtype and device.
    """

    def __init__(self, kind: str = "cosine", timesteps: int = 1000):
        self.kind = kind
        self.timesteps = int(timesteps)
        self.betas = make_betas(kind, self.timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self._tables: dict[tuple, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.kind!r}, {self.timesteps})"

    # ---------------------------------------------------------------- per-timestep coefficients
    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (name, device, dtype)
        if key not in self._tables:
            ab = self.alphas_cumprod
            values = {"a": ab.sqrt(), "s": (1 - ab).sqrt(), "snr": ab / (1 - ab)}[name]
            self._tables[key] = values.to(device=device, dtype=dtype)
        return self._tables[key]

    def coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """sqrt(abar_t) ("a"), sqrt(1 - abar_t) ("s") or abar/(1 - abar) ("snr"), shaped (B, 1, ...)."""
        # index_select: advanced indexing (table[t]) is ~100x slower on CPU for long index vectors
        values = self._table(name, like.device, like.dtype).index_select(0, t.to(like.device))
        return values.view(-1, *([1] * (like.ndim - 1)))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t), float64, shape (B,)."""
        ab = self.alphas_cumprod.index_select(0, t.cpu())
        return ab / (1 - ab)

    def log_sigma(self) -> torch.Tensor:
        """ln sigma_t = ln(s / a) = 0.5 ln((1 - abar_t) / abar_t) for t = 0..T-1, float64, increasing in t."""
        ab = self.alphas_cumprod
        return 0.5 * torch.log((1 - ab) / ab)

    # ------------------------------------------------------------------- forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return self.coef("a", t, x0) * x0 + self.coef("s", t, x0) * noise

    def _a_s(self, t, like):
        return self.coef("a", t, like), self.coef("s", t, like)

    def training_target(self, x0, noise, t, prediction_type: str, sigma_data: float = param.SIGMA_DATA):
        return param.target_from(x0, noise, *self._a_s(t, x0), prediction_type, sigma_data)

    def network_input(self, x_t, t, prediction_type: str, sigma_data: float = param.SIGMA_DATA) -> torch.Tensor:
        """What the network is fed at (x_t, t): x_t, or x_t / r for edm (see parameterization.py)."""
        return param.network_input(x_t, *self._a_s(t, x_t), prediction_type, sigma_data)

    def x0_error_factor(self, t, prediction_type: str, sigma_data: float = param.SIGMA_DATA) -> torch.Tensor:
        """k(t), float64, shape (B,): |d target| = k |d x0| at fixed x_t."""
        ab = self.alphas_cumprod.index_select(0, t.cpu())
        return param.x0_error_factor(ab.sqrt(), (1 - ab).sqrt(), prediction_type, sigma_data)

    # --------------------------------------------------------------------------- conversions
    def x0_and_eps(self, pred, x_t, t, prediction_type: str,
                   sigma_data: float = param.SIGMA_DATA) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by a network output of the given type at (x_t, t)."""
        return param.x0_eps_from(pred, x_t, *self._a_s(t, x_t), prediction_type, sigma_data)

    def to_x0(self, pred, x_t, t, prediction_type: str, sigma_data: float = param.SIGMA_DATA) -> torch.Tensor:
        return self.x0_and_eps(pred, x_t, t, prediction_type, sigma_data)[0]

    def to_eps(self, pred, x_t, t, prediction_type: str, sigma_data: float = param.SIGMA_DATA) -> torch.Tensor:
        return self.x0_and_eps(pred, x_t, t, prediction_type, sigma_data)[1]

    def to_v(self, pred, x_t, t, prediction_type: str, sigma_data: float = param.SIGMA_DATA) -> torch.Tensor:
        x0, eps = self.x0_and_eps(pred, x_t, t, prediction_type, sigma_data)
        return param.target_from(x0, eps, *self._a_s(t, x_t), "v")

    def eps_from_x0(self, x0, x_t, t) -> torch.Tensor:
        """eps consistent with x_t = a x0 + s eps (used after clipping x0)."""
        return (x_t - self.coef("a", t, x_t) * x0) / self.coef("s", t, x_t)


def training_target(x0, noise, t, schedule: NoiseSchedule, prediction_type: str,
                    sigma_data: float = param.SIGMA_DATA) -> torch.Tensor:
    """What the network regresses: eps, x0, v = sqrt(abar) eps - sqrt(1 - abar) x0, or EDM's F."""
    return schedule.training_target(x0, noise, t, prediction_type, sigma_data)


# ------------------------------------------------------------------- training timesteps
P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal over sigma (Karras et al. 2022, Table 1)


def sample_timesteps(schedule: NoiseSchedule, n: int, method: str = "uniform", *, p_mean: float = P_MEAN,
                     p_std: float = P_STD, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """n training timesteps (LongTensor) drawn from torch's RNG (or `generator`), so that a training step
    that re-seeds the RNG draws them again on resume.

    "uniform": t ~ U{0..T-1}. "lognormal": ln sigma ~ N(p_mean, p_std^2), then the timestep whose
    ln sigma_t is nearest (draws beyond either end land on t = 0 or T-1): the discrete law is
    P(t) = Phi((m_t+ - p_mean) / p_std) - Phi((m_t- - p_mean) / p_std), with m_t-/+ the midpoints of
    ln sigma_t and its neighbours (-inf / +inf at the ends).
    """
    T = schedule.timesteps
    if method == "uniform":
        return torch.randint(0, T, (n,), device=device, generator=generator)
    if method == "lognormal":
        gen_device = generator.device if generator is not None else device
        z = torch.randn(n, device=gen_device, generator=generator)
        log_sigma = p_mean + p_std * z.cpu().double()
        grid = schedule.log_sigma()
        midpoints = 0.5 * (grid[1:] + grid[:-1])  # boundaries between neighbouring timesteps
        return torch.searchsorted(midpoints, log_sigma).to(device)
    raise UserError(f"diffusion.t_sampling={method}: unknown; use one of {', '.join(T_SAMPLINGS)}")
