"""Condition embeddings: diffusion timestep, pathology class and continuous slice position z.

Each is mapped to one vector of size `emb_dim`; the UNet sums them and every residual block turns the
sum into a per-channel scale and shift. Classifier-free guidance replaces the class and z of a
sample with learned null embeddings when its `drop` flag is set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# z_norm lies in [0, 1]; scaling it to [0, 1000] lets it use the same sinusoidal frequency range as
# the diffusion timesteps (0..T-1, T ~ 1000), so that neighbouring slices get distinct embeddings.
Z_SCALE = 1000.0


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) real values -> (B, dim) features [cos(v f_k), sin(v f_k)], f_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=values.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    args = values.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


def drop_mask(drop_cond: torch.Tensor | bool | None, batch: int, device: torch.device) -> torch.Tensor:
    """The per-sample classifier-free-guidance flag as a bool (B,) tensor (None = keep all conditions)."""
    if drop_cond is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    if isinstance(drop_cond, bool):
        return torch.full((batch,), drop_cond, dtype=torch.bool, device=device)
    return torch.as_tensor(drop_cond, device=device).to(torch.bool).reshape(-1).expand(batch)


def mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class TimestepEmbedding(nn.Module):
    """Timestep t -> sinusoidal features -> 2-layer MLP."""

    def __init__(self, freq_dim: int, emb_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = mlp(freq_dim, emb_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim))


class ConditionEmbedding(nn.Module):
    """Sum of the class embedding and the z embedding, each with a learned null condition.

    A missing label / z (None) or a dropped sample uses the null embedding, so one network serves
    the conditional and unconditional branches of classifier-free guidance.
    """

    def __init__(self, emb_dim: int, freq_dim: int, num_classes: int, z_conditioning: bool):
        super().__init__()
        self.num_classes = num_classes
        self.freq_dim = freq_dim
        # row `num_classes` is the null class
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.z_mlp = mlp(freq_dim, emb_dim) if z_conditioning else None
        self.null_z = nn.Parameter(torch.randn(emb_dim) * 0.02) if z_conditioning else None

    def forward(self, label: torch.Tensor | None, z: torch.Tensor | None, drop: torch.Tensor) -> torch.Tensor | None:
        out = None
        if self.class_embed is not None:
            null = torch.full_like(drop, self.num_classes, dtype=torch.long)
            index = null if label is None else torch.where(drop, null, label.to(drop.device).long().reshape(-1))
            out = self.class_embed(index)
        if self.z_mlp is not None:
            if z is None:
                z_emb = self.null_z.expand(drop.shape[0], -1)
            else:
                z_emb = self.z_mlp(sinusoidal_embedding(z.reshape(-1) * Z_SCALE, self.freq_dim))
                z_emb = torch.where(drop[:, None], self.null_z, z_emb)
            out = z_emb if out is None else out + z_emb
        return out
