"""The LightningModule: one training step, EMA validation in fixed timestep buckets, checkpoint records.

Exact resume: every random draw of a training step comes from the global RNG re-seeded from (seed,
global step, rank) at the start of the step, data order and augmentation are keyed by (seed, epoch,
position) (see loaders.py), and the EMA is part of the state dict. A resumed run therefore replays
the same steps as an uninterrupted one, whatever Lightning prefetched before the checkpoint.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from ..config import to_container
from ..diffusion.schedule import NoiseSchedule
from ..model import build_model
from .ema import EMA
from .loaders import EpochSampler, SeededItems, derive_seed
from .objective import Objective
from .optim import build_optimizer, build_scheduler

CHECKPOINT_FORMAT = 1
VAL_NOISE_KEY = 1_000_003  # keeps validation noise seeds apart from training-step seeds


def rng_states() -> dict:
    """Global RNG states as plain containers (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def condition_drops(cfg: Any, batch: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample training dropout flags from torch's global RNG: `drop` (class, z and prior withheld, with
    probability diffusion.condition_dropout) and, for a mask-conditioned model, `mask_drop` (mask withheld,
    train.mask_drop) from a second, independent coin, so that all four (class, mask) combinations are
    trained and either condition can be guided (`diffusion.samplers.guidance_branches`). The loss keeps
    every channel: with the mask given, its channel's target is that mask, which the network learns to copy.
    """
    drop = torch.rand(batch, device=device) < cfg.diffusion.condition_dropout
    mask_drop = torch.rand(batch, device=device) < cfg.train.mask_drop if cfg.model.mask_conditioning else None
    return drop, mask_drop


class DiffusionModule(L.LightningModule):
    """`cfg` is the full Config; `cache` a SliceCache (None when only loading weights)."""

    def __init__(self, cfg: Any, cache=None):
        super().__init__()
        self.cfg = cfg
        self.cache = cache
        self.net = build_model(cfg)
        self.ema = EMA(self.net, cfg.train.ema_decay)
        self.schedule = NoiseSchedule(cfg.diffusion.schedule, cfg.diffusion.timesteps)
        self.objective = Objective(cfg, self.schedule)  # holds the learnable uncertainty log variances
        self.priors = None if cache is None else torch.as_tensor(np.asarray(cache.priors), dtype=torch.float32)
        self.classes = [] if cache is None else list(cache.classes)
        self.position = (0, 0)  # (epoch, batches of it trained on): where the data order resumes

    # ------------------------------------------------------------------------------ training
    def conditions(self, batch: dict, drop: torch.Tensor | None = None, mask_drop=None) -> dict:
        """The network's conditions from a training batch (the slices' own class, z and augmented prior, and
        for a mask-conditioned model their clean mask, the data's last channel). `drop` nulls class, z and
        prior; `mask_drop` (bool or per-sample flags) withholds the mask."""
        names = self.net.condition_names
        cond = {"drop_cond": drop, **{name: batch[name] for name in names if name != "mask"}}
        if "mask" in names:
            cond.update(mask=batch["x"][:, -1:], mask_drop=mask_drop)
        return cond

    def modelled(self, batch: dict) -> torch.Tensor:
        """The channels the network models: an image-only model (model.joint_mask=false) on a cache with
        masks trains on the image channels alone (the mask channel comes last)."""
        x = batch["x"]
        return x if self.cfg.model.joint_mask else x[:, : self.cfg.model.image_channels]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        torch.manual_seed(derive_seed(self.cfg.train.seed, self.global_step, self.global_rank))
        self.position = (self.current_epoch, batch_idx + 1)
        x0 = self.modelled(batch)
        b = x0.shape[0]
        t = self.objective.timesteps(b, self.device)
        noise = torch.randn_like(x0)
        x_t = self.schedule.q_sample(x0, t, noise)
        cond = self.conditions(batch, *condition_drops(self.cfg, b, self.device))
        self_cond = self.objective.self_condition(self.net, x_t, t, cond)
        pred = self.net(self.objective.network_input(x_t, t), t, self_cond=self_cond, **cond)
        loss, terms = self.objective(pred, x0, noise, x_t, t)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)  # here, not in on_train_batch_end: checkpoint callbacks run before that

    def configure_optimizers(self):
        t = self.cfg.train
        optimizer = build_optimizer([self.net, self.objective], t.lr, t.weight_decay, t.betas)
        total = t.max_steps if t.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, t.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------------------- validation
    def bucket_timesteps(self) -> list[int]:
        k, steps = self.cfg.train.val_timestep_buckets, self.schedule.timesteps
        return [min(steps - 1, int((i + 0.5) * steps / k)) for i in range(k)]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """EMA loss at fixed timesteps with noise fixed per (batch, bucket): comparable across epochs."""
        x0 = self.modelled(batch)
        losses, given = [], []
        for i, t_value in enumerate(self.bucket_timesteps()):
            g = torch.Generator(device=x0.device).manual_seed(
                derive_seed(self.cfg.train.seed, VAL_NOISE_KEY, batch_idx, i))
            noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
            t = torch.full((x0.shape[0],), t_value, device=x0.device, dtype=torch.long)
            x_t = self.schedule.q_sample(x0, t, noise)
            # joint mode (mask withheld): comparable with models without mask conditioning
            pred = self.ema(self.objective.network_input(x_t, t), t, **self.conditions(batch, mask_drop=True))
            losses.append(self.objective.validation_loss(pred, x0, noise, t))
            self.log(f"val/loss_t{t_value}", losses[-1], sync_dist=True)
            if self.cfg.model.mask_conditioning:
                pred = self.ema(self.objective.network_input(x_t, t), t, **self.conditions(batch, mask_drop=False))
                given.append(self.objective.validation_loss(pred, x0, noise, t))
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True)
        if given:
            self.log("val/loss_given_mask", torch.stack(given).mean(), sync_dist=True)

    # ---------------------------------------------------------------------------------- data
    def _rank(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self):
        from ..data.dataset import SliceDataset

        dataset = SliceDataset(self.cache, "train", self.cfg.data, train=True)
        weights = dataset.sample_weights() if self.cfg.data.lesion_oversample != 1.0 else None
        rank, world = self._rank()
        sampler = EpochSampler(len(dataset), self.cfg.train.batch_size, self.cfg.train.seed, rank, world, weights)
        sampler.resume(*self.position)
        return torch.utils.data.DataLoader(
            SeededItems(dataset), batch_size=self.cfg.train.batch_size, sampler=sampler,
            num_workers=self.cfg.data.num_workers, persistent_workers=self.cfg.data.num_workers > 0)

    def val_dataloader(self):
        from ..data.dataset import SliceDataset

        dataset = SliceDataset(self.cache, "val", self.cfg.data, train=False)
        limit = self.cfg.train.val_max_samples
        if 0 < limit < len(dataset):  # a fixed subset spread over subjects and z: same every epoch
            dataset = torch.utils.data.Subset(dataset, np.unique(np.linspace(0, len(dataset) - 1, limit).round()
                                                                 .astype(int)).tolist())
        rank, world = self._rank()
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=False, drop_last=False)
        return torch.utils.data.DataLoader(dataset, batch_size=self.cfg.train.batch_size, sampler=sampler,
                                           num_workers=self.cfg.data.num_workers)

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Everything jsddpm needs besides Lightning's state, as plain containers."""
        checkpoint["jsddpm"] = {
            "format": CHECKPOINT_FORMAT,
            "config": to_container(self.cfg),
            "priors": self.priors,
            "classes": self.classes,
            # the cache's voxel spacing (x, y, z) in mm, plain floats (None for image folders): NIfTI export
            "spacing_mm": None if self.cache is None else self.cache.stats.get("spacing_mm"),
            # which cache trained it (content, not path): resume, generation and export compare it
            "cache_fingerprint": None if self.cache is None else self.cache.fingerprint,
            "sampler": {"seed": int(self.cfg.train.seed), "epoch": int(self.position[0]),
                        "batches_done": int(self.position[1])},
            "rng": rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        record = checkpoint["jsddpm"]
        self.position = (record["sampler"]["epoch"], record["sampler"]["batches_done"])
        if self.priors is None and record.get("priors") is not None:
            self.priors = record["priors"]
        set_rng_states(record["rng"])
