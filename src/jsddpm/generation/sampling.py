"""Drawing samples from a network: conditions of a batch, per-sample generators, batches, devices.

Every sample's noise comes from its own generator seeded by (sample.seed, z-bin, class, index), so a
sample is the same whatever the batch size, the order of the spec or the GPU it was drawn on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..draw import postprocess, sample_batch
from ..errors import UserError
from ..seeding import sample_seeds


def empty_samples(cfg) -> np.ndarray:
    from ..model import data_channels

    size = int(cfg.data.image_size)
    return np.zeros((0, data_channels(cfg), size, size), np.float32)


def sample_conditions(net, cfg, ckpt: Checkpoint, zbins, labels, indices, device: str | torch.device = "cpu",
                      batch_size: int | None = None, progress: bool = False, sources: np.ndarray | None = None,
                      seeds: np.ndarray | None = None, masks: np.ndarray | None = None) -> np.ndarray:
    """Samples of `net` (the checkpoint's network) for the given (z-bin, class, index) triples, in that
    order, in batches; with `sources` (one real slice per sample) SDEdit variations of them at
    sample.strength; with `masks` ((N, 1, H, W) in {-1, +1}, a mask-conditioned network) the images given
    those masks, which the results' mask channel holds exactly. `seeds` replace the samples' own.

    Raw values before postprocessing must be finite: a NaN image would otherwise pass as -1 after
    clamping, with a mask channel that looks valid.
    """
    seeds = sample_seeds(int(cfg.sample.seed), zbins, labels, indices) if seeds is None else seeds
    batch_size = int(batch_size or cfg.sample.batch_size)
    out = []
    for start in range(0, len(seeds), batch_size):
        sl = slice(start, start + batch_size)
        images = sample_batch(net, cfg, zbins[sl], labels[sl], seeds[sl], ckpt.priors, device,
                              source=None if sources is None else sources[sl],
                              mask=None if masks is None else masks[sl])
        check_finite(images, ckpt.path)
        out.append(postprocess(images, bool(cfg.model.joint_mask)))
        if progress:
            print(f"generate: {min(start + batch_size, len(seeds))}/{len(seeds)} samples", flush=True)
    return np.concatenate(out) if out else empty_samples(cfg)


class NonFiniteSamples(UserError):
    """The network produced NaN or Inf: the stage writes nothing; the message names the checkpoint."""

    def __init__(self, ckpt_path: str | Path):
        super().__init__(f"{ckpt_path}: sampling produced NaN or Inf values; nothing written "
                         "(check the checkpoint, or try sample.guidance_scale=1)")


def check_finite(images: torch.Tensor, ckpt_path: str | Path) -> None:
    if not torch.isfinite(images).all():
        raise NonFiniteSamples(ckpt_path)


def _shard_worker(rank: int, ckpt_path: str, cfg_dict: dict, rows: np.ndarray, devices: list[str],
                  tmp: str) -> None:
    """One GPU's share (every len(devices)-th sample); results go to tmp/shard_{rank}.npy. The optional
    per-sample inputs (sources, seeds, masks) are tmp/<name>.npy."""
    from ..config import from_container

    cfg = from_container(cfg_dict)
    ckpt = Checkpoint.load(ckpt_path)
    net = ckpt.model(bool(cfg.sample.use_ema), devices[rank])
    mine = rows[rank::len(devices)]
    inputs = {}
    for name in ("sources", "seeds", "masks"):
        path = Path(tmp) / f"{name}.npy"
        inputs[name] = np.array(np.load(path, mmap_mode="r")[rank::len(devices)]) if path.exists() else None
    images = sample_conditions(net, cfg, ckpt, mine[:, 0], mine[:, 1], mine[:, 2], devices[rank], **inputs)
    np.save(Path(tmp) / f"shard_{rank}.npy", images)


def sample_devices(setting: str) -> list[str]:
    """`sample.device`: auto = every visible GPU (else CPU), or one device name."""
    if setting != "auto":
        devices = [d.strip() for d in setting.split(",") if d.strip()]
        for d in devices:
            try:
                torch.device(d)
            except RuntimeError:
                raise UserError(f"sample.device={setting}: '{d}' is not a device; use auto, cpu, cuda:0 "
                                "or a comma-separated list") from None
        if not devices:
            raise UserError("sample.device is empty; use auto, cpu, cuda:0 or a comma-separated list")
        return devices
    n = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]


def sample_sharded(ckpt: Checkpoint, cfg, zbins, labels, indices, devices: list[str],
                   sources: np.ndarray | None = None, seeds: np.ndarray | None = None,
                   masks: np.ndarray | None = None) -> np.ndarray:
    """Samples in the given order, drawn on one device or split across several (one process each);
    `sources`, `seeds`, `masks` as in `sample_conditions`."""
    if len(devices) <= 1 or len(zbins) < 2:
        net = ckpt.model(bool(cfg.sample.use_ema), devices[0])
        return sample_conditions(net, cfg, ckpt, zbins, labels, indices, devices[0], progress=True,
                                 sources=sources, seeds=seeds, masks=masks)
    import tempfile

    import torch.multiprocessing as mp

    from ..config import to_container

    rows = np.stack([zbins, labels, indices], axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, value in (("sources", sources), ("seeds", seeds), ("masks", masks)):
            if value is not None:
                np.save(Path(tmp) / f"{name}.npy", value)
        try:
            mp.spawn(_shard_worker, args=(str(ckpt.path), to_container(cfg), rows, devices, tmp),
                     nprocs=len(devices), join=True)
        except mp.ProcessRaisedException as exc:  # a worker's one-line errors stay one line here
            if "NonFiniteSamples" in str(exc):
                raise NonFiniteSamples(ckpt.path) from None
            raise
        shards = [np.load(Path(tmp) / f"shard_{r}.npy") for r in range(len(devices))]
    out = np.empty((len(rows), *shards[0].shape[1:]), np.float32)
    for r, shard in enumerate(shards):
        out[r::len(devices)] = shard
    return out
