"""Training losses: Lp regression, focal frequency loss, Kendall uncertainty weighting, min-SNR weights.

Per-sample losses have shape (B,) so that timestep weights can multiply them before the batch mean.
`diffusion_loss` puts the pieces together as configured by `LossConfig`.

Timestep weighting across prediction types. At fixed x_t an x0 error e shows in the network's target
as k(t) e (`parameterization.x0_error_factor`), so |d target|^p = k^p |e|^p: a target-space Lp loss is
an x0-space Lp loss with the timestep weight W(t) = k(t)^p. min-SNR replaces W by min(snr, gamma) for
every type, i.e. the target-space weight min(snr, gamma) / k^p. The focal frequency loss, computed on
the implied x0, gets the same W(t), so each arm's whole loss is W(t) times the x0 arm's loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError
from .parameterization import SIGMA_DATA
from .schedule import NoiseSchedule


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def lp_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    p: float = 2.0,
    channel_weights: Sequence[float] | torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean over (C, H, W) of w_c * w_pixel * |pred - target|^p, per sample (B,). Any p > 0.

    `channel_weights` has one entry per channel; `pixel_weights` broadcasts to (B, 1, H, W) (e.g. the
    lesion map from `lesion_weight_map`). For p < 1 the slope of |r|^p is infinite at r = 0 (autograd
    would give 0 * inf = NaN there, and exact zeros are common: masks and background sit at +-1); the
    gradient at exactly r = 0 is taken as 0, its value at r != 0 is unchanged.
    """
    if p <= 0:
        raise UserError(f"loss.p={p}: must be > 0; set loss.p")
    diff = (pred - target).abs()
    if p < 1:
        nonzero = diff > 0
        err = torch.where(nonzero, torch.where(nonzero, diff, torch.ones_like(diff)).pow(p), torch.zeros_like(diff))
    else:
        err = diff.pow(p)
    if channel_weights is not None:
        w = torch.as_tensor(channel_weights, dtype=err.dtype, device=err.device)
        if w.numel() != err.shape[1]:
            raise UserError(
                f"loss.channel_weights has {w.numel()} entries for {err.shape[1]} channels; give one per channel"
            )
        err = err * w.view(1, -1, *([1] * (err.ndim - 2)))
    if pixel_weights is not None:
        err = err * pixel_weights
    return _per_sample_mean(err)


def lesion_weight_map(mask: torch.Tensor, lesion_weight: float) -> torch.Tensor:
    """1 on background, `lesion_weight` on lesion pixels; `mask` in model space {-1, +1} (lesion > 0)."""
    return 1.0 + (lesion_weight - 1.0) * (mask > 0).to(mask.dtype)


def channel_weight_vector(channel_weights: Sequence[float], channels: int, joint_mask: bool) -> list[float]:
    """One weight per channel from the config: one per channel as given; or [image, mask], every image
    channel (1 or 3) getting the image weight and the last channel the mask weight when the data are joint
    (image-only data use the image weight); or a single weight for all channels."""
    weights = [float(w) for w in channel_weights]
    if len(weights) == channels:
        return weights
    if len(weights) == 2:
        w_image, w_mask = weights
        return [w_image] * (channels - 1) + [w_mask] if joint_mask else [w_image] * channels
    if len(weights) == 1:
        return weights * channels
    raise UserError(
        f"loss.channel_weights={weights}: give [image, mask] or one weight per channel ({channels})"
    )


# ----------------------------------------------------------------------- focal frequency loss
def _patches(x: torch.Tensor, patch_factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, P, C, H/pf, W/pf): the patch_factor x patch_factor grid of patches."""
    b, c, h, w = x.shape
    if h % patch_factor or w % patch_factor:
        raise UserError(
            f"loss.ffl_patch_factor={patch_factor} does not divide the image size {h}x{w}; choose a divisor"
        )
    ph, pw = h // patch_factor, w // patch_factor
    x = x.reshape(b, c, patch_factor, ph, patch_factor, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, patch_factor * patch_factor, c, ph, pw)


def focal_frequency_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    patch_factor: int = 1,
    log_weight: bool = False,
) -> torch.Tensor:
    """Focal frequency loss (Jiang et al., ICCV 2021), per sample (B,).

    On the orthonormal 2-D DFT of each patch and channel, d = F(pred) - F(target) and
    FFL = mean over frequencies of w * |d|^2, with the spectrum weight w = |d|^alpha (or log(1 + |d|^alpha)
    with `log_weight`) scaled by its maximum over each spectrum to [0, 1]. w is DETACHED: it focuses the
    loss on the hard frequencies but is not itself minimised.
    """
    spec_pred = torch.fft.fft2(_patches(pred.float(), patch_factor), norm="ortho")
    spec_true = torch.fft.fft2(_patches(target.float(), patch_factor), norm="ortho")
    diff = spec_pred - spec_true
    dist2 = diff.real**2 + diff.imag**2
    with torch.no_grad():
        w = dist2.sqrt() ** alpha
        if log_weight:
            w = torch.log1p(w)
        w = w / w.amax(dim=(-2, -1), keepdim=True)
        w = torch.nan_to_num(w, nan=0.0).clamp(0.0, 1.0)  # an all-zero spectrum gives 0/0: weight 0
    return _per_sample_mean(w * dist2)


# ------------------------------------------------------------------ uncertainty weighting
class UncertaintyWeighting(nn.Module):
    """Kendall, Gal & Cipolla (2018) homoscedastic weighting of loss groups (spatial, frequency).

    total = sum_i exp(-s_i) L_i + s_i with learnable s_i = log sigma_i^2: twice Kendall's
    L / (2 sigma^2) + log sigma, so the same minimiser (s_i = log L_i), and weight 1 for s_i = 0.
    No clamp on s: a clamp would zero its gradient. The optimiser must exclude `log_vars` from weight
    decay (decay would pull every group towards weight 1).
    """

    no_weight_decay = ("log_vars",)  # parameter names for the optimiser's no-decay group

    def __init__(self, init: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        self.log_vars = nn.Parameter(torch.as_tensor(list(init), dtype=torch.float32))

    def forward(self, losses: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(losses) != self.log_vars.numel():
            raise ValueError(f"{len(losses)} losses for {self.log_vars.numel()} log variances")
        like = {"dtype": self.log_vars.dtype, "device": self.log_vars.device}
        stacked = torch.stack([torch.as_tensor(loss, **like) for loss in losses])
        return (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()

    @property
    def weights(self) -> torch.Tensor:
        """The current multipliers exp(-s_i), for logging."""
        return torch.exp(-self.log_vars.detach())


# ------------------------------------------------------------------------- min-SNR weights
def x0_space_weights(schedule: NoiseSchedule, t: torch.Tensor, prediction_type: str, p: float,
                     gamma: float | None = None, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """W(t) (B,): the weight the configured spatial loss puts on |x0 error|^p at each timestep, i.e.
    min(snr, gamma) with min-SNR, else the parameterisation's own k(t)^p."""
    if gamma is not None:
        return schedule.snr(t).clamp(max=gamma).to(device=t.device, dtype=torch.float32)
    return schedule.x0_error_factor(t, prediction_type, sigma_data).pow(p).to(device=t.device, dtype=torch.float32)


