"""The training objective as configured: `diffusion.diffusion_loss` plus the learnable uncertainty
weights it may use, the training timestep draw, the network's input (EDM scales x_t per timestep), the
self-conditioning first pass, and the validation loss."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from ..config import LossConfig
from ..diffusion.losses import (
    UncertaintyWeighting,
    channel_weight_vector,
    diffusion_loss,
    lesion_weight_map,
    lp_loss,
)
from ..diffusion.schedule import NoiseSchedule, sample_timesteps
from ..diffusion.self_conditioning import self_condition_input


class Objective(nn.Module):
    """Holds the only trained parameters outside the network: the uncertainty log variances."""

    def __init__(self, cfg: Any, schedule: NoiseSchedule):
        super().__init__()
        self.schedule = schedule
        self.prediction_type = str(cfg.diffusion.prediction_type)
        self.sigma_data = float(cfg.diffusion.sigma_data)
        self.t_sampling = str(cfg.diffusion.t_sampling)
        self.p_mean, self.p_std = float(cfg.diffusion.p_mean), float(cfg.diffusion.p_std)
        # the loss settings as the plain dataclass `diffusion_loss` reads (the maths takes values, not the config)
        self.loss_cfg = LossConfig(**OmegaConf.to_container(cfg.loss, resolve=True))
        self.joint_mask = bool(cfg.model.joint_mask)
        self.self_conditioning_prob = float(cfg.diffusion.self_conditioning_prob)
        self.clip_x0 = bool(cfg.diffusion.clip_x0)
        self.uncertainty = (UncertaintyWeighting(list(cfg.loss.uncertainty_init))
                            if cfg.loss.uncertainty_weighting else None)

    def timesteps(self, batch: int, device) -> torch.Tensor:
        """Training timesteps from torch's global RNG (re-seeded every step: exact resume)."""
        return sample_timesteps(self.schedule, batch, self.t_sampling, p_mean=self.p_mean, p_std=self.p_std,
                                device=device)

    def network_input(self, x_t, t) -> torch.Tensor:
        """What the network sees at (x_t, t): x_t, or EDM's c_in x_t / sqrt(abar)."""
        return self.schedule.network_input(x_t, t, self.prediction_type, self.sigma_data)

    def forward(self, pred, x0, noise, x_t, t) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, detached parts for logging)."""
        total, parts = diffusion_loss(pred, x0, noise, x_t, t, self.schedule, self.prediction_type,
                                      self.loss_cfg, joint_mask=self.joint_mask, uncertainty=self.uncertainty,
                                      sigma_data=self.sigma_data)
        logs = {k: v.detach() for k, v in parts.items() if k != "loss"}
        if self.uncertainty is not None:
            logs.update({f"log_var_{i}": v for i, v in enumerate(self.uncertainty.log_vars.detach())})
        return total, logs

    def validation_loss(self, pred, x0, noise, t) -> torch.Tensor:
        """The weighted Lp loss alone, without timestep weighting: a stable early-stopping signal."""
        target = self.schedule.training_target(x0, noise, t, self.prediction_type, self.sigma_data)
        channel_w = channel_weight_vector(self.loss_cfg.channel_weights, x0.shape[1], self.joint_mask)
        pixel_w = lesion_weight_map(x0[:, -1:], self.loss_cfg.lesion_weight) if self.joint_mask else None
        return lp_loss(pred, target, self.loss_cfg.p, channel_w, pixel_w).mean()

    def self_condition(self, net, x_t, t, cond: dict) -> torch.Tensor | None:
        """None without self-conditioning; else zeros or (with probability p) a gradient-free x0 estimate.
        `x_t` is the noisy sample itself (not the network input)."""
        if self.self_conditioning_prob <= 0:
            return None
        return self_condition_input(net, x_t, t, self.schedule, self.prediction_type,
                                    self.self_conditioning_prob, clip_x0=self.clip_x0, sigma_data=self.sigma_data,
                                    **cond)
