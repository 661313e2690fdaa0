"""The three things a diffusion network can predict, and the exact conversions among them.

With a = sqrt(abar_t), s = sqrt(1 - abar_t) and a^2 + s^2 = 1:

    x_t = a x0 + s eps          v = a eps - s x0
    x0  = a x_t - s v           eps = s x_t + a v

`a` and `s` are broadcastable tensors (see `NoiseSchedule.coef`).
"""

from __future__ import annotations

import torch

from ..errors import UserError

PREDICTION_TYPES = ("epsilon", "sample", "v")


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(
            f"diffusion.prediction_type={prediction_type}: unknown; use one of {', '.join(PREDICTION_TYPES)}"
        )


def target_from(x0: torch.Tensor, eps: torch.Tensor, a, s, prediction_type: str) -> torch.Tensor:
    """The regression target of each prediction type, given the clean sample and the noise."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v":
        return a * eps - s * x0
    check_prediction_type(prediction_type)
    raise AssertionError  # unreachable


def x0_eps_from(pred: torch.Tensor, x_t: torch.Tensor, a, s, prediction_type: str):
    """(x0, eps) implied by a prediction of the given type at x_t."""
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a, pred
    if prediction_type == "sample":
        return pred, (x_t - a * pred) / s
    if prediction_type == "v":
        return a * x_t - s * pred, s * x_t + a * pred
    check_prediction_type(prediction_type)
    raise AssertionError  # unreachable
