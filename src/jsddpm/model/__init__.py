"""The denoising network: `build_model(cfg)` turns the full Config into a `UNet`."""

from __future__ import annotations

from typing import Any

from ..config import PRIOR_MODES, UPSAMPLE_MODES
from ..errors import UserError
from .unet import UNet

__all__ = ["UNet", "build_model", "count_parameters", "data_channels"]


def data_channels(cfg: Any) -> int:
    """Channels the diffusion runs on: image channels + 1 mask channel for joint synthesis."""
    return int(cfg.model.image_channels) + (1 if cfg.model.joint_mask else 0)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_model_config(cfg: Any, where: str = "config") -> None:
    """Shape constraints between model.* and data.image_size, one line each."""
    m = cfg.model
    size = int(cfg.data.image_size)
    levels = len(m.channel_mult)
    checks = [
        (m.base_channels >= 1 and all(k >= 1 for k in m.channel_mult),
         "model.base_channels and model.channel_mult must be positive"),
        (m.num_res_blocks >= 1, "model.num_res_blocks must be at least 1"),
        (m.norm_groups >= 1 and all((m.base_channels * k) % m.norm_groups == 0 for k in m.channel_mult),
         f"model.norm_groups={m.norm_groups} must divide every level's channels "
         f"(base_channels * channel_mult = {[m.base_channels * k for k in m.channel_mult]})"),
        (size % 2 ** (levels - 1) == 0,
         f"data.image_size={size} must be divisible by 2^(levels-1) = {2 ** (levels - 1)} "
         f"for {levels} levels in model.channel_mult; change the size or the number of levels"),
        (m.attention_head_dim >= 1, "model.attention_head_dim must be at least 1"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (m.upsample in UPSAMPLE_MODES, f"model.upsample must be one of {', '.join(UPSAMPLE_MODES)}"),
        (m.prior in PRIOR_MODES, f"model.prior must be one of {', '.join(PRIOR_MODES)}"),
        (m.num_classes >= 0, "model.num_classes must be >= 0 (0 disables class conditioning)"),
    ]
    if m.prior == "cross_attention":
        grid = round(m.prior_tokens ** 0.5)
        checks.append((m.prior_tokens >= 1 and grid * grid == m.prior_tokens,
                       f"model.prior_tokens={m.prior_tokens} must be a perfect square (4, 9, 16, ...)"))
        checks.append((m.prior_channels >= 1, "model.prior_channels must be at least 1"))
    resolutions = {size // 2**i for i in range(levels)}
    for key in ("attention_resolutions",) + (("prior_attention_resolutions",) if m.prior == "cross_attention" else ()):
        missing = sorted(set(getattr(m, key)) - resolutions)
        checks.append((not missing, f"model.{key} has {missing}, which are not feature-map sizes of this UNet "
                                    f"(choose from {sorted(resolutions, reverse=True)})"))
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{where}: {msg}")


def build_model(cfg: Any, verbose: bool = True, where: str = "config") -> UNet:
    """The UNet described by `cfg.model`, `cfg.data.image_size` and `cfg.diffusion.self_conditioning_prob`.

    Prints the parameter count on one line unless `verbose=False`.
    """
    check_model_config(cfg, where)
    m = cfg.model
    net = UNet(
        data_channels=data_channels(cfg),
        image_size=int(cfg.data.image_size),
        base_channels=int(m.base_channels),
        channel_mult=[int(k) for k in m.channel_mult],
        num_res_blocks=int(m.num_res_blocks),
        attention_resolutions=[int(r) for r in m.attention_resolutions],
        attention_head_dim=int(m.attention_head_dim),
        dropout=float(m.dropout),
        norm_groups=int(m.norm_groups),
        upsample=str(m.upsample),
        upsample_conv_first=bool(m.upsample_conv_first),
        resblock_norm2=bool(m.resblock_norm2),
        num_classes=int(m.num_classes),
        z_conditioning=bool(m.z_conditioning),
        prior=str(m.prior),
        prior_attention_resolutions=[int(r) for r in m.prior_attention_resolutions],
        prior_tokens=int(m.prior_tokens),
        prior_channels=int(m.prior_channels),
        self_conditioning=float(cfg.diffusion.self_conditioning_prob) > 0,
        mask_conditioning=bool(m.mask_conditioning),
    )
    if verbose:
        print(f"model: UNet with {count_parameters(net):,} parameters "
              f"({net.in_channels} in / {net.out_channels} out channels, {cfg.data.image_size} px)")
    return net
