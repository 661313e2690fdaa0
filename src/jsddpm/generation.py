"""Checkpoint -> synthetic set: spec of counts per (z-bin, class), batched deterministic sampling,
samples.npz, PNG grids, optional NIfTI.

Notebook use::

    from jsddpm.generation import load_checkpoint, model_from_checkpoint, sample_conditions
    ckpt = load_checkpoint("runs/train/checkpoints/best.ckpt")
    net, cfg = model_from_checkpoint(ckpt)                       # EMA weights by default
    images = sample_conditions(net, cfg, ckpt, zbins=[5, 5], labels=[0, 1], indices=[0, 0])

Every sample's noise comes from its own generator seeded by (sample.seed, z-bin, class, index), so a
sample is the same whatever the batch size, the order of the spec or the GPU it was drawn on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError


# ------------------------------------------------------------------------------- checkpoint
def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, loaded with weights_only=True (plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; give --ckpt a .ckpt file written by jsddpm train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint ({first[:120]}); "
                        "give a .ckpt written by jsddpm train") from None
    if not isinstance(ckpt, dict) or "jsddpm" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a jsddpm training checkpoint (no 'jsddpm' record); "
                        "give a .ckpt written by jsddpm train")
    return ckpt


def config_from_checkpoint(ckpt: dict) -> Any:
    from .config import from_container

    return from_container(ckpt["jsddpm"]["config"])


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
                        f"({str(exc).splitlines()[0][:120]}); was it written by another jsddpm version?") from None
    return net.to(device).eval(), cfg


# ------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class Condition:
    zbin: int
    label: int
    count: int


def _label_index(value, classes: list[str], num_classes: int, where: str) -> int:
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < max(num_classes, 1):
        raise UserError(f"{where}: label {value!r} is not a class index in [0, {max(num_classes, 1)}) "
                        f"or a class name ({', '.join(classes) or 'none'}); fix the spec")
    return value


def _int_field(entry: dict, key: str, lo: int, hi: int | None, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value >= hi):
        bound = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise UserError(f"{where}: '{key}' must be an integer {bound}, got {value!r}; fix the spec")
    return value


def parse_spec(spec: Any, n_zbins: int, num_classes: int, classes: list[str] | None = None,
               default_count: int = 4, where: str = "spec") -> list[Condition]:
    """Counts per (z-bin, class) from a spec, in a canonical order (z-bin, then class).

    Accepted forms (JSON):
      - None: `default_count` for every (z-bin, class);
      - detailed: [{"zbin": 3, "label": 1, "count": 10}, ...] or {"conditions": [...]};
      - compact: {"count": 4, "zbins": [..], "labels": [..], "overrides": [{"zbin": 3, "count": 0}, ...]}
        where zbins / labels default to all, and an override without "zbin" (or "label") applies to
        every z-bin (or class). Labels may be class names.
    """
    classes = list(classes or [])
    n_labels = max(num_classes, 1)
    if spec is None:
        spec = {"count": default_count}
    if isinstance(spec, list):
        spec = {"conditions": spec}
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a JSON object or list; see the README's spec format")
    unknown = set(spec) - {"conditions", "count", "zbins", "labels", "overrides"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; use conditions, or count / zbins / "
                        "labels / overrides")
    counts: dict[tuple[int, int], int] = {}
    if "conditions" in spec:
        for entry in spec["conditions"]:
            if not isinstance(entry, dict):
                raise UserError(f"{where}: each condition must be an object with zbin, label, count")
            key = (_int_field(entry, "zbin", 0, n_zbins, where),
                   _label_index(entry.get("label", 0), classes, num_classes, where))
            counts[key] = counts.get(key, 0) + _int_field(entry, "count", 0, None, where)
    else:
        count = _int_field(spec, "count", 0, None, where) if "count" in spec else default_count
        zbins = spec.get("zbins", list(range(n_zbins)))
        labels = [_label_index(v, classes, num_classes, where) for v in spec.get("labels", range(n_labels))]
        for z in zbins:
            _int_field({"zbin": z}, "zbin", 0, n_zbins, where)
            for c in labels:
                counts[(z, c)] = count
        for entry in spec.get("overrides", []):
            if not isinstance(entry, dict) or "count" not in entry:
                raise UserError(f"{where}: each override needs a count (and optionally zbin, label)")
            n = _int_field(entry, "count", 0, None, where)
            zs = [_int_field(entry, "zbin", 0, n_zbins, where)] if "zbin" in entry else range(n_zbins)
            cs = [_label_index(entry["label"], classes, num_classes, where)] if "label" in entry else range(n_labels)
            for z in zs:
                for c in cs:
                    counts[(z, c)] = n
    return [Condition(z, c, n) for (z, c), n in sorted(counts.items()) if n > 0]


def read_spec(path: str | Path | None) -> Any:
    if path is None:
        return None
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: spec file not found; give --spec a JSON file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix the file") from None


def expand(conditions: list[Condition]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zbin, label, index within the condition) vectors, one entry per sample."""
    rows = [(c.zbin, c.label, i) for c in conditions for i in range(c.count)]
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def sample_seeds(seed: int, zbins, labels, indices) -> np.ndarray:
    """The per-sample noise seed: a pure function of (seed, z-bin, class, index)."""
    from .training.loaders import derive_seed

    return np.array([derive_seed(seed, z, c, i) for z, c, i in zip(zbins, labels, indices)], dtype=np.int64)


