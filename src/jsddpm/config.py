"""The one config schema: OmegaConf structured dataclasses, YAML presets, `key=value` overrides.

Every stage reads a `Config`. Unknown keys and wrong types end in one line naming the key and the
file. `load_config(path, overrides)` is the only entry point; `to_yaml(cfg)` writes what was used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

PRESET_DIR = Path(__file__).parent / "configs"


# --------------------------------------------------------------------------------------- data
@dataclass
class AugmentConfig:
    enabled: bool = True
    crop_scale: float = 1.1  # resize to size * crop_scale, then random-crop back to size (1.0 = off)
    hflip: bool = True
    rotate_deg: float = 5.0  # uniform in [-rotate_deg, rotate_deg]
    brightness: float = 0.05  # additive jitter in [-1, 1] intensity units
    contrast: float = 0.05  # multiplicative jitter around 1


@dataclass
class DataConfig:
    cache_dir: str = ""  # slice cache read by train / generate / diagnose
    image_size: int = 64  # target in-plane size: 40, 64, 96, 128, 160 or 256
    spacing_mm: list[float] = field(default_factory=lambda: [3.0, 3.0, 3.0])  # target voxel spacing (RAS)
    z_range: str = "auto"  # "auto" (brain extent, trimmed) or "lo:hi" slice indices after resampling
    z_trim: float = 0.1  # fraction of the brain's axial extent trimmed at each end with z_range=auto
    min_brain_fraction: float = 0.05  # drop slices whose brain area is below this fraction of the image
    n_zbins: int = 30
    clip_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    mask_threshold: float | None = None  # binarise non-{0,1} masks at this value instead of failing
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train/val/test
    n_folds: int = 5  # k-fold assignment over train+val subjects
    seed: int = 42
    # image folders: resize each file when the dataset reads it (True) or once into the cache (False)
    resize_on_the_fly: bool = False
    image_root: str = ""  # original image folder, used with resize_on_the_fly
    lesion_oversample: float = 1.0  # sampling weight of lesion slices relative to others (1 = none)
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# -------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    image_channels: int = 1  # 1 (grayscale) or 3 (RGB)
    joint_mask: bool = True  # add the lesion-mask channel: the model learns p(image, mask | ...)
    base_channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    num_res_blocks: int = 1
    attention_resolutions: list[int] = field(default_factory=lambda: [16])  # feature-map sizes with attention
    attention_head_dim: int = 32
    dropout: float = 0.0
    norm_groups: int = 8
    upsample: str = "bilinear"  # bilinear | bicubic | nearest | transposed
    num_classes: int = 2  # pathology classes; 0 disables class conditioning
    z_conditioning: bool = True  # sinusoidal embedding of the continuous normalised z position
    prior: str = "none"  # none | concat | cross_attention (the cache's per-z-bin anatomical prior)
    prior_attention_resolutions: list[int] = field(default_factory=lambda: [16, 8])
    prior_tokens: int = 16  # tokens produced by the prior encoder for cross-attention
    prior_channels: int = 32


# ---------------------------------------------------------------------------------- diffusion
@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # linear | cosine | quadratic | sigmoid
    timesteps: int = 1000
    prediction_type: str = "sample"  # epsilon | sample (x0) | v
    self_conditioning_prob: float = 0.0  # probability of a self-conditioned training step
    condition_dropout: float = 0.1  # classifier-free guidance: probability of the null condition
    clip_x0: bool = True


@dataclass
class LossConfig:
    p: float = 1.5  # Lp norm of the regression loss on the configured target
    channel_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])  # image, mask
    lesion_weight: float = 1.0  # weight of lesion pixels (mask = 1) in the spatial loss
    ffl_weight: float = 0.0  # focal frequency loss on predicted vs true x0; 0 disables it
    ffl_alpha: float = 1.0
    ffl_patch_factor: int = 1
    ffl_log_weight: bool = False
    uncertainty_weighting: bool = False  # Kendall weighting of the spatial and frequency groups
    uncertainty_init: list[float] = field(default_factory=lambda: [0.0, 1.0])  # initial log variances
    min_snr_gamma: float | None = None  # min-SNR-gamma timestep weighting; None disables it


# ----------------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    max_epochs: int = 500
    max_steps: int = -1  # -1: no step limit
    max_minutes: float | None = None  # wall-clock budget for the fit (the demo uses it)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (never switched silently)
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    val_every_n_epochs: int = 1
    val_timestep_buckets: int = 5
    patience: int = 25  # early stopping on the EMA validation loss; 0 disables it
    sample_every_n_epochs: int = 10  # sample grid PNG; 0 disables it
    sample_grid_steps: int = 10
    log_every_n_steps: int = 10
    seed: int = 42
    resume: str = ""  # "" (fresh), "auto" (last.ckpt in out_dir if present) or a checkpoint path


# ----------------------------------------------------------------------------------- sampling
@dataclass
class SampleConfig:
    sampler: str = "dpmpp_2m"  # ddpm | ddim | dpmpp_2m
    steps: int = 50
    eta: float = 0.0
    guidance_scale: float = 1.0
    batch_size: int = 64
    seed: int = 0
    n_per_condition: int = 4  # without a spec file: samples per (z-bin, class)
    use_ema: bool = True
    export_nifti: bool = False


# -------------------------------------------------------------------------------- diagnostics
@dataclass
class DiagnosticsConfig:
    real_split: str = "test"  # split of a real slice cache used as the real set
    patch_size: int = 96  # lesion-centred patches
    n_bootstrap: int = 200
    n_null_repeats: int = 10  # real-vs-real half splits
    fdr_alpha: float = 0.05
    glcm_levels: int = 64
    glcm_distances: list[int] = field(default_factory=lambda: [1, 2, 4])
    wavelet: str = "db4"
    n_spectral_bands: int = 5
    only: list[str] = field(default_factory=list)  # families to run (empty = all)
    skip: list[str] = field(default_factory=list)
    classifier_folds: int = 5
    classifier_epochs: int = 10
    classifier_permutations: int = 1000
    feature_extractor: str = "builtin"  # builtin (no pretrained weights) or a path to local weights
    seed: int = 0


# ------------------------------------------------------------------------------------- root
@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)


def resolve_preset(path: str | Path) -> Path:
    """A config path, or the name of a preset shipped in the package (`demo_cpu`, `baseline`, ...)."""
    p = Path(path)
    if p.exists():
        return p
    for candidate in (PRESET_DIR / f"{path}.yaml", PRESET_DIR / str(path)):
        if candidate.exists():
            return candidate
    names = ", ".join(sorted(q.stem for q in PRESET_DIR.glob("*.yaml")))
    raise UserError(f"{path}: config file not found; give a YAML path or a preset name ({names})")


def _one_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Schema defaults <- YAML file (a path or a preset name) <- `key=value` overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.structured(Config)
    if path:
        src = resolve_preset(path)
        try:
            loaded = OmegaConf.load(src)
        except Exception as exc:  # YAML syntax errors
            raise UserError(f"{src}: not valid YAML ({_one_line(exc)}); fix the file") from None
        if loaded is None:
            loaded = OmegaConf.create({})
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as exc:
            raise UserError(_config_error(exc, str(src))) from None
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}': expected key=value, e.g. train.lr=3e-4")
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as exc:
            raise UserError(_config_error(exc, "command-line overrides")) from None
    validate(cfg, str(path) if path else "defaults")
    return cfg


def _config_error(exc: Exception, where: str) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = _one_line(exc)
    if "not in" in msg or "Key '" in msg and "not" in msg:
        return f"{where}: unknown config key '{key}'; check its spelling against the README's configuration reference"
    return f"{where}: bad value for '{key}': {msg}"


_CHOICES = {
    "diffusion.schedule": ("linear", "cosine", "quadratic", "sigmoid"),
    "diffusion.prediction_type": ("epsilon", "sample", "v"),
    "model.upsample": ("bilinear", "bicubic", "nearest", "transposed"),
    "model.prior": ("none", "concat", "cross_attention"),
    "sample.sampler": ("ddpm", "ddim", "dpmpp_2m"),
    "train.precision": ("32", "bf16-mixed", "16-mixed", "64"),
    "diagnostics.real_split": ("train", "val", "test", "all"),
}


def validate(cfg: Any, where: str) -> None:
    """Value checks the type system cannot express; one line each."""
    from omegaconf import OmegaConf

    for key, choices in _CHOICES.items():
        value = str(OmegaConf.select(cfg, key))
        if value not in choices:
            raise UserError(f"{where}: {key}={value} is not one of {', '.join(choices)}")
    checks = [
        (cfg.data.image_size >= 8, "data.image_size must be at least 8"),
        (cfg.data.n_zbins >= 1, "data.n_zbins must be at least 1"),
        (len(cfg.data.split_fractions) == 3 and all(f >= 0 for f in cfg.data.split_fractions)
         and abs(sum(cfg.data.split_fractions) - 1.0) < 1e-6,
         "data.split_fractions must be three non-negative numbers summing to 1"),
        (len(cfg.data.clip_percentiles) == 2
         and 0 <= cfg.data.clip_percentiles[0] < cfg.data.clip_percentiles[1] <= 100,
         "data.clip_percentiles must be [low, high] with 0 <= low < high <= 100"),
        (len(cfg.data.spacing_mm) == 3 and all(s > 0 for s in cfg.data.spacing_mm),
         "data.spacing_mm must be three positive numbers"),
        (cfg.model.image_channels in (1, 3), "model.image_channels must be 1 or 3"),
        (len(cfg.model.channel_mult) >= 1, "model.channel_mult must list at least one level"),
        (cfg.diffusion.timesteps >= 2, "diffusion.timesteps must be at least 2"),
        (0.0 <= cfg.diffusion.self_conditioning_prob <= 1.0, "diffusion.self_conditioning_prob must be in [0, 1]"),
        (0.0 <= cfg.diffusion.condition_dropout < 1.0, "diffusion.condition_dropout must be in [0, 1)"),
        (cfg.loss.p > 0, "loss.p must be > 0"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
        (cfg.sample.steps >= 1, "sample.steps must be at least 1"),
        (cfg.sample.eta >= 0, "sample.eta must be >= 0"),
        (cfg.sample.batch_size >= 1, "sample.batch_size must be at least 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{where}: {msg}")


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def to_container(cfg: Any) -> dict:
    """Plain dicts/lists, e.g. for a checkpoint that must load with torch.load(weights_only=True)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def from_container(data: dict) -> Any:
    """Inverse of `to_container`, validated against the schema."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        raise UserError(_config_error(exc, "stored config")) from None
    validate(cfg, "stored config")
    return cfg
