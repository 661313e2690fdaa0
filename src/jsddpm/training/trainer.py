"""Trainer factory and the `jsddpm train` stage.

Output folder: config.yaml, versions.json, checkpoints/{last,best}.ckpt, logs/version_K/metrics.csv
(one per start or resume), tensorboard/, samples/epoch_XXXX.png. DDP across GPUs / nodes and SLURM
come from Lightning.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import Interrupted, UserError, first_line

CHECKPOINT_DIR = "checkpoints"


def resolve_accelerator(setting: str) -> str:
    if setting == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return setting


def check_precision(precision: str, accelerator: str) -> str:
    """The precision to use, exactly as configured; a combination that cannot run is an error."""
    if accelerator == "cpu" and precision == "16-mixed":
        raise UserError("train.precision=16-mixed needs a GPU; on CPU use train.precision=32 (or bf16-mixed)")
    return {"32": "32-true", "64": "64-true"}.get(precision, precision)


def build_trainer(cfg: Any, out_dir: Path, has_val: bool, extra_callbacks=()):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from .callbacks import BestCheckpoint, LastCheckpoint, SampleGrid, progress_callbacks

    t = cfg.train
    accelerator = resolve_accelerator(str(t.accelerator))
    ckpt_dir = out_dir / CHECKPOINT_DIR
    callbacks = [
        # last.ckpt: every ckpt_every_n_steps steps (mid-epoch resume), after every epoch and at the end
        LastCheckpoint(ckpt_dir / "last.ckpt", t.ckpt_every_n_steps),
        SampleGrid(out_dir / "samples", t.sample_every_n_epochs, t.sample_grid_steps),
        *progress_callbacks(bool(t.progress_bar)),  # a bar in a terminal, plain lines in a log
        *extra_callbacks,
    ]
    if has_val:
        callbacks.append(BestCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min",
                                         save_top_k=1, auto_insert_metric_name=False,
                                         enable_version_counter=False))
        if t.patience > 0:
            # checked after each validation: at a train epoch end the val/loss seen may be stale, or absent in a
            # resumed fit that stops (max_steps) before its first validation (Lightning then raises)
            callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=t.patience,
                                           check_on_train_epoch_end=False))
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return _trainer(L, t, accelerator, callbacks, out_dir, has_val)
    except (MisconfigurationException, ValueError, TypeError) as exc:
        raise UserError(f"train.accelerator={t.accelerator}, train.devices={t.devices}, train.strategy={t.strategy}, "
                        f"train.num_nodes={t.num_nodes}: Lightning cannot use these ({first_line(exc)}); "
                        "fix them") from None


def _trainer(L, t, accelerator: str, callbacks: list, out_dir: Path, has_val: bool):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .callbacks import AtomicCheckpointIO, ReadableProgressBar

    return L.Trainer(
        accelerator=accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=check_precision(str(t.precision), accelerator),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=datetime.timedelta(minutes=t.max_minutes) if t.max_minutes else None,
        gradient_clip_val=t.grad_clip or None,
        check_val_every_n_epoch=t.val_every_n_epochs,
        limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        # one CSV folder per (re)start: Lightning's CSV logger would delete an existing metrics.csv
        logger=[CSVLogger(out_dir, name="logs"),
                TensorBoardLogger(out_dir, name="tensorboard", version="", default_hp_metric=False)],
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the module's samplers shard by rank themselves
        enable_model_summary=False,
        enable_progress_bar=any(isinstance(c, ReadableProgressBar) for c in callbacks),
        default_root_dir=out_dir,
    )


def resume_path(cfg: Any, out_dir: Path) -> Path | None:
    """The checkpoint `train.resume` points at ("" fresh, "auto" last.ckpt if present, or a path)."""
    last = out_dir / CHECKPOINT_DIR / "last.ckpt"
    resume = str(cfg.train.resume)
    if resume == "":
        if last.exists():
            raise UserError(f"{last}: this folder already holds a run; resume it with train.resume=auto "
                            "or choose another train.out_dir")
        return None
    if resume == "auto":
        return last if last.exists() else None
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"train.resume={resume}: checkpoint not found; give a .ckpt path, auto, or ''")
    return path


def check_train_config(cfg: Any) -> None:
    """train.* values the schema's types cannot rule out; one line each."""
    t = cfg.train
    checks = [
        (t.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas must be two numbers in [0, 1)"),
        (t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables clipping)"),
        (t.max_epochs >= 1 or t.max_steps > 0, "set train.max_epochs >= 1 or train.max_steps > 0"),
        (t.max_minutes is None or t.max_minutes > 0, "train.max_minutes must be > 0 (or null for no limit)"),
        (t.val_every_n_epochs >= 1, "train.val_every_n_epochs must be at least 1"),
        (t.val_timestep_buckets >= 1, "train.val_timestep_buckets must be at least 1"),
        (t.val_max_samples >= 0, "train.val_max_samples must be >= 0 (0 = the whole val split)"),
        (t.patience >= 0, "train.patience must be >= 0 (0 disables early stopping)"),
        (t.sample_every_n_epochs >= 0, "train.sample_every_n_epochs must be >= 0 (0 disables grids)"),
        (t.sample_grid_steps >= 1, "train.sample_grid_steps must be at least 1"),
        (t.ckpt_every_n_steps >= 0, "train.ckpt_every_n_steps must be >= 0"),
        (t.log_every_n_steps >= 1, "train.log_every_n_steps must be at least 1"),
        (t.cpu_threads >= 0, "train.cpu_threads must be >= 0 (0 = torch's default)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"config: {msg}")


def check_cache_compatible(cfg: Any, cache) -> None:
    where = str(cache.root)
    _, c, h, w = cache.images.shape
    m = cfg.model
    problems = [
        (h == w == cfg.data.image_size or cfg.data.resize_on_the_fly,  # on the fly: resized when read
         f"images are {h}x{w} but data.image_size={cfg.data.image_size}"),
        (c == m.image_channels, f"images have {c} channels but model.image_channels={m.image_channels}"),
        (cache.masks is not None or not m.joint_mask, "has no masks but model.joint_mask=true (set it false)"),
        (cache.n_zbins == cfg.data.n_zbins, f"has {cache.n_zbins} z-bins but data.n_zbins={cfg.data.n_zbins}"),
        (m.num_classes == 0 or int(cache.index["label"].max(initial=0)) < m.num_classes,
         f"has labels up to {int(cache.index['label'].max(initial=0))} but model.num_classes={m.num_classes}"),
        (len(cache.indices("train")) > 0, "has no train slices"),
    ]
    for ok, msg in problems:
        if not ok:
            raise UserError(f"{where}: {msg}; rebuild the cache or fix the config")


@contextlib.contextmanager
def run_folder(out_dir: Path, owner: bool):
    """The training folder for the body: locked against a second run; stale checkpoint temp files of a
    killed run removed; a fresh run that fails before writing any checkpoint leaves no folder behind."""
    from ..io import output_lock

    if not owner:  # DDP ranks > 0: rank 0 owns the folder
        yield
        return
    with output_lock(out_dir):
        fresh = not out_dir.exists()
        empty_before = fresh or not any(out_dir.iterdir())
        for stale in (out_dir / CHECKPOINT_DIR).glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            yield
        except BaseException:
            if empty_before and not any((out_dir / CHECKPOINT_DIR).glob("*.ckpt")):
                for child in out_dir.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
                if fresh:
                    with contextlib.suppress(OSError):
                        out_dir.rmdir()
            raise


def train(cfg: Any, callbacks=()) -> Path:
    """The `jsddpm train` stage (`callbacks`: extra Lightning callbacks). Returns the output folder."""
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only

    from .. import quiet
    from ..checkpoint import Checkpoint
    from ..data.cache import load_cache
    from ..io import write_run_record
    from .callbacks import TrainingGuard
    from .module import DiffusionModule

    quiet.install()  # Lightning's banners and torch's deprecations in Lightning's code are not ours
    check_train_config(cfg)
    if not cfg.data.cache_dir:
        raise UserError("data.cache_dir is empty; set it to a slice cache built by `jsddpm cache`")
    cache = load_cache(cfg.data.cache_dir)
    check_cache_compatible(cfg, cache)
    out_dir = Path(cfg.train.out_dir)
    ckpt_path = resume_path(cfg, out_dir)
    if ckpt_path is not None:  # before anything is written: a refused resume leaves the folder as it was
        Checkpoint.load(ckpt_path).check_resume(cfg, cache.fingerprint)
    if cfg.train.cpu_threads > 0:
        torch.set_num_threads(int(cfg.train.cpu_threads))
    L.seed_everything(int(cfg.train.seed), workers=True, verbose=False)
    module = DiffusionModule(cfg, cache)  # builds (and so checks) the network before anything is written
    has_val = len(cache.indices("val")) > 0
    if rank_zero_only.rank == 0:
        if not has_val:
            print(f"train: {cache.root} has no val split: no validation, early stopping or best.ckpt")
        if cache.masks is not None and not cfg.model.joint_mask:
            print(f"train: model.joint_mask=false: an image-only model; the masks of {cache.root} are not used")
        n_train = len(cache.indices("train"))
        if cfg.train.batch_size > n_train:
            print(f"train: warning: train.batch_size={cfg.train.batch_size} is larger than the {n_train} train "
                  "slices; every batch repeats slices", file=sys.stderr)
    guard = TrainingGuard(out_dir / CHECKPOINT_DIR / "last.ckpt", check_grads=str(cfg.train.precision) != "16-mixed",
                          fix="lower train.lr or keep train.grad_clip > 0, then resume with train.resume=auto")
    trainer = build_trainer(cfg, out_dir, has_val=has_val, extra_callbacks=[guard, *callbacks])
    with run_folder(out_dir, rank_zero_only.rank == 0):
        if rank_zero_only.rank == 0:
            write_run_record(out_dir, cfg)
        with warnings.catch_warnings(), guard.handle_signals():
            # EpochSampler resumes mid-epoch by itself; the EMA copy is in eval mode on purpose
            warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            # checkpoints written before LastCheckpoint hold the state of the ModelCheckpoint that wrote last.ckpt
            warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`.* Please add the "
                                    r"following callbacks: \[\"ModelCheckpoint\{'monitor': None[^]]*\]\.$")
            try:
                trainer.fit(module, ckpt_path=ckpt_path)
            except SystemExit:  # Lightning's own exit on a second Ctrl+C or on SIGTERM at an epoch end
                if guard.signal is None:
                    raise
                raise Interrupted(f"{guard.signal}: stopped; continue with the same command and "
                                  "train.resume=auto") from None
    if trainer.is_global_zero:
        print(f"train: {trainer.global_step} steps -> {out_dir / CHECKPOINT_DIR}")
    return out_dir
