"""Sampling with part of x0 known: inpainting (RePaint) and SDEdit, over the samplers of samplers.py.

Inpainting (Lugmayr et al. 2022). A bool `keep` marks the known elements of a `source` x0. Before every
network call at timestep t the known part of x_t is replaced by the forward-noised source,

    x_t[keep] = sqrt(abar_t) source + sqrt(1 - abar_t) z,      z ~ N(0, I) fresh at each call,

so the network sees a sample of q(x_t | source) there and generates the rest to match it. After the last
step (abar = 1) the known part is the source itself, exactly. With `resample` = r, each step is taken
r + 1 times: after each try but the last, x is pushed back from the next noise level to the current one
with the forward kernel q(x_t | x_next) = N(sqrt(abar_t / abar_next) x_next, (1 - abar_t / abar_next) I)
and the step is redone, which lets the generated part harmonise with the known part across the seam.
Cost: (1 + r) network calls per step.

SDEdit (Meng et al. 2022). `strength` S in (0, 1] is the noise level the source is taken to: the run
starts at timestep t0 = round(S (T - 1)) of the T training timesteps (noise std sqrt(1 - abar_t0) in x_t,
sigma = sqrt((1 - abar_t0) / abar_t0) in EDM's terms: every prediction type shares the discrete schedule)
from the source noised to that level, then visits the respaced list's timesteps below t0. S = 1 starts
from pure noise and is exactly `samplers.sample` (same draws from the same generators); S small keeps the
source's structure. Every S > 0 runs at least the step at t0 (t0 = 0 for S < 0.5 / (T - 1)), so the
result is always the network's, never a copy of the source; S = 0 is refused.

`sample_known` follows `samplers.sample`'s contract (denoiser, generators, guidance, self-conditioning,
clipping, parameterisation); with neither `keep` nor strength < 1 it returns the same tensor.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from ..errors import UserError
from .parameterization import SIGMA_DATA
from .samplers import SAMPLERS, GeneratorArg, denoise, make_stepper, randn
from .schedule import NoiseSchedule


def noised(x0: torch.Tensor, abar: float, noise: torch.Tensor) -> torch.Tensor:
    """A draw of q(x_t | x0) = N(sqrt(abar) x0, (1 - abar) I) at cumulative alpha `abar`."""
    return math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * noise


def renoised(x_next: torch.Tensor, abar: float, abar_next: float, noise: torch.Tensor) -> torch.Tensor:
    """A draw of q(x_t | x_next), from the less noisy level abar_next back up to abar (<= abar_next)."""
    ratio = abar / abar_next
    return math.sqrt(ratio) * x_next + math.sqrt(max(1.0 - ratio, 0.0)) * noise


def replace_known(x: torch.Tensor, source: torch.Tensor, keep: torch.Tensor | None, abar: float,
                  generator: GeneratorArg) -> torch.Tensor:
    """x with its `keep` part replaced by a fresh draw of the source noised to `abar` (abar = 1: the source)."""
    if keep is None:
        return x
    known = source if abar >= 1.0 else noised(source, abar, randn(x.shape, generator, x.device, x.dtype))
    return torch.where(keep, known, x)


def strength_timestep(num_train_timesteps: int, strength: float) -> int:
    """SDEdit's first timestep t0 = round(S (T - 1)) at `strength` S in (0, 1]."""
    if not 0.0 < strength <= 1.0:
        raise UserError(f"sample.strength={strength}: must be in (0, 1] (the noise level SDEdit starts from; "
                        "1 = plain generation); set sample.strength")
    return int(math.floor(strength * (num_train_timesteps - 1) + 0.5))


@torch.no_grad()
def sample_known(
    denoiser: Callable,
    source: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    keep: torch.Tensor | None = None,
    strength: float = 1.0,
    resample: int = 0,
    prediction_type: str,
    sampler: str = "ddpm",
    steps: int,
    eta: float = 0.0,
    generator: GeneratorArg = None,
    clip_x0: bool = True,
    self_conditioning: bool = False,
    guidance_scale: float = 1.0,
    mask_guidance: float = 1.0,
    device=None,
    dtype=None,
    spacing: str = "quadratic",
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """x0 of `source`'s shape, with `keep` (bool, broadcastable to it) equal to the source and the rest
    generated (RePaint, `resample` re-noising jumps per step); `strength` < 1 starts from the source
    noised to timestep round(strength (T - 1)) instead of pure noise (SDEdit). The other arguments are
    `samplers.sample`'s."""
    if resample < 0:
        raise UserError(f"inpaint.resample={resample}: must be >= 0; set inpaint.resample")
    start = strength_timestep(schedule.timesteps, strength)
    stepper = make_stepper(schedule, prediction_type, sampler, steps, eta, spacing, start)
    dtype = dtype or torch.float32
    device = device or source.device
    source = source.to(device=device, dtype=dtype)
    if keep is not None:
        keep = keep.to(device=device, dtype=torch.bool).expand_as(source)
    x = randn(source.shape, generator, device, dtype)
    if strength < 1.0:
        x = noised(source, stepper.abar[0], x)
    x0_prev = torch.zeros_like(x) if self_conditioning else None
    for i in range(len(stepper.timesteps)):
        t = torch.full((x.shape[0],), int(stepper.timesteps[i]), dtype=torch.long, device=device)
        for attempt in range(resample + 1):
            x = replace_known(x, source, keep, stepper.abar[i], generator)
            x0, eps = denoise(denoiser, schedule, x, t, x0_prev, prediction_type=prediction_type,
                              guidance_scale=guidance_scale, clip_x0=clip_x0, sigma_data=sigma_data, dtype=dtype,
                              mask_guidance=mask_guidance)
            noise = randn(x.shape, generator, device, dtype) if stepper.needs_noise(i) else None
            # a multistep solver extrapolates from its previous x0; a re-noised x has a fresh trajectory
            # (no history: a first-order step), and every try of step i starts from the state before it
            trial = SAMPLERS[sampler](schedule, steps, eta, spacing, start) if attempt else copy.copy(stepper)
            x_next = trial.step(i, x, x0, eps, noise)
            if self_conditioning:
                x0_prev = x0
            if attempt < resample:
                x = renoised(x_next, stepper.abar[i], stepper.abar_next[i], randn(x.shape, generator, device, dtype))
        stepper, x = trial, x_next
    return replace_known(x, source, keep, 1.0, generator)
