"""Exponential moving average of a network's weights (all of it: UNet, prior encoder, embeddings)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used at the `updates`-th update: min(decay, (1 + n) / (10 + n)).

    The ramp keeps the average from being dominated by the random initial weights in short runs
    (the demo trains a few hundred steps); it reaches `decay` after about 10 / (1 - decay) updates.
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


class EMA(nn.Module):
    """A frozen copy of `net` whose parameters track `decay * ema + (1 - decay) * net`.

    Buffers are copied as they are. `updates` is a buffer, so it is saved and restored with the state
    dict and a resumed run continues the same ramp.
    """

    def __init__(self, net: nn.Module, decay: float):
        super().__init__()
        self.decay = float(decay)
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        d = ema_decay_at(self.decay, int(self.updates))
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in net.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("EMA.update: the network's parameters differ from the averaged copy's")
        torch._foreach_lerp_(ema_params, [p.to(e.dtype) for p, e in zip(params, ema_params)], 1.0 - d)
        for e, b in zip(self.module.buffers(), net.buffers()):
            e.copy_(b)
        self.updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True):  # the average is never in training mode (no dropout)
        return super().train(False)
