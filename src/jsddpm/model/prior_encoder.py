"""Anatomical prior encoder: the cache's (1, H, W) brain-occupancy map -> tokens for cross-attention."""

from __future__ import annotations

import math

import torch
from torch import nn


class PriorEncoder(nn.Module):
    """Three stride-2 convolutions, then average pooling to a g x g grid of tokens (g*g = n_tokens).

    Each token gets a learned position embedding. Dropped samples (classifier-free guidance) and a
    missing prior use learned null tokens instead.
    """

    def __init__(self, channels: int, n_tokens: int):
        super().__init__()
        grid = math.isqrt(n_tokens)
        if grid * grid != n_tokens:
            raise ValueError(f"prior_tokens={n_tokens} must be a perfect square")
        self.grid = grid
        self.channels = channels
        mid = max(channels // 2, 1)
        self.net = nn.Sequential(
            nn.Conv2d(1, mid, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(mid, channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.out = nn.Linear(channels, channels)
        self.position = nn.Parameter(torch.randn(n_tokens, channels) * 0.02)
        self.null_tokens = nn.Parameter(torch.randn(n_tokens, channels) * 0.02)

    def forward(self, prior: torch.Tensor | None, drop: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) prior and bool (B,) drop flags -> (B, n_tokens, channels)."""
        batch = drop.shape[0]
        if prior is None:
            return self.null_tokens.expand(batch, -1, -1)
        features = nn.functional.adaptive_avg_pool2d(self.net(prior), self.grid)
        tokens = self.out(features.flatten(2).transpose(1, 2)) + self.position
        return torch.where(drop[:, None, None], self.null_tokens, tokens)
