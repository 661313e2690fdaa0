"""Drawing one batch of samples from a network for given conditions and per-sample seeds: the glue of
model conditions, the noise schedule and a sampler, below both training (its periodic sample grid) and
generation (whole synthetic sets, SDEdit, inpainting)."""

from __future__ import annotations

import numpy as np
import torch

from .errors import UserError


def batch_conditions(names, cfg, zbins, labels, priors: torch.Tensor | None, device, z=None, mask=None) -> dict:
    """The network's conditions for a batch to draw, of those it takes (`names`: its `condition_names`):
    class, z (default: the z-bin centre (b + 0.5) / n_zbins) and the z-bin's prior map; and the given
    masks (B, 1, H, W) in {-1, +1} when `mask` is not None (None: withheld, the joint mode of a
    mask-conditioned model)."""
    zbins_t = torch.as_tensor(np.asarray(zbins), dtype=torch.long)
    conditions = {}
    if "label" in names:
        conditions["label"] = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    if "z" in names:
        z = (zbins_t.float() + 0.5) / int(cfg.data.n_zbins) if z is None else torch.as_tensor(np.asarray(z))
        conditions["z"] = z.to(device=device, dtype=torch.float32)
    if "prior" in names:
        if priors is None:
            raise UserError("checkpoint has no prior maps but model.prior is set; retrain with this version")
        conditions["prior"] = priors[zbins_t].unsqueeze(1).to(device)
    if mask is not None:
        conditions["mask"] = given_masks(cfg, mask, len(zbins_t), "mask" in names).to(device)
    return conditions


def given_masks(cfg, mask, batch: int, mask_conditioned: bool) -> torch.Tensor:
    """`mask` as a float32 (B, 1, H, W) tensor after the checks a mask condition needs (one line each)."""
    if not mask_conditioned:
        raise UserError("given masks need a model trained with model.mask_conditioning=true; this one draws "
                        "image and mask jointly (generate without masks, or inpaint)")
    mask = torch.as_tensor(np.asarray(mask, np.float32))
    size = int(cfg.data.image_size)
    if tuple(mask.shape) != (batch, 1, size, size):
        raise UserError(f"given masks have shape {tuple(mask.shape)}; expected ({batch}, 1, {size}, {size})")
    if not ((mask == 1) | (mask == -1)).all():  # 0 is the withheld value; NaN fails too
        raise UserError("given masks must hold only -1 (background) and +1 (lesion)")
    return mask


def sampler_settings(cfg, inpainting: bool = False) -> dict:
    """Keyword arguments of `diffusion.sample` (and of `diffusion.inpaint.sample_known`) from the config;
    with `inpainting`, inpaint.sampler / inpaint.steps (capped at diffusion.timesteps) / inpaint.resample /
    inpaint.guidance_scale (when set)."""
    s = cfg.sample
    settings = dict(prediction_type=cfg.diffusion.prediction_type, sampler=s.sampler, steps=int(s.steps),
                    eta=float(s.eta), clip_x0=bool(cfg.diffusion.clip_x0),
                    self_conditioning=float(cfg.diffusion.self_conditioning_prob) > 0,
                    guidance_scale=float(s.guidance_scale), sigma_data=float(cfg.diffusion.sigma_data))
    if inpainting:
        p = cfg.inpaint
        settings.update(sampler=p.sampler, steps=min(int(p.steps), int(cfg.diffusion.timesteps)),
                        eta=float(s.eta) if p.sampler == "ddim" else 0.0, resample=int(p.resample))
        if p.guidance_scale is not None:
            settings["guidance_scale"] = float(p.guidance_scale)
    return settings


def generators_for(seeds, device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def sample_batch(net, cfg, zbins, labels, seeds, priors: torch.Tensor | None = None,
                 device: str | torch.device = "cpu", source: np.ndarray | None = None,
                 keep: np.ndarray | None = None, z=None, mask=None) -> torch.Tensor:
    """One batch of samples (B, C, H, W) in [-1, 1] for the given conditions and per-sample seeds.

    z is conditioned on the z-bin centre (b + 0.5) / n_zbins; the prior map is the z-bin's. With a
    `source` (B, C, H, W): SDEdit from it at sample.strength, and with `keep` (bool, same shape) its
    known part is kept (inpainting with the inpaint.* sampler settings). `z` replaces the z-bin centres
    (e.g. by the sources' own positions). `mask` (B, 1, H, W) in {-1, +1}, for a model trained with
    model.mask_conditioning: the image is drawn given these masks (class, z and prior stay; guided by
    sample.mask_guidance) and the result's mask channel is the given mask, exactly (kept known, like an
    inpainted part); None draws image and mask jointly.
    """
    from .diffusion import ConditionedDenoiser, NoiseSchedule, sample
    from .diffusion.inpaint import sample_known
    from .model import data_channels

    device = torch.device(device)
    size = int(cfg.data.image_size)
    conditions = batch_conditions(net.condition_names, cfg, zbins, labels, priors, device, z, mask)
    denoiser = ConditionedDenoiser(net, **conditions)
    schedule = NoiseSchedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    generators = generators_for(seeds, device)
    shape = (len(seeds), data_channels(cfg), size, size)
    settings = sampler_settings(cfg, inpainting=keep is not None)
    settings.setdefault("resample", 0)
    strength = float(cfg.sample.strength) if source is not None else 1.0
    if mask is not None:
        settings["mask_guidance"] = float(cfg.sample.mask_guidance)
        # the mask channel is known: kept at the given mask, noised to each step's level (the network's own
        # estimate of it is replaced), and exactly the given mask at the end
        source = np.zeros(shape, np.float32) if source is None else np.array(source, np.float32)
        source[:, -1:] = conditions["mask"].cpu().numpy()
        keep = np.zeros(shape, bool) if keep is None else np.array(keep, bool)
        keep[:, -1] = True
    if source is None:  # strength 1 from pure noise: the plain sampler
        settings.pop("resample")
        return sample(denoiser, shape, schedule, generator=generators, device=device, **settings)
    keep = None if keep is None else torch.as_tensor(np.asarray(keep, bool))
    return sample_known(denoiser, torch.from_numpy(np.array(source, np.float32)), schedule, keep=keep,
                        strength=strength, generator=generators, device=device, **settings)


def postprocess(images: torch.Tensor, joint_mask: bool) -> np.ndarray:
    """float32 numpy in [-1, 1], the mask channel (last) thresholded at 0 to {-1, +1}."""
    out = images.detach().float().clamp(-1, 1).cpu().numpy()
    if joint_mask:
        out[:, -1] = np.where(out[:, -1] > 0, 1.0, -1.0)
    return out.astype(np.float32)
