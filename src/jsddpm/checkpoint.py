"""Training checkpoints: reading them, the `jsddpm` record they carry, the network and config in them.

Below both `training/` and `generation/`: training resumes from these files and generation samples
from them, and neither imports the other. Checkpoints hold plain containers only (see
docs/internals.md), so they load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text, cut at a word boundary."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, loaded with weights_only=True (plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; give --ckpt a .ckpt file written by jsddpm train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({_first_line(exc, 120)}); "
                        "give a .ckpt written by jsddpm train") from None
    if not isinstance(ckpt, dict) or "jsddpm" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a jsddpm training checkpoint (no 'jsddpm' record); "
                        "give a .ckpt written by jsddpm train")
    return ckpt


def config_from_checkpoint(ckpt: dict) -> Any:
    from .config import from_container

    return from_container(ckpt["jsddpm"]["config"])


def priors_from_checkpoint(ckpt: dict) -> torch.Tensor | None:
    """The cache's per-z-bin prior maps (n_zbins, H, W) stored at training time, or None."""
    priors = ckpt["jsddpm"].get("priors")
    return None if priors is None else torch.as_tensor(priors, dtype=torch.float32)


def spacing_from_checkpoint(ckpt: dict, cfg: Any) -> np.ndarray:
    """Voxel spacing (x, y, z) in mm of the training cache.

    Checkpoints record it since NIfTI export exists; older ones fall back to the spacing their data
    config asks for (what `jsddpm cache` used when cache and training shared the config)."""
    stored = ckpt["jsddpm"].get("spacing_mm")
    if stored is not None:
        return np.asarray(stored, dtype=np.float64)
    from .data.volumes import target_spacing

    return target_spacing(cfg.data)


def model_from_checkpoint(ckpt: dict, use_ema: bool = True, device: str | torch.device = "cpu",
                          cfg: Any = None):
    """(network in eval mode, config). `use_ema` picks the averaged weights (what sampling should use)."""
    from .model import build_model

    cfg = cfg if cfg is not None else config_from_checkpoint(ckpt)
    net = build_model(cfg, verbose=False)
    prefix = "ema.module." if use_ema else "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"checkpoint weights do not fit the model built from its config "
                        f"({_first_line(exc, 120)}); was it written by another jsddpm version?") from None
    return net.to(device).eval(), cfg


def non_finite_weights(ckpt: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors under `prefix` in the state dict that hold NaN or Inf."""
    return [k for k, v in ckpt["state_dict"].items()
            if k.startswith(prefix) and torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
