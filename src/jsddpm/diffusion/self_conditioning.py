"""Self-conditioning in training (Chen et al., "Analog Bits", 2022).

With probability `prob` a batch first runs the network without gradient, with zeros as the
self-condition; the x0 it implies (clipped like at sampling) becomes the self-condition of the
training pass. Otherwise the training pass sees zeros, as the first sampling step does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .parameterization import SIGMA_DATA
from .schedule import NoiseSchedule


def self_condition_input(
    net: Callable,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str,
    prob: float,
    *,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    sigma_data: float = SIGMA_DATA,
    **conditions,
) -> torch.Tensor:
    """The `self_cond` tensor for the training pass: zeros, or with probability `prob` the detached x0
    estimate of a first, gradient-free pass `net(x_in, t, self_cond=zeros, **conditions)`, x_in being
    what the network is fed at x_t (`NoiseSchedule.network_input`: x_t itself except for edm).

    One coin per batch (cheap: the extra forward runs only with probability `prob`); drawn from
    `generator` or torch's global RNG, so it is reproduced by a resumed run that restores RNG states.
    """
    zeros = torch.zeros_like(x_t)
    coin_device = generator.device if generator is not None else "cpu"
    if prob <= 0 or torch.rand((), generator=generator, device=coin_device).item() >= prob:
        return zeros
    with torch.no_grad():
        pred = net(schedule.network_input(x_t, t, prediction_type, sigma_data), t, self_cond=zeros, **conditions)
        x0 = schedule.to_x0(pred.to(x_t.dtype), x_t, t, prediction_type, sigma_data)
        return x0.clamp(-1.0, 1.0) if clip_x0 else x0