# ---------------------------------------------------------------------------------- sampling
def _priors_tensor(ckpt: dict) -> torch.Tensor | None:
    priors = ckpt["jsddpm"].get("priors")
    return None if priors is None else torch.as_tensor(priors, dtype=torch.float32)


@torch.no_grad()
def sample_batch(net, cfg, zbins, labels, seeds, priors: torch.Tensor | None = None,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """One batch of samples (B, C, H, W) in [-1, 1] for the given conditions and per-sample seeds.

    z is conditioned on the z-bin centre (b + 0.5) / n_zbins; the prior map is the z-bin's.
    """
    from .diffusion import ConditionedDenoiser, NoiseSchedule, sample
    from .model import data_channels

    device = torch.device(device)
    zbins_t = torch.as_tensor(np.asarray(zbins), dtype=torch.long)
    n_zbins = int(cfg.data.n_zbins)
    conditions = {}
    if cfg.model.num_classes > 0:
        conditions["label"] = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    if cfg.model.z_conditioning:
        conditions["z"] = ((zbins_t.float() + 0.5) / n_zbins).to(device)
    if cfg.model.prior != "none":
        if priors is None:
            raise UserError("checkpoint has no prior maps but model.prior is set; retrain with this version")
        conditions["prior"] = priors[zbins_t].unsqueeze(1).to(device)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    size = int(cfg.data.image_size)
    s = cfg.sample
    return sample(
        ConditionedDenoiser(net, **conditions), (len(seeds), data_channels(cfg), size, size),
        NoiseSchedule(cfg.diffusion.schedule, cfg.diffusion.timesteps),
        prediction_type=cfg.diffusion.prediction_type, sampler=s.sampler, steps=int(s.steps), eta=float(s.eta),
        generator=generators, clip_x0=bool(cfg.diffusion.clip_x0),
        self_conditioning=float(cfg.diffusion.self_conditioning_prob) > 0,
        guidance_scale=float(s.guidance_scale), device=device,
    )


def postprocess(images: torch.Tensor, joint_mask: bool) -> np.ndarray:
    """float32 numpy in [-1, 1], the mask channel (last) thresholded at 0 to {-1, +1}."""
    out = images.detach().float().clamp(-1, 1).cpu().numpy()
    if joint_mask:
        out[:, -1] = np.where(out[:, -1] > 0, 1.0, -1.0)
    return out.astype(np.float32)


def sample_conditions(net, cfg, ckpt: dict, zbins, labels, indices, device: str | torch.device = "cpu",
                      batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """Samples for the given (z-bin, class, index) triples, in that order, in batches."""
    seeds = sample_seeds(int(cfg.sample.seed), zbins, labels, indices)
    priors = _priors_tensor(ckpt)
    batch_size = int(batch_size or cfg.sample.batch_size)
    out = []
    for start in range(0, len(seeds), batch_size):
        sl = slice(start, start + batch_size)
        images = sample_batch(net, cfg, zbins[sl], labels[sl], seeds[sl], priors, device)
        out.append(postprocess(images, bool(cfg.model.joint_mask)))
        if progress:
            print(f"generate: {min(start + batch_size, len(seeds))}/{len(seeds)} samples", flush=True)
    if not out:
        size = int(cfg.data.image_size)
        from .model import data_channels

        return np.zeros((0, data_channels(cfg), size, size), np.float32)
    return np.concatenate(out)


def _shard_worker(rank: int, ckpt_path: str, cfg_dict: dict, rows: np.ndarray, devices: list[str],
                  tmp: str) -> None:
    """One GPU's share (every len(devices)-th sample); results go to tmp/shard_{rank}.npy."""
    from .config import from_container

    cfg = from_container(cfg_dict)
    ckpt = load_checkpoint(ckpt_path)
    net, _ = model_from_checkpoint(ckpt, bool(cfg.sample.use_ema), devices[rank], cfg=cfg)
    mine = rows[rank::len(devices)]
    images = sample_conditions(net, cfg, ckpt, mine[:, 0], mine[:, 1], mine[:, 2], devices[rank])
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


def sample_sharded(ckpt_path: str | Path, ckpt: dict, cfg, zbins, labels, indices,
                   devices: list[str]) -> np.ndarray:
    """Samples in the given order, drawn on one device or split across several (one process each)."""
    if len(devices) <= 1 or len(zbins) < 2:
        net, _ = model_from_checkpoint(ckpt, bool(cfg.sample.use_ema), devices[0], cfg=cfg)
        return sample_conditions(net, cfg, ckpt, zbins, labels, indices, devices[0], progress=True)
    import tempfile

    import torch.multiprocessing as mp

    from .config import to_container

    rows = np.stack([zbins, labels, indices], axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_shard_worker, args=(str(ckpt_path), to_container(cfg), rows, devices, tmp),
                 nprocs=len(devices), join=True)
        shards = [np.load(Path(tmp) / f"shard_{r}.npy") for r in range(len(devices))]
    out = np.empty((len(rows), *shards[0].shape[1:]), np.float32)
    for r, shard in enumerate(shards):
        out[r::len(devices)] = shard
    return out


# ------------------------------------------------------------------------------------ figures
def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def triplet_grid(images: np.ndarray, joint_mask: bool, ncols: int = 4) -> np.ndarray:
    """RGB uint8 grid, one tile per sample: image | mask | overlay (mask in red over the image).

    Image-only samples get one panel each. `images` is (N, C, H, W) in [-1, 1].
    """
    n, c, h, w = images.shape
    image_channels = c - 1 if joint_mask else c
    img = images[:, :image_channels]
    img = np.repeat(img, 3, axis=1) if image_channels == 1 else img
    img_rgb = to_uint8(img.transpose(0, 2, 3, 1))
    panels = [img_rgb]
    if joint_mask:
        mask = images[:, -1] > 0
        mask_rgb = np.repeat(np.where(mask, 255, 0).astype(np.uint8)[..., None], 3, axis=-1)
        overlay = img_rgb.copy()
        overlay[mask] = (0.5 * overlay[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
        panels += [mask_rgb, overlay]
    gap = 2
    tile_w = len(panels) * w + (len(panels) - 1) * gap
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    grid = np.full((nrows * (h + gap * 2), ncols * (tile_w + gap * 4), 3), 255, np.uint8)
    for k in range(n):
        r, col = divmod(k, ncols)
        y, x = r * (h + gap * 2), col * (tile_w + gap * 4)
        for p, panel in enumerate(panels):
            x0 = x + p * (w + gap)
            grid[y:y + h, x0:x0 + w] = panel[k]
    return grid


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    import io as _io

    from PIL import Image

    from .io import atomic_write_bytes

    buf = _io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_grids(folder: Path, images: np.ndarray, zbins: np.ndarray, labels: np.ndarray, joint_mask: bool,
                classes: list[str], per_grid: int = 32) -> None:
    """One PNG per class: up to `per_grid` samples spread over the z-bins, in z order."""
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(zbins[idx], kind="stable")]
        if len(idx) > per_grid:
            idx = idx[np.linspace(0, len(idx) - 1, per_grid).round().astype(int)]
        name = classes[c] if c < len(classes) else str(c)
        save_png(folder / f"grid_{name}.png", triplet_grid(images[idx], joint_mask))


def write_nifti(folder: Path, images: np.ndarray, joint_mask: bool) -> None:
    """Stacks of the samples as NIfTI: images (H, W, N[, 3]) float32 and masks (H, W, N) uint8 {0, 1}."""
    import nibabel as nib

    from .io import atomic_write_bytes

    image_channels = images.shape[1] - (1 if joint_mask else 0)
    img = images[:, :image_channels].transpose(2, 3, 0, 1)  # H, W, N, C
    img = img[..., 0] if image_channels == 1 else img
    outputs = {"images.nii.gz": nib.Nifti1Image(np.ascontiguousarray(img, np.float32), np.eye(4))}
    if joint_mask:
        mask = (images[:, -1] > 0).astype(np.uint8).transpose(1, 2, 0)
        outputs["masks.nii.gz"] = nib.Nifti1Image(np.ascontiguousarray(mask), np.eye(4))
    for name, nii in outputs.items():
        atomic_write_bytes(folder / name, nii.to_bytes())


# ---------------------------------------------------------------------------------- the stage
def resolve_generation_config(ckpt: dict, config_path: str | None = None, overrides=()) -> Any:
    """The training config stored in the checkpoint, with the `sample` section of `config_path` (when
    given) and `sample.*` overrides on top. The network and its diffusion maths stay the checkpoint's,
    so the saved config.yaml records the factors (prediction type, loss) that made these samples."""
    from omegaconf import OmegaConf

    from .config import load_config, validate

    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("sample.")]
    if bad:
        raise UserError(f"override '{bad[0]}': generate takes only sample.* overrides "
                        "(the model and diffusion settings come from the checkpoint)")
    load_config(None, list(overrides))  # key names and types checked against the schema
    cfg = config_from_checkpoint(ckpt)
    if config_path is not None:
        cfg.sample = load_config(config_path).sample
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    where = config_path or "command-line overrides"
    validate(cfg, where)
    if cfg.sample.n_per_condition < 0 or cfg.sample.guidance_scale < 0:
        raise UserError(f"{where}: sample.n_per_condition and sample.guidance_scale must be >= 0")
    return cfg


def generate(ckpt_path: str | Path, out: str | Path, spec: Any = None, config_path: str | None = None,
             overrides=(), overwrite: bool = False) -> Path:
    """The `jsddpm generate` stage. Returns the output folder."""
    import io as _io

    from .io import atomic_dir, atomic_write_bytes, write_run_record

    ckpt = load_checkpoint(ckpt_path)
    cfg = resolve_generation_config(ckpt, config_path, overrides)
    classes = list(ckpt["jsddpm"].get("classes") or [])
    conditions = parse_spec(spec, int(cfg.data.n_zbins), int(cfg.model.num_classes), classes,
                            int(cfg.sample.n_per_condition))
    zbins, labels, indices = expand(conditions)
    if len(zbins) == 0:
        raise UserError("the spec asks for no samples; give some counts > 0")
    devices = sample_devices(str(cfg.sample.device))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        images = sample_sharded(ckpt_path, ckpt, cfg, zbins, labels, indices, devices)
        buf = _io.BytesIO()
        np.savez(buf, images=images, zbin=zbins, label=labels, index=indices,
                 seed=sample_seeds(int(cfg.sample.seed), zbins, labels, indices),
                 z=((zbins + 0.5) / int(cfg.data.n_zbins)).astype(np.float32))
        atomic_write_bytes(tmp / "samples.npz", buf.getvalue())
        write_grids(tmp, images, zbins, labels, bool(cfg.model.joint_mask), classes)
        if cfg.sample.export_nifti:
            write_nifti(tmp, images, bool(cfg.model.joint_mask))
        write_run_record(tmp, cfg)
    print(f"generate: {len(images)} samples -> {Path(out) / 'samples.npz'}")
    return Path(out)