def min_snr_weights(schedule: NoiseSchedule, t: torch.Tensor, gamma: float, prediction_type: str, *, p: float,
                    sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023) per-sample weights (B,) in the network's target space, for an Lp
    loss of any p.

    The intended weight is min(snr, gamma) on |x0 error|^p; the target error is k(t) times the x0 error at
    fixed x_t (k = sqrt(snr) eps, 1 x0, sqrt(snr + 1) v, 1/c_out edm), so the weight is divided by k^p.
    For p = 2 this is Hang et al.'s min(snr, gamma) / snr for eps and / (snr + 1) for v.
    """
    snr = schedule.snr(t)
    k = schedule.x0_error_factor(t, prediction_type, sigma_data)
    return (snr.clamp(max=gamma) / k.pow(p)).to(device=t.device, dtype=torch.float32)


# ------------------------------------------------------------------------------- assembled
def diffusion_loss(
    pred: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    prediction_type: str,
    loss_cfg,
    *,
    joint_mask: bool,
    uncertainty: UncertaintyWeighting | None = None,
    sigma_data: float = SIGMA_DATA,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The configured training loss (`loss_cfg` is a `LossConfig`) and its parts for logging.

    All in float32. spatial = batch mean of [min-SNR weight *] Lp(pred, target) with channel and lesion-pixel
    weights; frequency = ffl_weight * W(t) * FFL(x0 implied by pred, x0) when ffl_weight > 0, with W the
    spatial term's x0-space timestep weight (`x0_space_weights`: without it the FFL of an eps arm grows
    like 1/snr, ~1e8 at t = T-1 of the cosine schedule); the two groups are summed, or combined by
    `uncertainty` when given.
    """
    pred = pred.float()  # loss maths in fp32 even when the network ran under bf16 / fp16 autocast
    target = schedule.training_target(x0, noise, t, prediction_type, sigma_data)
    channel_w = channel_weight_vector(loss_cfg.channel_weights, x0.shape[1], joint_mask)
    pixel_w = lesion_weight_map(x0[:, -1:], loss_cfg.lesion_weight) if joint_mask else None
    spatial = lp_loss(pred, target, loss_cfg.p, channel_w, pixel_w)
    gamma = loss_cfg.min_snr_gamma
    if gamma is not None:
        spatial = spatial * min_snr_weights(schedule, t, gamma, prediction_type, p=loss_cfg.p, sigma_data=sigma_data)
    parts = {"loss_spatial": spatial.mean()}
    if loss_cfg.ffl_weight > 0:
        x0_pred = schedule.to_x0(pred, x_t, t, prediction_type, sigma_data)
        ffl = focal_frequency_loss(
            x0_pred, x0, loss_cfg.ffl_alpha, loss_cfg.ffl_patch_factor, loss_cfg.ffl_log_weight
        )
        ffl = ffl * x0_space_weights(schedule, t, prediction_type, loss_cfg.p, gamma, sigma_data)
        parts["loss_frequency"] = loss_cfg.ffl_weight * ffl.mean()
    if uncertainty is None:
        total = sum(parts.values())
    elif len(parts) == uncertainty.log_vars.numel():
        total = uncertainty(list(parts.values()))
    else:
        raise UserError(
            f"loss.uncertainty_weighting weighs {uncertainty.log_vars.numel()} groups but {len(parts)} are "
            "active; set loss.ffl_weight > 0 (spatial + frequency) or turn uncertainty_weighting off"
        )
    parts["loss"] = total
    return total, parts
