"""Drawing one batch of samples from a network for given conditions and per-sample seeds: the glue of
model conditions, the noise schedule and a sampler, below both training (its periodic sample grid) and
generation (whole synthetic sets, SDEdit, inpainting)."""

from __future__ import annotations

import numpy as np
import torch

from .errors import UserError


def batch_conditions(cfg, zbins, labels, priors: torch.Tensor | None, device, z=None) -> dict:
    """The network's conditions for a batch to draw: class, z (default: the z-bin centre
    (b + 0.5) / n_zbins) and the z-bin's prior map, each only when the model uses it."""
    from .model import condition_names

    zbins_t = torch.as_tensor(np.asarray(zbins), dtype=torch.long)
    conditions = {}
    names = condition_names(cfg)
    if "label" in names:
        conditions["label"] = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    if "z" in names:
        z = (zbins_t.float() + 0.5) / int(cfg.data.n_zbins) if z is None else torch.as_tensor(np.asarray(z))
        conditions["z"] = z.to(device=device, dtype=torch.float32)
    if "prior" in names:
        if priors is None:
            raise UserError("checkpoint has no prior maps but model.prior is set; retrain with this version")
        conditions["prior"] = priors[zbins_t].unsqueeze(1).to(device)
    return conditions


def sampler_settings(cfg) -> dict:
    """Keyword arguments of `diffusion.sample` (and of `diffusion.inpaint.sample_known`) from the config."""
    s = cfg.sample
    return dict(prediction_type=cfg.diffusion.prediction_type, sampler=s.sampler, steps=int(s.steps),
                eta=float(s.eta), clip_x0=bool(cfg.diffusion.clip_x0),
                self_conditioning=float(cfg.diffusion.self_conditioning_prob) > 0,
                guidance_scale=float(s.guidance_scale), sigma_data=float(cfg.diffusion.sigma_data))


def generators_for(seeds, device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def sample_batch(net, cfg, zbins, labels, seeds, priors: torch.Tensor | None = None,
                 device: str | torch.device = "cpu", source: np.ndarray | None = None,
                 keep: np.ndarray | None = None, z=None) -> torch.Tensor:
    """One batch of samples (B, C, H, W) in [-1, 1] for the given conditions and per-sample seeds.

    z is conditioned on the z-bin centre (b + 0.5) / n_zbins; the prior map is the z-bin's. With a
    `source` (B, C, H, W): SDEdit from it at sample.strength, and with `keep` (bool, same shape) its
    known part is kept (inpainting, inpaint.resample re-noising jumps per step). `z` replaces the
    z-bin centres (e.g. by the sources' own positions).
    """
    from .diffusion import ConditionedDenoiser, NoiseSchedule, sample
    from .diffusion.inpaint import sample_known
    from .model import data_channels

    device = torch.device(device)
    size = int(cfg.data.image_size)
    denoiser = ConditionedDenoiser(net, **batch_conditions(cfg, zbins, labels, priors, device, z))
    schedule = NoiseSchedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    generators = generators_for(seeds, device)
    if source is None:  # strength 1 from pure noise: the plain sampler
        return sample(denoiser, (len(seeds), data_channels(cfg), size, size), schedule, generator=generators,
                      device=device, **sampler_settings(cfg))
    resample = 0 if keep is None else int(cfg.inpaint.resample)
    keep = None if keep is None else torch.as_tensor(np.asarray(keep, bool))
    return sample_known(denoiser, torch.from_numpy(np.array(source, np.float32)), schedule, keep=keep,
                        strength=float(cfg.sample.strength), resample=resample, generator=generators,
                        device=device, **sampler_settings(cfg))


def postprocess(images: torch.Tensor, joint_mask: bool) -> np.ndarray:
    """float32 numpy in [-1, 1], the mask channel (last) thresholded at 0 to {-1, +1}."""
    out = images.detach().float().clamp(-1, 1).cpu().numpy()
    if joint_mask:
        out[:, -1] = np.where(out[:, -1] > 0, 1.0, -1.0)
    return out.astype(np.float32)
