"""Exact denoisers of Gaussian data: the known answers samplers are tested and benchmarked against.

For x0 ~ N(mu, C) in d dimensions and x_t = a x0 + s eps,

    E[x0 | x_t] = mu + a C (a^2 C + s^2 I)^-1 (x_t - a mu).

With some coordinates G of x0 given exactly (= g), the rest R is Gaussian given them, with mean
mu_R + C_RG C_GG^-1 (g - mu_G) and covariance C_RR - C_RG C_GG^-1 C_GR; the same formula applies to it
(x_t's G part then carries no information: its noise is independent of x0_R) and the estimate of the G
part is g itself. This is the optimal denoiser of a network conditioned on part of x0 (e.g. the mask).
"""

from __future__ import annotations

import torch

from .parameterization import SIGMA_DATA, network_input, target_from
from .schedule import NoiseSchedule


class GaussianDenoiser:
    """`denoiser(x_in, t, given=None, values=None)` -> the `prediction_type` output of the optimal network
    for x0 ~ N(mean, cov), shape (B, d), fed what jsddpm feeds a network (x_t, or x_t / r for edm).

    `given` (bool (B, d) or (d,)) marks coordinates of x0 known exactly, `values` (B, d) holds them.
    """

    def __init__(self, mean, cov, schedule: NoiseSchedule, prediction_type: str = "sample",
                 sigma_data: float = SIGMA_DATA):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.sigma_data = sigma_data

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor, given=None, values=None) -> torch.Tensor:
        """E[x0 | x_t, x0[given] = values[given]] in float64, shape (B, d)."""
        x_t = x_t.double()
        given = torch.zeros(x_t.shape[1], dtype=torch.bool) if given is None else \
            torch.as_tensor(given, dtype=torch.bool)
        # one pattern of given coordinates for the whole batch, or one per row
        patterns = torch.unique(given, dim=0) if given.ndim == 2 else given[None]
        abar = self.schedule.alphas_cumprod
        out = torch.empty_like(x_t)
        for pattern in patterns:
            g, r = pattern.nonzero().flatten(), (~pattern).nonzero().flatten()
            pattern_rows = (given == pattern).all(dim=1) if given.ndim == 2 else torch.ones(len(x_t), dtype=torch.bool)
            mean = self.mean[r].expand(int(pattern_rows.sum()), -1)
            cov = self.cov[r][:, r]
            if len(g):  # the rest's distribution given the known coordinates
                known = values[pattern_rows][:, g].double()
                gain = self.cov[r][:, g] @ torch.linalg.inv(self.cov[g][:, g])
                mean = mean + (known - self.mean[g]) @ gain.T
                cov = cov - gain @ self.cov[g][:, r]
                out[pattern_rows.nonzero()[:, :1], g] = known
            if not len(r):
                continue
            for t_value in torch.unique(t[pattern_rows]).tolist():  # samplers call with one t per batch
                rows = pattern_rows & (t == t_value)
                a, s = abar[t_value].sqrt(), (1 - abar[t_value]).sqrt()
                gain_t = a * cov @ torch.linalg.inv(a * a * cov + s * s * torch.eye(len(r), dtype=torch.float64))
                m = mean[rows[pattern_rows]]
                out[rows.nonzero()[:, :1], r] = m + (x_t[rows][:, r] - a * m) @ gain_t.T
        return out

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, given=None, values=None) -> torch.Tensor:
        a, s = self.schedule.coef("a", t, x_in.double()), self.schedule.coef("s", t, x_in.double())
        x_t = x_in.double() / network_input(torch.ones_like(x_in, dtype=torch.float64), a, s,
                                            self.prediction_type, self.sigma_data)
        x0 = self.posterior_mean(x_t, t, given, values)
        out = target_from(x0, (x_t - a * x0) / s, a, s, self.prediction_type, self.sigma_data)
        return out.to(x_in.dtype)
