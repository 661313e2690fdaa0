"""Atomic checkpoint files and the periodic sample grid."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..io import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into memory, then one atomic rename: a crash never leaves a truncated .ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def grid_conditions(n_zbins: int, num_classes: int, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """`n` (z-bin, class) pairs spread over the z range, alternating classes."""
    zbins = np.linspace(0, n_zbins - 1, n).round().astype(np.int64)
    labels = np.arange(n, dtype=np.int64) % max(num_classes, 1)
    return zbins, labels


class SampleGrid(L.Callback):
    """Every `every_n_epochs` epochs, rank 0 draws a few samples with the EMA network (DPM-Solver++,
    few steps, fixed seeds) and writes `folder/epoch_XXXX.png` (image | mask | overlay)."""

    def __init__(self, folder: str | Path, every_n_epochs: int, steps: int, n_samples: int = 8):
        self.folder = Path(folder)
        self.every_n_epochs = every_n_epochs
        self.steps = steps
        self.n_samples = n_samples

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.every_n_epochs <= 0 or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if trainer.is_global_zero:
            self.write(pl_module, self.folder / f"epoch_{trainer.current_epoch + 1:04d}.png")

    def write(self, pl_module, path: Path) -> None:
        from omegaconf import OmegaConf

        from ..generation import postprocess, sample_batch, sample_seeds, save_png, triplet_grid

        cfg = OmegaConf.merge(pl_module.cfg, {"sample": {"sampler": "dpmpp_2m", "steps": self.steps,
                                                         "guidance_scale": 1.0}})
        zbins, labels = grid_conditions(int(cfg.data.n_zbins), int(cfg.model.num_classes), self.n_samples)
        seeds = sample_seeds(int(cfg.train.seed), zbins, labels, np.zeros_like(zbins))
        images = sample_batch(pl_module.ema.module, cfg, zbins, labels, seeds, pl_module.priors, pl_module.device)
        images = postprocess(images, bool(cfg.model.joint_mask))
        save_png(path, triplet_grid(images, bool(cfg.model.joint_mask)))
