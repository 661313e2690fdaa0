"""The denoising UNet: configurable depth, widths, attention levels, upsampling and conditioning.

Layout (as in the ADM / MONAI diffusion UNets, so that presets compare one-to-one): an input conv;
per level `num_res_blocks` residual blocks (each followed by self-attention when the level's
resolution is listed, and by cross-attention to the prior tokens when listed there), then a
stride-2 conv except at the last level; a middle block (res, attention when the bottleneck
resolution is listed, res); per level on the way up `num_res_blocks + 1` residual blocks on the
concatenation with the matching skip, then a 2x upsampling; GroupNorm-SiLU-conv to the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PRIOR_MODES
from .blocks import (
    CrossAttention,
    Downsample,
    ResBlock,
    SelfAttention,
    Upsample,
    channels_last_grad,
    zero_init,
)
from .conditioning import ConditionEmbedding, TimestepEmbedding, drop_mask
from .prior_encoder import PriorEncoder


class UNet(nn.Module):
    """`forward(x_t, t, label=None, z=None, prior=None, self_cond=None, drop_cond=None, mask=None, mask_drop=None)`.

    Input channels = data channels [+ data channels for self-conditioning] [+ 1 prior channel when
    prior == "concat"] [+ 1 mask channel with mask_conditioning]; output channels = data channels. A
    missing condition (None) is the null condition; a missing self-conditioning estimate is zeros (the
    first step of self-conditioning). Labels must lie in 0..num_classes-1 (index num_classes is the null
    class). `drop_cond` (bool per sample) nulls class, z and prior; `mask_drop` nulls the mask alone, so
    the two can be guided separately.

    Mask conditioning: the clean lesion mask, {-1, +1} per pixel, enters as one more input channel; a
    withheld mask (None, or `mask_drop` set) is the channel at 0, a value no given mask has at any pixel,
    so every pixel tells the network whether the mask is given (no indicator channel needed).

    Inside, feature maps are channels-last (faster convolutions and free token views for attention
    on CPU and GPU); the output is a plain contiguous (B, C, H, W) tensor.
    """

    def __init__(
        self,
        *,
        data_channels: int,
        image_size: int,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] | list[int] = (16,),
        attention_head_dim: int = 32,
        dropout: float = 0.0,
        norm_groups: int = 8,
        upsample: str = "bilinear",
        upsample_conv_first: bool = True,
        resblock_norm2: bool = True,
        num_classes: int = 0,
        z_conditioning: bool = False,
        prior: str = "none",
        prior_attention_resolutions: tuple[int, ...] | list[int] = (),
        prior_tokens: int = 16,
        prior_channels: int = 32,
        self_conditioning: bool = False,
        mask_conditioning: bool = False,
        channels_last: bool = True,
    ):
        super().__init__()
        if prior not in PRIOR_MODES:
            raise ValueError(f"prior mode {prior!r} is not one of {PRIOR_MODES}")
        self.data_channels = data_channels
        self.out_channels = data_channels
        self.self_conditioning = self_conditioning
        self.mask_conditioning = mask_conditioning
        self.prior = prior
        # the conditions this network takes besides x_t and t (keyword arguments of forward): the one place
        # that says so; training batches and generation (draw.batch_conditions) pick their conditions by it
        used = {"label": num_classes > 0, "z": z_conditioning, "prior": prior != "none", "mask": mask_conditioning}
        self.condition_names = tuple(name for name, on in used.items() if on)
        self.channels_last = channels_last
        self.in_channels = (data_channels * (2 if self_conditioning else 1) + (1 if prior == "concat" else 0)
                            + (1 if mask_conditioning else 0))

        # Scale-shift needs two outputs per channel from each block's projection; a condition vector
        # of 2 * base (not the usual 4 *) keeps those projections as small as an additive one's.
        emb_dim = 2 * base_channels
        self.time_embed = TimestepEmbedding(base_channels, emb_dim)
        self.cond_embed = ConditionEmbedding(emb_dim, base_channels, num_classes, z_conditioning)
        self.prior_encoder = PriorEncoder(prior_channels, prior_tokens) if prior == "cross_attention" else None
        attn_at = set(attention_resolutions)
        cross_at = set(prior_attention_resolutions) if prior == "cross_attention" else set()

        def block(in_ch: int, out_ch: int, res: int) -> nn.ModuleList:
            layers: list[nn.Module] = [ResBlock(in_ch, out_ch, emb_dim, norm_groups, dropout, resblock_norm2)]
            if res in attn_at:
                layers.append(SelfAttention(out_ch, attention_head_dim, norm_groups))
            if res in cross_at:
                layers.append(CrossAttention(out_ch, prior_channels, attention_head_dim, norm_groups))
            return nn.ModuleList(layers)

        ch = base_channels
        res = image_size
        self.input_conv = nn.Conv2d(self.in_channels, ch, 3, padding=1)
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            out_ch = base_channels * mult
            for _ in range(num_res_blocks):
                self.down.append(block(ch, out_ch, res))
                ch = out_ch
                skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_channels.append(ch)
                res //= 2

        mid = block(ch, ch, res)
        mid.append(ResBlock(ch, ch, emb_dim, norm_groups, dropout, resblock_norm2))
        self.mid = mid

        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            out_ch = base_channels * channel_mult[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_channels.pop(), out_ch, res))
                ch = out_ch
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(ch, upsample, upsample_conv_first)]))
                res *= 2

        self.out_norm = nn.GroupNorm(norm_groups, ch)
        self.out_conv = zero_init(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        if channels_last:
            # mkldnn / cuDNN convolutions run natively on NHWC: no layout reorders around each conv
            self.to(memory_format=torch.channels_last)

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None):
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, CrossAttention):
                h = layer(h, context)
            else:
                h = layer(h)
        return h

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        label: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        prior: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
        drop_cond: torch.Tensor | bool | None = None,
        mask: torch.Tensor | None = None,
        mask_drop: torch.Tensor | bool | None = None,
    ) -> torch.Tensor:
        batch, channels = x_t.shape[:2]
        if channels != self.data_channels:
            raise ValueError(f"x_t has {channels} channels, the model expects {self.data_channels}")
        drop = drop_mask(drop_cond, batch, x_t.device)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(batch)

        parts = [x_t]
        if self.self_conditioning:
            parts.append(torch.zeros_like(x_t) if self_cond is None else self_cond)
        if self.prior == "concat":
            if prior is None:
                prior = x_t.new_zeros(batch, 1, *x_t.shape[2:])
            parts.append(prior * (~drop).to(prior.dtype)[:, None, None, None])
        if self.mask_conditioning:
            if mask is None:
                parts.append(x_t.new_zeros(batch, 1, *x_t.shape[2:]))
            else:
                given = ~drop_mask(mask_drop, batch, x_t.device)
                parts.append(mask.to(x_t.dtype) * given.to(x_t.dtype)[:, None, None, None])
        x = torch.cat(parts, dim=1) if len(parts) > 1 else x_t
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        emb = self.time_embed(t)
        cond = self.cond_embed(label, z, drop)
        if cond is not None:
            emb = emb + cond
        emb = F.silu(emb)
        context = self.prior_encoder(prior, drop) if self.prior_encoder is not None else None

        h = self.input_conv(x)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, context)
            skips.append(h)
        h = self._run(self.mid, h, emb, context)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                skip = skips.pop()
                if self.channels_last:
                    h, skip = channels_last_grad(h), channels_last_grad(skip)
                h = torch.cat([h, skip], dim=1)
            h = self._run(layers, h, emb, context)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return out.contiguous()
