"""The four things a diffusion network can predict, and the exact conversions among them.

With a = sqrt(abar_t), s = sqrt(1 - abar_t) and a^2 + s^2 = 1:

    x_t = a x0 + s eps          v = a eps - s x0
    x0  = a x_t - s v           eps = s x_t + a v

EDM (Karras et al. 2022) in the variance-exploding view x = x_t / a = x0 + sigma eps, sigma = s / a:

    D(x) = c_skip x + c_out F(c_in x, t),   c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = sigma sd / sqrt(sigma^2 + sd^2),  c_in = 1 / sqrt(sigma^2 + sd^2),   sd = sigma_data.

Written with r = sqrt(s^2 + a^2 sd^2) (= a sqrt(sigma^2 + sd^2)), which stays finite at both ends:

    network input  c_in x = x_t / r
    x0  = (sd^2 a / r^2) x_t + (s sd / r) F         eps = (s / r^2) x_t - (a sd / r) F
    F   = (x0 - c_skip x) / c_out = (s x0 - sd^2 a eps) / (r sd)

F has unit variance at every t when x0 has variance sd^2, so the EDM loss is plain Lp on F. With
sd = 1, r = 1: the input is x_t and F = s x0 - a eps = -v, i.e. v prediction up to sign. The network's
noise conditioning stays the discrete t.

At fixed x_t a change of the x0 prediction moves the target by a per-timestep factor k (`x0_error_factor`):
k = sqrt(snr) for eps, 1 for x0, sqrt(snr + 1) = 1/s for v, 1/c_out = r / (s sd) for edm.

`a` and `s` are broadcastable tensors (see `NoiseSchedule.coef`).
"""

from __future__ import annotations

import torch

from ..config import PREDICTION_TYPES
from ..errors import UserError

SIGMA_DATA = 0.5  # EDM's default data scale (config: diffusion.sigma_data)


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"diffusion.prediction_type={prediction_type}: unknown; use one of {', '.join(PREDICTION_TYPES)}"
        )


def _edm_r(a, s, sigma_data: float):
    """r = sqrt(s^2 + a^2 sd^2) = a sqrt(sigma^2 + sd^2)."""
    return (s * s + (a * sigma_data) ** 2) ** 0.5


def network_input(x_t: torch.Tensor, a, s, prediction_type: str, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """What the network sees: x_t, or for edm c_in x_t / a = x_t / r (unit variance at every t)."""
    if prediction_type == "edm":
        return x_t / _edm_r(a, s, sigma_data)
    check_prediction_type(prediction_type)
    return x_t


def target_from(x0: torch.Tensor, eps: torch.Tensor, a, s, prediction_type: str,
                sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """The regression target of each prediction type, given the clean sample and the noise."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v":
        return a * eps - s * x0
    if prediction_type == "edm":
        return (s * x0 - sigma_data**2 * a * eps) / (_edm_r(a, s, sigma_data) * sigma_data)
    check_prediction_type(prediction_type)
    raise AssertionError  # unreachable


def x0_eps_from(pred: torch.Tensor, x_t: torch.Tensor, a, s, prediction_type: str,
                sigma_data: float = SIGMA_DATA):
    """(x0, eps) implied by a prediction of the given type at x_t (x_t itself, not the network input)."""
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a, pred
    if prediction_type == "sample":
        return pred, (x_t - a * pred) / s
    if prediction_type == "v":
        return a * x_t - s * pred, s * x_t + a * pred
    if prediction_type == "edm":
        r = _edm_r(a, s, sigma_data)
        x0 = (sigma_data**2 * a / r**2) * x_t + (s * sigma_data / r) * pred
        eps = (s / r**2) * x_t - (a * sigma_data / r) * pred
        return x0, eps
    check_prediction_type(prediction_type)
    raise AssertionError  # unreachable


def x0_error_factor(a, s, prediction_type: str, sigma_data: float = SIGMA_DATA):
    """k with |d target| = k |d x0| at fixed x_t: how an error in x0 shows in the network's target."""
    if prediction_type == "epsilon":
        return a / s
    if prediction_type == "sample":
        return torch.ones_like(a) if torch.is_tensor(a) else 1.0
    if prediction_type == "v":
        return 1.0 / s
    if prediction_type == "edm":
        return _edm_r(a, s, sigma_data) / (s * sigma_data)
    check_prediction_type(prediction_type)
    raise AssertionError  # unreachable
