"""AdamW with decay only on Linear / Conv weights, and a linear-warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

DECAYED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on Linear / Conv weights only.

    Everything else - biases, normalisation scales, nn.Embedding tables, free parameters such as
    null-condition embeddings, prior tokens and the uncertainty log variances - is not decayed:
    pulling those towards 0 changes what they mean rather than regularising.
    """
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                is_weight = name == "weight" and isinstance(sub, DECAYED_MODULES)
                (decay if is_weight else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.1) -> float:
    """LR factor: linear from 1/warmup to 1 over `warmup_steps`, then cosine down to `min_factor`
    at `total_steps` (and flat after it)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(modules: list[nn.Module], lr: float, weight_decay: float, betas) -> torch.optim.AdamW:
    params = param_groups(modules, weight_decay)
    fused = all(p.is_cuda for group in params for p in group["params"]) and bool(params[0]["params"])
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), fused=fused or None)


def build_scheduler(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:  # a plain function: LambdaLR stores nothing of it in its state
        return warmup_cosine(step, warmup_steps, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
