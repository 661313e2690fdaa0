"""A training checkpoint read back: `Checkpoint.load(path)` -> its config, weights, data and abilities.

Below both `training/` and `generation/`: training resumes from these files and generation samples
from them, and neither imports the other. Checkpoints hold plain containers only (see
docs/internals.md), so they load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError, first_line

# data.* keys a resumed run may change: where files are (the cache is compared by content, its
# fingerprint, so a copied or renamed cache resumes) and how many processes load batches (data order
# and augmentation are keyed by seed, epoch and position, whatever the worker count)
RESUME_FREE_DATA_KEYS = ("cache_dir", "image_root", "num_workers")
RESUME_SECTIONS = ("data", "model", "diffusion", "loss")  # what a resumed run must share with its start


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or Inf."""
    return [k for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


class Checkpoint:
    """What `jsddpm train` wrote, read back (plain containers only).

    - `path`, `global_step`, `state_dict` (the network `net.*`, its EMA `ema.module.*`, the objective's
      `objective.*`), `record` (the raw `jsddpm` record, see docs/internals.md);
    - `config`: the training config, validated against today's schema (keys added since take their
      defaults). Shared: merge changes into a new config (`OmegaConf.merge`), do not assign into it;
    - the data it was trained on: `priors` ((n_zbins, H, W) float32 tensor or None), `classes`,
      `cache_fingerprint` (None before checkpoints recorded it), `spacing_mm`;
    - what it can draw: `joint` (image + mask), `image_only`, `mask_conditioned` (an image for a given mask);
    - `model(use_ema=True, device="cpu")`: the network in eval mode;
    - `check_resume(cfg, cache_fingerprint)`: refuses to continue the run under other settings or data.
    """

    def __init__(self, path: str | Path, record: dict, state_dict: dict, global_step: int | None = None):
        self.path = Path(path)
        self.record = record
        self.state_dict = state_dict
        self.global_step = global_step
        priors = record.get("priors")
        self.priors = None if priors is None else torch.as_tensor(np.asarray(priors), dtype=torch.float32)
        self.classes = list(record.get("classes") or [])
        self.cache_fingerprint = record.get("cache_fingerprint")

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read and check a .ckpt: readable with weights_only=True, a jsddpm record with a config that
        today's schema accepts, finite weights. Lightning's optimiser and loop states are dropped
        (training resumes through Lightning)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: checkpoint not found; give --ckpt a .ckpt file written by jsddpm train")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"{path}: not a readable checkpoint ({first_line(exc, 120)}); "
                            "give a .ckpt written by jsddpm train") from None
        if (not isinstance(raw, dict) or not isinstance(raw.get("jsddpm"), dict)
                or not isinstance(raw["jsddpm"].get("config"), dict) or not isinstance(raw.get("state_dict"), dict)):
            raise UserError(f"{path}: not a jsddpm training checkpoint (no 'jsddpm' record); "
                            "give a .ckpt written by jsddpm train")
        bad = non_finite_tensors(raw["state_dict"])
        if bad:
            raise UserError(f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf (e.g. {bad[0]}); "
                            "the training diverged: use an earlier checkpoint or retrain")
        ckpt = cls(path, raw["jsddpm"], raw["state_dict"], raw.get("global_step"))
        # the config is checked now; one that today's checks refuse fails when used instead, so that
        # resume can still compare the raw record
        with contextlib.suppress(UserError):
            _ = ckpt.config
        return ckpt

    # ------------------------------------------------------------------------------ the config
    @functools.cached_property
    def config(self) -> Any:
        from .config import from_container

        return from_container(self.record["config"])

    @property
    def joint(self) -> bool:
        """Draws image and lesion mask together (model.joint_mask)."""
        return bool(self.config.model.joint_mask) and not self.mask_conditioned

    @property
    def image_only(self) -> bool:
        """Draws images without masks."""
        return not self.config.model.joint_mask and not self.mask_conditioned

    @property
    def mask_conditioned(self) -> bool:
        """Draws an image for a given lesion mask (model.mask_conditioning)."""
        from omegaconf import OmegaConf

        return bool(OmegaConf.select(self.config, "model.mask_conditioning", default=False))

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel spacing (x, y, z) in mm of the training cache. Checkpoints record it since NIfTI export
        exists; older ones fall back to the spacing their data config asks for (what `jsddpm cache` used
        when cache and training shared the config)."""
        stored = self.record.get("spacing_mm")
        if stored is not None:
            return np.asarray(stored, dtype=np.float64)
        from .data.volumes import target_spacing

        return target_spacing(self.config.data)

    # ----------------------------------------------------------------------------- the network
    def model(self, use_ema: bool = True, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The network in eval mode on `device`: the EMA weights (what sampling should use) or the raw ones."""
        from .model import build_model

        net = build_model(self.config, verbose=False)
        prefix = "ema.module." if use_ema else "net."
        state = {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{self.path}: its weights do not fit the model built from its config "
                            f"({first_line(exc, 120)}); was it written by another jsddpm version?") from None
        return net.to(device).eval()

    # ------------------------------------------------------------------------------- resuming
    def check_resume(self, cfg: Any, cache_fingerprint: str | None = None) -> None:
        """Refuse, in one line naming the keys, to continue this run with other data.* (but the keys in
        RESUME_FREE_DATA_KEYS), model.*, diffusion.* or loss.* settings, or on a cache with other content
        (`cache_fingerprint`, compared when both are known). train.* (step limits, schedules ...) and the
        sampling sections may change."""
        from .config import from_container, to_container

        stored = self.record["config"]
        try:  # keys added since the checkpoint was written take their defaults, as the run that wrote it had
            stored = to_container(from_container(stored))
        except UserError:
            pass  # a stored value today's checks refuse: compare the raw sections
        now = to_container(cfg)
        free = {f"data.{k}" for k in RESUME_FREE_DATA_KEYS}
        changed = [key for section in RESUME_SECTIONS
                   for key in _changed_keys(stored.get(section) or {}, now.get(section) or {}, section)
                   if key not in free]
        other_cache = (cache_fingerprint is not None and self.cache_fingerprint is not None
                       and cache_fingerprint != self.cache_fingerprint)
        what = []
        if changed:
            sections = " and ".join(f"{s}.*" for s in dict.fromkeys(key.split(".")[0] for key in changed))
            what.append(f"written with different {sections} settings ({', '.join(changed)})")
        if other_cache:
            what.append(f"trained on another cache (data.cache_dir={now['data'].get('cache_dir')} is cache "
                        f"{cache_fingerprint}, the run's was {self.cache_fingerprint})")
        if what:
            raise UserError(f"{self.path}: {' and '.join(what)}; resume with the run's own settings and cache, "
                            "or start a new train.out_dir")


def _changed_keys(before: dict, after: dict, prefix: str) -> list[str]:
    """Dotted keys whose values differ between two nested dicts (lists compare whole)."""
    out = []
    for k in sorted(set(before) | set(after), key=str):
        a, b = before.get(k), after.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}.{k}")
        elif a != b:
            out.append(f"{prefix}.{k}")
    return out
