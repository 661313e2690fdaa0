"""The one config schema: OmegaConf structured dataclasses, YAML presets, `key=value` overrides.

Every stage reads a `Config`. Unknown keys and wrong types end in one line naming the key and the
file. `load_config(path, overrides)` is the only entry point; `to_yaml(cfg)` writes what was used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, first_line

PRESET_DIR = Path(__file__).parent / "configs"

# ------------------------------------------------------------------------------------ choices
# The values of each choice key, once, at the bottom of the stack: `validate` checks them and the code
# that implements them (diffusion/, model/, generation/, training/) imports them from here.
SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")  # diffusion.schedule
PREDICTION_TYPES = ("epsilon", "sample", "v", "edm")  # diffusion.prediction_type
T_SAMPLINGS = ("uniform", "lognormal")  # diffusion.t_sampling
UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest", "transposed")  # model.upsample
PRIOR_MODES = ("none", "concat", "cross_attention")  # model.prior
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")  # sample.sampler, inpaint.sampler
PRECISIONS = ("32", "bf16-mixed", "16-mixed", "64")  # train.precision
SPLITS = ("train", "val", "test", "all")  # a split of a slice cache, or all of it
SLICE_LABELS = ("lesion", "group")  # data.slice_label
MASK_SOURCES = ("bank", "generated")  # `--masks` of inpaint and generate: real lesion masks, or drawn by the model
# (generate --masks also takes a path: the user's own masks)


# --------------------------------------------------------------------------------------- data
@dataclass
class AugmentConfig:
    enabled: bool = True  # augment training slices (validation and diagnostics never are)
    # resize to size * crop_scale, then random-crop back to size (1.0 = off). Off by default, like rotation:
    # bilinear resampling low-passes every slice and the generator learns the smoothed images (1.1 and 5
    # degrees give the demo's own held-out slices a wavelet HH-1 ratio of 0.22 against themselves)
    crop_scale: float = 1.0
    hflip: bool = True  # random left-right flip (exact: no resampling)
    rotate_deg: float = 0.0  # uniform in [-rotate_deg, rotate_deg]; resamples bilinearly, like crop_scale
    brightness: float = 0.05  # additive jitter in [-1, 1] intensity units
    contrast: float = 0.05  # multiplicative jitter around 1


@dataclass
class DataConfig:
    cache_dir: str = ""  # slice cache read by train / generate / diagnose
    image_size: int = 64  # target in-plane size: 40, 64, 96, 128, 160 or 256
    spacing_mm: list[float] = field(default_factory=lambda: [3.0, 3.0, 3.0])  # target voxel spacing (RAS)
    # in-plane field of view: > 0 sets the in-plane spacing to fov_mm / image_size, so every size shows
    # the same anatomy (224 mm, a usual brain-MRI FOV, holds a whole adult brain); 0 uses spacing_mm's
    fov_mm: float = 224.0
    z_range: str = "auto"  # "auto" (brain extent, trimmed) or "lo:hi" slice indices after resampling
    z_trim: float = 0.1  # fraction of the brain's axial extent trimmed at each end with z_range=auto
    min_brain_fraction: float = 0.05  # drop slices whose brain area is below this fraction of the image
    n_zbins: int = 30  # axial position bins over each subject's kept z-range (conditioning and generation specs)
    clip_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])  # per-volume percentiles -> [-1, 1]
    mask_threshold: float | None = None  # binarise non-{0,1} masks at this value instead of failing
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train/val/test
    n_folds: int = 5  # k-fold assignment over train+val subjects
    seed: int = 42  # seed of the subject-level split and fold assignment
    # image folders: resize each file when the dataset reads it (True) or once into the cache (False)
    resize_on_the_fly: bool = False
    resize_images: bool = True  # image folders: resize to image_size; False keeps the files' size (all equal)
    image_root: str = ""  # original image folder, used with resize_on_the_fly
    lesion_oversample: float = 1.0  # sampling weight of lesion slices relative to others (1 = none)
    # class label of a volume slice: "lesion" (the slice's pathology: no_lesion / lesion, from its mask;
    # what a generator for segmentation augmentation is asked for) or "group" (the subject's manifest group)
    slice_label: str = "lesion"
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# -------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    image_channels: int = 1  # 1 (grayscale) or 3 (RGB)
    joint_mask: bool = True  # add the lesion-mask channel: the model learns p(image, mask | ...)
    base_channels: int = 32  # channels of the first level; level i has base_channels * channel_mult[i]
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])  # one entry per level (any length)
    num_res_blocks: int = 1  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: list[int] = field(default_factory=lambda: [16])  # feature-map sizes with attention
    attention_head_dim: int = 32  # channels per attention head
    dropout: float = 0.0  # inside residual blocks
    norm_groups: int = 8  # GroupNorm groups; must divide every level's channels
    upsample: str = "bilinear"  # bilinear | bicubic | nearest | transposed
    upsample_conv_first: bool = True  # 3x3 conv before the interpolation (4x fewer FLOPs); False: after it
    resblock_norm2: bool = True  # GroupNorm before each block's scale-shift; False: ~10% faster on CPU
    num_classes: int = 2  # pathology classes; 0 disables class conditioning
    z_conditioning: bool = True  # sinusoidal embedding of the continuous normalised z position
    prior: str = "none"  # none | concat | cross_attention (the cache's per-z-bin anatomical prior)
    prior_attention_resolutions: list[int] = field(default_factory=lambda: [16, 8])  # cross-attention sizes
    prior_tokens: int = 16  # tokens produced by the prior encoder for cross-attention (a square: 4, 9, 16...)
    prior_channels: int = 32  # width of the prior encoder and of its tokens
    # the clean lesion mask as one more input channel ({-1, +1}; 0 = withheld), withheld in training with
    # probability train.mask_drop: one network draws image + mask jointly or the image given a mask
    mask_conditioning: bool = False


# ---------------------------------------------------------------------------------- diffusion
@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # linear | cosine | quadratic | sigmoid
    timesteps: int = 1000  # T: training timesteps t = 0..T-1; samplers visit any N <= T of them
    prediction_type: str = "sample"  # epsilon | sample (x0) | v | edm (Karras et al. 2022 preconditioning)
    # edm: the data's scale in c_skip / c_out / c_in: its RMS, as the data are not centred (demo cache, [-1, 1]:
    # image 0.88, mask 1.00, both 0.94; EDM's 0.5 is the SD of centred natural images); 1 = v prediction
    sigma_data: float = 0.9
    t_sampling: str = "uniform"  # training timesteps: uniform over 0..T-1, or lognormal (ln sigma ~ N(p_mean, p_std^2))
    p_mean: float = -1.2  # t_sampling=lognormal: mean of ln sigma, sigma = sqrt((1 - abar) / abar)
    p_std: float = 1.2  # t_sampling=lognormal: standard deviation of ln sigma
    self_conditioning_prob: float = 0.0  # probability of a self-conditioned training step
    condition_dropout: float = 0.1  # classifier-free guidance: probability of the null condition
    clip_x0: bool = True  # clip the x0 estimate to [-1, 1] at every sampling step (and for self-conditioning)


@dataclass
class LossConfig:
    p: float = 1.5  # Lp norm of the regression loss on the configured target
    channel_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])  # image, mask (or one per channel)
    lesion_weight: float = 1.0  # weight of lesion pixels (mask = 1) in the spatial loss
    ffl_weight: float = 0.0  # focal frequency loss on predicted vs true x0; 0 disables it
    ffl_alpha: float = 1.0  # focal exponent of the spectrum weight |d|^alpha
    ffl_patch_factor: int = 1  # FFL on a patch_factor x patch_factor grid of patches (must divide the size)
    ffl_log_weight: bool = False  # spectrum weight log(1 + |d|^alpha) instead of |d|^alpha
    uncertainty_weighting: bool = False  # Kendall weighting of the spatial and frequency groups
    uncertainty_init: list[float] = field(default_factory=lambda: [0.0, 1.0])  # initial log variances: spatial, freq
    min_snr_gamma: float | None = None  # min-SNR-gamma timestep weighting (5 in the paper); None disables it


# ----------------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    out_dir: str = "runs/train"  # config.yaml, checkpoints/, logs/, tensorboard/, samples/
    batch_size: int = 16  # per process (DDP: the global batch is devices * nodes * batch_size)
    lr: float = 1e-3  # AdamW peak learning rate (after warmup; cosine decay to 10% at the last step)
    weight_decay: float = 0.01  # on Linear / Conv weights only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    warmup_steps: int = 100  # linear LR warmup
    max_epochs: int = 500  # epoch limit (an epoch = one pass over the train split, padded to whole batches)
    max_steps: int = -1  # -1: no step limit (the cosine then spans max_epochs)
    max_minutes: float | None = None  # wall-clock budget for the fit (the demo uses it)
    grad_clip: float = 1.0  # gradient norm clipping; 0 disables it
    ema_decay: float = 0.999  # EMA of all network weights, ramped as min(decay, (1 + n) / (10 + n))
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (never switched silently)
    accelerator: str = "auto"  # auto (GPU if visible, else CPU) | cpu | gpu (Lightning)
    devices: str = "auto"  # Lightning devices: auto, a count ("2") or ids ("0,1")
    num_nodes: int = 1  # nodes for multi-node DDP (SLURM is detected by Lightning)
    strategy: str = "auto"  # Lightning strategy: auto | ddp | ddp_spawn ...
    val_every_n_epochs: int = 1  # validation (and best.ckpt / early-stopping checks) every N epochs
    val_timestep_buckets: int = 5  # EMA validation loss at this many fixed timesteps, with fixed noise
    val_max_samples: int = 512  # validation slices, evenly spaced over the val split (0 = all)
    patience: int = 25  # early stopping on the EMA validation loss (in validations); 0 disables it
    sample_every_n_epochs: int = 10  # sample grid PNG; 0 disables it
    sample_grid_steps: int = 10  # DPM-Solver++ steps for the sample grid
    log_every_n_steps: int = 10  # CSV / TensorBoard logging interval
    seed: int = 42  # initial weights, data order, augmentation and per-step noise
    resume: str = ""  # "" (fresh), "auto" (last.ckpt in out_dir if present) or a checkpoint path
    ckpt_every_n_steps: int = 200  # also write last.ckpt every N steps (exact mid-epoch resume); 0 = epoch ends
    progress_bar: bool = True  # tqdm progress bar during fit (off for batch logs and tests)
    # torch intra-op threads per process; 0 = torch's default (one per core). On a CPU shared with other
    # jobs, 1 can be much faster: idle threads spin (measured 10x on a busy 2-core machine)
    cpu_threads: int = 0
    # model.mask_conditioning: probability that a sample's mask condition is withheld (joint image + mask
    # training); drawn independently of diffusion.condition_dropout, so both can be guided
    mask_drop: float = 0.5


# ----------------------------------------------------------------------------------- sampling
@dataclass
class SampleConfig:
    sampler: str = "dpmpp_2m"  # ddpm | ddim | dpmpp_2m
    steps: int = 50  # sampler steps (respaced from diffusion.timesteps)
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic, 1 = ancestral)
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = conditional model only
    batch_size: int = 64  # samples per forward batch (results do not depend on it)
    seed: int = 0  # each sample's noise is seeded from (seed, z-bin, class, index)
    n_per_condition: int = 4  # without a spec file: samples per (z-bin, class)
    use_ema: bool = True  # sample with the EMA weights (false: the raw trained weights)
    export_nifti: bool = False  # also write images.nii.gz / masks.nii.gz stacks (H, W, N)
    device: str = "auto"  # auto (every visible GPU, one process each; else CPU), cpu, cuda:0, or "cuda:0,cuda:1"
    # SDEdit: < 1 varies real slices (generate --source) noised to timestep round(strength (T - 1)) (0.5: t = 500
    # of 1000), then the sampler's steps below it (at least one); 1 = plain generation
    strength: float = 1.0
    # classifier-free guidance on a given mask (model.mask_conditioning): pred = A + s (B - A) + m (C - B), A
    # without class/z/prior and mask, B with them but no mask, C with all, s = guidance_scale; 1 = none
    mask_guidance: float = 1.0
    # generate --masks bank: each bank mask mirrored left-right at random and turned / shifted a little (up to
    # 15 degrees, 1/16 of the side) while it stays inside the z-bin's prior support; false = the bank mask as is
    mask_augment: bool = False
    # fidelity filter (generate, inpaint): keep only pairs whose Dice between their mask and the reference
    # segmenter's prediction on their image is >= this, redrawing the others (null = keep every pair)
    min_fidelity: float | None = None
    fidelity_tries: int = 4  # draws per requested pair at most; pairs still below min_fidelity are dropped (warning)
    score_fidelity: bool = False  # score every pair's fidelity (samples.npz, fidelity.csv) without filtering


@dataclass
class InpaintConfig:
    dilate_px: int = 3  # `jsddpm inpaint` generates the target mask dilated by this many pixels (the seam ring)
    resample: int = 9  # RePaint re-noising jumps per sampler step (each costs one more network call)
    placement_tries: int = 200  # random flips / rotations / shifts tried to fit a bank mask inside the brain and prior
    # sampler of inpainting, its own so that generation's can differ (benchmarks/inpaint_coupling_bench.py:
    # ddpm 100 steps x 9 jumps couples tighter, 0.885 vs 0.848, at 3x the calls); sample.eta applies when ddim
    sampler: str = "dpmpp_2m"
    steps: int = 30  # inpainting sampler steps (capped at diffusion.timesteps); calls = steps x (1 + resample)
    # a mask-conditioned checkpoint (model.mask_conditioning) is also given the target mask as its condition
    # (sample.mask_guidance applies). Off by default: on the demo (1,815 CPU steps, mask_drop 0.5) the
    # given-mask mode drew lesions at 0.31 of the real contrast, and its pairs alone trained a segmenter to
    # Dice 0.02, against 0.07 for the same network's joint mode (README, "Which synthetic pairs ...")
    mask_condition: bool = False
    # classifier-free guidance of inpainting (null = sample.guidance_scale): the lesion class pushed harder
    # under the mask. On the demo (resample 2) guidance 2 raised the lesion contrast from 0.56 to 0.79 of real
    guidance_scale: float | None = None
    # fidelity filter of inpainted pairs (null = sample.min_fidelity): keep a pair only when the reference
    # segmenter finds its lesion (Dice >= this), redrawing up to sample.fidelity_tries times. On the demo
    # 0.3 raised synthetic-only Dice from 0.35 to 0.45 and the lesion contrast from 0.51 to 0.99 of real
    min_fidelity: float | None = None


# -------------------------------------------------------------------------------- diagnostics
@dataclass
class DiagnosticsConfig:
    real_split: str = "test"  # split of a real slice cache used as the real set
    patch_size: int = 96  # lesion-centred patches
    n_bootstrap: int = 200  # bootstrap resamples for each metric's 95% CI
    n_null_repeats: int = 40  # real-vs-real null draws at the compared sizes (null SD error ~1/sqrt(2 x (n-1)))
    fdr_alpha: float = 0.05  # Benjamini-Hochberg false discovery rate of the per-pixel t-tests
    glcm_levels: int = 64  # GLCM grey levels: a fixed quantisation of [-1, 1], never per-image min-max
    glcm_distances: list[int] = field(default_factory=lambda: [1, 2, 4])  # GLCM distances, 4 angles each
    wavelet: str = "db4"  # PyWavelets wavelet of the wavelet-energy family
    n_spectral_bands: int = 5  # log-spaced frequency bands of band_power_ratio_1..N
    only: list[str] = field(default_factory=list)  # families to run (empty = all)
    skip: list[str] = field(default_factory=list)  # families to leave out
    classifier_folds: int = 5  # k of the real-vs-synthetic classifier's cross-fitting (subject-disjoint folds)
    classifier_epochs: int = 15  # training epochs of the classifier in each fold (one-cycle learning rate)
    classifier_permutations: int = 1000  # label permutations of the AUC's p-value
    feature_extractor: str = "builtin"  # builtin (no pretrained weights) or a path to local weights
    seed: int = 0  # seed of bootstraps, null splits and the classifier
    # metric families
    roi_threshold: float = -0.9  # head/brain ROI = pixels above this (then specks dropped, holes filled)
    roi_min_component: float = 0.002  # ROI specks smaller than this fraction of the image area are dropped
    wavelet_levels: int = 0  # wavelet levels (0 = the maximum valid for the image size; never beyond it)
    boundary_max_distance: int = 6  # boundary profiles span this many pixels each side of the lesion edge
    spatial_max_lag: int = 12  # radial autocorrelation lags 0..this (pixels) for the exponential fit
    pixel_max_side: int = 64  # per-pixel t-tests on block means bringing the longer side <= this (0 = full)
    intensity_bins: int = 512  # fixed histogram grid on [-1, 1] for Wasserstein / KS of pixel pools
    memorization_max_side: int = 40  # nearest-neighbour search on block means of at most this side
    feature_extractor_channels: int = 0  # channels a local TorchScript extractor wants (0 = as stored)
    structure_max_side: int = 64  # structure family's working grid: block means to this longer side (0 = native)
    # runner / classifier
    severity_z0: float = 2.0  # a severity component counts only beyond this many null SDs from the null level
    severity_scale: float = 1.0  # multiplies every severity component's magnitude scale E (1 = the documented E)
    zbin_min_samples: int = 8  # z-bins with fewer real or synthetic samples get no per-z-bin breakdown
    classifier_crop: int = 64  # random training crops (full resolution, keeps fingerprints); 0 = whole image
    classifier_batch_size: int = 32  # training batch (smaller on tiny sets: at least 8 steps per epoch)
    classifier_lr: float = 3e-3  # Adam learning rate of the classifier
    classifier_dither_step: float = 0.0  # intensity grid step for dithering; 0 = estimate from the real set, < 0 = none
    # networks trained per fold with different seeds; their per-image score ranks are averaged (the AUC of
    # one small CNN varies by ~0.1 between seeds on a few hundred images)
    classifier_repeats: int = 1
    # utility (`diagnose utility`, run-all family): split of the real cache the lesion segmenters train on
    # (they are scored on real_split)
    utility_train_split: str = "train"
    utility_seeds: int = 3  # segmenters per arm (seeds seed, seed + 1, ...); the same seeds in every arm
    # Adam steps per segmenter at most (the span of its cosine learning-rate decay); the weights kept are
    # those of the best validation Dice (early stopping: utility_patience)
    utility_steps: int = 600
    # steps between validation Dice evaluations (pooled over the validation subjects' lesion slices)
    utility_eval_every: int = 25
    # evaluations without a better validation Dice before a segmenter halts (never before half of
    # utility_steps, nor while its validation Dice is 0 or still rising: slow starters climb late); 0 = no
    # halting, every segmenter runs utility_steps and keeps its best validation checkpoint
    utility_patience: int = 8
    # share of the real training subjects with lesions held out (subject-disjoint) as the validation split
    utility_val_fraction: float = 0.2
    utility_batch_size: int = 16  # slices per step
    # peak Adam learning rate (cosine decay to 0 over utility_steps, after a short warm-up)
    utility_lr: float = 6e-3
    # channels per level of the segmentation UNet (multiples of 4)
    utility_widths: list[int] = field(default_factory=lambda: [8, 16, 32])
    utility_lesion_fraction: float = 0.5  # share of each batch drawn from lesion slices (when the arm has any)
    # training crops of this fraction of the image side (lesion draws keep a lesion inside); 1 = whole slices
    utility_crop: float = 0.5
    # processes training segmenters in parallel (one torch thread each); results do not depend on it
    utility_workers: int = 2
    utility_synthetic_ratio: float = 1.0  # synthetic slices added per real slice in the real_plus_synthetic arm
    # a ratio sweep: extra arms real_plus_synthetic_x<r> (and real_<p>pct_plus_synthetic_x<r>) with r synthetic
    # slices per real slice, e.g. [0.5, 2]
    utility_synthetic_ratios: list[float] = field(default_factory=list)
    # extra arms (with and without synthetic) on these fractions of the real training subjects, e.g. [0.25, 0.5]
    utility_real_fractions: list[float] = field(default_factory=list)
    # pairing (run-all family): folder of the reference lesion segmenter (trained on utility_train_split with
    # the utility_* settings): loaded from it when it holds the one of this cache and settings, else trained
    # and stored there; "" = the cache's own store (<cache>/segmenters/, or the user cache folder for a
    # read-only cache), where generation's fidelity filter keeps it too: both score with one segmenter
    segmenter_dir: str = ""


# ------------------------------------------------------------------------------------- root
@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
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
            raise UserError(f"{src}: not valid YAML ({first_line(exc)}); fix the file") from None
        if loaded is None:
            loaded = OmegaConf.create({})
        if not OmegaConf.is_dict(loaded):
            raise UserError(f"{src}: the top level is a list, not a mapping of sections (data:, model:, "
                            "train: ...); fix the file")
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
    where = str(path) if path else "defaults"
    try:
        OmegaConf.resolve(cfg)  # a missing ${...} interpolation fails here, not deep inside a stage
    except OmegaConfBaseException as exc:
        origin = "command-line overrides" if _override_keys(overrides) & {getattr(exc, "full_key", "")} else where
        raise UserError(_config_error(exc, origin)) from None
    validate(cfg, where, overrides)
    return cfg


def _override_keys(overrides) -> set[str]:
    return {item.split("=", 1)[0].strip().lstrip("+~") for item in overrides or ()}


def _config_error(exc: Exception, where: str) -> str:
    from omegaconf.errors import ConfigKeyError

    key = getattr(exc, "full_key", None) or "?"
    msg = first_line(exc)
    if isinstance(exc, ConfigKeyError):
        return f"{where}: unknown config key '{key}'; check its spelling against the README's configuration reference"
    return f"{where}: bad value for '{key}': {msg}"


_CHOICES = {
    "diffusion.schedule": SCHEDULES,
    "diffusion.prediction_type": PREDICTION_TYPES,
    "diffusion.t_sampling": T_SAMPLINGS,
    "model.upsample": UPSAMPLE_MODES,
    "model.prior": PRIOR_MODES,
    "sample.sampler": SAMPLERS,
    "inpaint.sampler": SAMPLERS,
    "train.precision": PRECISIONS,
    "diagnostics.real_split": SPLITS,
    "data.slice_label": SLICE_LABELS,
}


def validate(cfg: Any, where: str, overrides=()) -> None:
    """Value checks the type system cannot express; one line each, naming where the bad value came
    from: a command-line override (`overrides`) or `where` (the config file)."""
    import math
    import re

    from omegaconf import OmegaConf

    given = _override_keys(overrides)

    def origin(msg: str) -> str:
        keys = [k for k in re.findall(r"\b[a-z_]+(?:\.[a-z_0-9]+)+\b", msg) if k in given]  # any depth
        return f"command-line override {keys[0]}" if keys else where

    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=True)):
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every `> 0` check
            raise UserError(f"{origin(key)}: {key}={value} is not a finite number; give a finite value")
    for key, choices in _CHOICES.items():
        value = str(OmegaConf.select(cfg, key))
        if value not in choices:
            raise UserError(f"{origin(key)}: {key}={value} is not one of {', '.join(choices)}")
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
        (cfg.data.fov_mm >= 0, "data.fov_mm must be >= 0 (0 = use data.spacing_mm in-plane)"),
        (cfg.data.lesion_oversample > 0, "data.lesion_oversample must be > 0 (1 = no oversampling)"),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0 (0 = load in the training process)"),
        (cfg.data.augment.crop_scale >= 1, "data.augment.crop_scale must be >= 1 (1 = no crop)"),
        (0 <= cfg.data.augment.rotate_deg <= 180, "data.augment.rotate_deg must be in [0, 180]"),
        (cfg.data.augment.brightness >= 0, "data.augment.brightness must be >= 0"),
        (0 <= cfg.data.augment.contrast < 1, "data.augment.contrast must be in [0, 1)"),
        (cfg.model.image_channels in (1, 3), "model.image_channels must be 1 or 3"),
        (len(cfg.model.channel_mult) >= 1, "model.channel_mult must list at least one level"),
        (cfg.diffusion.timesteps >= 2, "diffusion.timesteps must be at least 2"),
        (0.0 <= cfg.diffusion.self_conditioning_prob <= 1.0, "diffusion.self_conditioning_prob must be in [0, 1]"),
        (0.0 <= cfg.diffusion.condition_dropout < 1.0, "diffusion.condition_dropout must be in [0, 1)"),
        (cfg.diffusion.sigma_data > 0, "diffusion.sigma_data must be > 0"),
        # ln sigma: every schedule spans about -6 to 11; beyond +-10 every training step is at one end
        (-10 <= cfg.diffusion.p_mean <= 10, "diffusion.p_mean must be in [-10, 10] (mean of ln sigma; -1.2 in EDM)"),
        (0 < cfg.diffusion.p_std <= 10, "diffusion.p_std must be in (0, 10] (the SD of ln sigma; 1.2 in EDM)"),
        (cfg.loss.p > 0, "loss.p must be > 0"),
        (cfg.loss.lesion_weight >= 0, "loss.lesion_weight must be >= 0"),
        (len(cfg.loss.channel_weights) >= 1 and all(w >= 0 for w in cfg.loss.channel_weights)
         and any(w > 0 for w in cfg.loss.channel_weights),
         "loss.channel_weights must be >= 0, at least one > 0 (one per channel: image, mask)"),
        (cfg.loss.ffl_weight >= 0, "loss.ffl_weight must be >= 0"),
        (cfg.loss.ffl_alpha >= 0, "loss.ffl_alpha must be >= 0"),
        (cfg.loss.ffl_patch_factor >= 1, "loss.ffl_patch_factor must be at least 1"),
        (cfg.loss.min_snr_gamma is None or cfg.loss.min_snr_gamma > 0, "loss.min_snr_gamma must be null or > 0"),
        (len(cfg.loss.uncertainty_init) == 2, "loss.uncertainty_init must be two initial log variances"),
        (not cfg.loss.uncertainty_weighting or cfg.loss.ffl_weight > 0,
         "loss.uncertainty_weighting balances the spatial and frequency losses: set loss.ffl_weight > 0 too"),
        (cfg.sample.steps <= cfg.diffusion.timesteps, "sample.steps must not exceed diffusion.timesteps"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (0.0 <= cfg.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
        (cfg.sample.steps >= 1, "sample.steps must be at least 1"),
        (cfg.sample.eta >= 0, "sample.eta must be >= 0"),
        (cfg.sample.eta == 0 or cfg.sample.sampler == "ddim",
         f"sample.eta={cfg.sample.eta} is used by ddim only ({cfg.sample.sampler} would ignore it); set sample.eta=0"),
        (cfg.sample.batch_size >= 1, "sample.batch_size must be at least 1"),
        (0.0 < cfg.sample.strength <= 1.0, "sample.strength must be in (0, 1] (1 = plain generation)"),
        (cfg.sample.mask_guidance >= 0, "sample.mask_guidance must be >= 0 (1 = no guidance on the mask)"),
        (cfg.sample.min_fidelity is None or 0.0 <= cfg.sample.min_fidelity <= 1.0,
         "sample.min_fidelity must be null (off) or a Dice in [0, 1]"),
        (cfg.sample.fidelity_tries >= 1, "sample.fidelity_tries must be at least 1"),
        (0.0 <= cfg.train.mask_drop <= 1.0, "train.mask_drop must be in [0, 1]"),
        (not cfg.model.mask_conditioning or cfg.model.joint_mask,
         "model.mask_conditioning needs model.joint_mask=true (the condition is the mask channel of the data)"),
        (cfg.inpaint.steps >= 1, "inpaint.steps must be at least 1"),
        # one key per check: origin() names the first key of a message that came from the command line
        (cfg.inpaint.dilate_px >= 0, "inpaint.dilate_px must be >= 0"),
        (cfg.inpaint.resample >= 0, "inpaint.resample must be >= 0"),
        (cfg.inpaint.placement_tries >= 1, "inpaint.placement_tries must be at least 1"),
        (cfg.inpaint.guidance_scale is None or cfg.inpaint.guidance_scale >= 0,
         "inpaint.guidance_scale must be null (sample.guidance_scale) or >= 0 (1 = no guidance)"),
        (cfg.inpaint.min_fidelity is None or 0.0 <= cfg.inpaint.min_fidelity <= 1.0,
         "inpaint.min_fidelity must be null (sample.min_fidelity) or a Dice in [0, 1]"),
        (str(cfg.diagnostics.utility_train_split) in SPLITS,
         f"diagnostics.utility_train_split must be one of {', '.join(SPLITS)}"),
        (cfg.diagnostics.n_null_repeats >= 2, "diagnostics.n_null_repeats must be at least 2 (a null SD needs two)"),
        (0 < cfg.diagnostics.fdr_alpha < 1, "diagnostics.fdr_alpha must be in (0, 1)"),
        (cfg.diagnostics.glcm_levels >= 2, "diagnostics.glcm_levels must be at least 2"),
        (cfg.diagnostics.structure_max_side == 0 or cfg.diagnostics.structure_max_side >= 16,
         "diagnostics.structure_max_side must be 0 (native) or at least 16 pixels"),
        (cfg.diagnostics.classifier_folds >= 2, "diagnostics.classifier_folds must be at least 2 (cross-fitting)"),
        (cfg.diagnostics.severity_z0 >= 0, "diagnostics.severity_z0 must be >= 0"),
        (cfg.diagnostics.severity_scale > 0, "diagnostics.severity_scale must be > 0"),
        (cfg.diagnostics.utility_seeds >= 1, "diagnostics.utility_seeds must be at least 1"),
        (cfg.diagnostics.utility_steps >= 1, "diagnostics.utility_steps must be at least 1"),
        (cfg.diagnostics.utility_batch_size >= 1, "diagnostics.utility_batch_size must be at least 1"),
        (cfg.diagnostics.utility_lr > 0, "diagnostics.utility_lr must be > 0"),
        (len(cfg.diagnostics.utility_widths) >= 1
         and all(w >= 4 and w % 4 == 0 for w in cfg.diagnostics.utility_widths),
         "diagnostics.utility_widths must list positive multiples of 4, e.g. [8, 16, 32]"),
        (0.0 <= cfg.diagnostics.utility_lesion_fraction <= 1.0,
         "diagnostics.utility_lesion_fraction must be in [0, 1]"),
        (0.0 < cfg.diagnostics.utility_crop <= 1.0, "diagnostics.utility_crop must be in (0, 1]"),
        (cfg.diagnostics.utility_synthetic_ratio > 0, "diagnostics.utility_synthetic_ratio must be > 0"),
        (all(r > 0 for r in cfg.diagnostics.utility_synthetic_ratios)
         and len(set(cfg.diagnostics.utility_synthetic_ratios)) == len(cfg.diagnostics.utility_synthetic_ratios),
         "diagnostics.utility_synthetic_ratios must hold distinct ratios > 0, e.g. [0.5, 2]"),
        (cfg.diagnostics.utility_eval_every >= 1 and cfg.diagnostics.utility_patience >= 0,
         "diagnostics.utility_eval_every must be >= 1 and utility_patience >= 0"),
        (0.0 <= cfg.diagnostics.utility_val_fraction < 1.0, "diagnostics.utility_val_fraction must be in [0, 1)"),
        (cfg.diagnostics.utility_workers >= 1, "diagnostics.utility_workers must be at least 1"),
        (all(0 < f < 1 for f in cfg.diagnostics.utility_real_fractions),
         "diagnostics.utility_real_fractions must hold fractions in (0, 1), e.g. [0.25, 0.5]"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{origin(msg)}: {msg}")


def _leaves(tree, prefix: str = ""):
    """(dotted key, value) of every scalar in a nested dict / list config."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for k, v in items:
        key = f"{prefix}{k}" if isinstance(tree, dict) else f"{prefix[:-1]}[{k}]"
        if isinstance(v, dict | list):
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def section_overrides(cfg: Any, section: str, skip=()) -> list[str]:
    """`section.key=value` overrides that set each key of `cfg`'s `section` as it is there (None as null,
    which the override parser reads back as None; "None" would be a string)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg[section], resolve=True)
    return [f"{section}.{k}={'null' if v is None else v}" for k, v in values.items() if k not in skip]


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
