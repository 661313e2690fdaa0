"""Checkpoint files (atomic; last.ckpt always the newest state; a run folder that can be copied or moved),
the periodic sample grid, and training progress for people: a tqdm bar with loss / lr / steps/s in a
terminal, one plain line every so often in a log file or pipe."""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint import non_finite_tensors
from ..errors import Interrupted, UserError
from ..io import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into memory, then one atomic rename: a crash never leaves a truncated .ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:  # the last good checkpoint on disk is never replaced by NaN weights
            raise NonFiniteTraining(f"step {checkpoint.get('global_step', '?')}: {len(bad)} weight tensor(s) "
                                    f"became NaN or Inf (e.g. {bad[0]}); {path} was not written")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class LastCheckpoint(Checkpoint):
    """`path` (last.ckpt): always the newest state of the run, at one fixed path.

    Written at the end of a training step: every `every_n_steps` steps (0: none by count), the last step
    of every epoch (before its validation), and the step a fit stops on (train.max_steps, max_minutes);
    then at the end of the fit if anything is left. Always at a step's end: Lightning (2.6) resumes
    that state exactly (even the last step of an epoch), but resumes a state written during an epoch
    end (after validation) with its epoch counter one ahead (the data order of a later epoch) and the
    epoch-end hooks run twice. No path is kept in the callback's state, so a copied or moved run folder
    resumes into its own last.ckpt (Lightning's ModelCheckpoint would write last-v1.ckpt beside a
    last.ckpt it did not write itself). A `Checkpoint`: Lightning runs it after every other callback,
    so TrainingGuard's checks of a step come first.
    """

    def __init__(self, path: Path, every_n_steps: int = 0):
        self.path = Path(path)
        self.every_n_steps = int(every_n_steps)
        self.saved_step: int | None = None  # the step last.ckpt holds (a resumed run: the step resumed from)

    def on_train_start(self, trainer, pl_module) -> None:
        self.saved_step = trainer.global_step if trainer.ckpt_path else None

    def save(self, trainer) -> None:
        """Write the current state unless last.ckpt already holds this step."""
        if trainer.global_step != self.saved_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if ((self.every_n_steps > 0 and step % self.every_n_steps == 0)
                or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
                or (trainer.max_steps > 0 and step >= trainer.max_steps) or trainer.should_stop):
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


class BestCheckpoint(ModelCheckpoint):
    """best.ckpt by validation loss. Its state names files by absolute path; a copied or moved run folder
    reads them as the same names in its own checkpoints/ (Lightning would drop the best score with a
    warning, and the next validation would replace best.ckpt whatever its loss)."""

    @property
    def state_key(self) -> str:  # ModelCheckpoint's key: checkpoints written before this class still resume it
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__):]

    def load_state_dict(self, state_dict: dict) -> None:
        stored = state_dict.get("dirpath")
        if stored and self.dirpath and Path(stored) != Path(self.dirpath):
            def here(path):
                return str(Path(self.dirpath) / Path(path).name) if path and Path(path).parent == Path(stored) \
                    else path

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{k: here(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                  "last_model_path") if k in state_dict},
                          "best_k_models": {here(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
        super().load_state_dict(state_dict)


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

        from ..draw import postprocess, sample_batch
        from ..imaging import save_png, triplet_grid
        from ..seeding import sample_seeds

        cfg = OmegaConf.merge(pl_module.cfg, {"sample": {"sampler": "dpmpp_2m", "steps": self.steps,
                                                         "guidance_scale": 1.0}})
        zbins, labels = grid_conditions(int(cfg.data.n_zbins), int(cfg.model.num_classes), self.n_samples)
        seeds = sample_seeds(int(cfg.train.seed), zbins, labels, np.zeros_like(zbins))
        images = sample_batch(pl_module.ema.module, cfg, zbins, labels, seeds, pl_module.priors, pl_module.device)
        images = postprocess(images, bool(cfg.model.joint_mask))
        save_png(path, triplet_grid(images, bool(cfg.model.joint_mask)))


def interactive_terminal() -> bool:
    """True when a person watches both streams live; SLURM, nohup, `| tee` and `> log` are not."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_callbacks(enabled: bool, interactive: bool | None = None) -> list[L.Callback]:
    """The progress display for `train.progress_bar`: a bar in a terminal, lines elsewhere, or none."""
    if not enabled:
        return []
    return [ReadableProgressBar() if (interactive_terminal() if interactive is None else interactive)
            else LineProgress()]


def _current_lr(trainer: L.Trainer) -> float | None:
    return trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None


class ReadableProgressBar(TQDMProgressBar):
    """Lightning's bar with what helps a person: loss, val loss and lr (no `v_num`); steps/s as the rate."""

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar

    def get_metrics(self, trainer: L.Trainer, pl_module) -> dict:
        shown = {}
        metrics = trainer.progress_bar_metrics
        if "train/loss" in metrics:
            shown["loss"] = f"{metrics['train/loss']:.4f}"
        if "val/loss" in metrics:
            shown["val"] = f"{metrics['val/loss']:.4f}"
        lr = _current_lr(trainer)
        if lr is not None:
            shown["lr"] = f"{lr:.2e}"
        return shown


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LineProgress(L.Callback):
    """For logs: a line at the first step, then at most one every `every_s` seconds, and one at the end:
    step / total, epoch, loss, val loss, lr, steps/s since the last line, elapsed and ETA (the sooner of
    the step limit and the train.max_minutes budget). No carriage returns, flushed at once."""

    def __init__(self, every_s: float = 30.0, stream=None):
        self.every_s = every_s
        self.stream = stream

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.start = self.last_time = time.perf_counter()
        self.first_step = self.last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if trainer.global_step == self.first_step + 1 or now - self.last_time >= self.every_s:
            self.emit(trainer, now)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.global_step != self.last_step:
            self.emit(trainer, time.perf_counter())

    def total_steps(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        per_epoch = trainer.num_training_batches
        if trainer.max_epochs and per_epoch not in (None, float("inf")):
            return int(trainer.max_epochs * per_epoch)
        return None

    def eta_seconds(self, trainer: L.Trainer, steps_per_s: float) -> float | None:
        etas = []
        total = self.total_steps(trainer)
        if total is not None and steps_per_s > 0:
            etas.append((total - trainer.global_step) / steps_per_s)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and timer.time_remaining() is not None:
            etas.append(timer.time_remaining())
        return min(etas) if etas else None

    def line(self, trainer: L.Trainer, now: float) -> str:
        step, metrics = trainer.global_step, trainer.callback_metrics
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        overall = (step - self.first_step) / max(now - self.start, 1e-9)
        total = self.total_steps(trainer)
        parts = [f"train: step {step}" + (f"/{total}" if total else ""), f"epoch {trainer.current_epoch}"]
        for key, name in (("train/loss", "loss"), ("val/loss", "val")):
            if key in metrics:
                parts.append(f"{name} {float(metrics[key]):.4f}")
        lr = _current_lr(trainer)
        if lr is not None:
            parts.append(f"lr {lr:.2e}")
        parts.append(f"{rate:.2f} steps/s")
        parts.append(f"elapsed {_clock(now - self.start)}")
        eta = self.eta_seconds(trainer, overall)
        if eta is not None:
            parts.append(f"ETA {_clock(eta)}")
        return "  ".join(parts)

    def emit(self, trainer: L.Trainer, now: float) -> None:
        if trainer.is_global_zero:
            print(self.line(trainer, now), file=self.stream or sys.stdout, flush=True)
        self.last_time, self.last_step = now, trainer.global_step


# ------------------------------------------------------------------------- stopping cleanly
class NonFiniteTraining(UserError):
    """The loss, a gradient or a weight became NaN or Inf: the run stops and keeps the last good checkpoint."""


class TrainingGuard(L.Callback):
    """Stops a run cleanly, between two training steps.

    - Non-finite values: after every step, one check (one device sync) that the loss, the gradients
      before the optimizer step and the weights after it are finite; if not, the run stops with one line
      naming the step, before any checkpoint of that step is written (Lightning runs checkpoint
      callbacks after this one).
    - SIGINT / SIGTERM (`handle_signals()` around `fit`): the first signal is noted; at the end of the
      current step last.ckpt is written and `Interrupted` raised. A signal during an epoch end (validation,
      the sample grid, best.ckpt) stops the run when the next epoch starts, with last.ckpt as written at
      the epoch's last step (see LastCheckpoint); a fit that ends there instead finishes normally. A
      second SIGINT stops at once.
    Must come before the checkpoint callbacks (Lightning runs `Checkpoint` callbacks last).
    """

    def __init__(self, last_ckpt: Path, check_grads: bool = True, fix: str = ""):
        self.last_ckpt = Path(last_ckpt)
        self.check_grads = check_grads  # off with 16-mixed: the grad scaler skips inf gradients itself
        self.fix = fix
        self.signal: str | None = None
        self.saved_step: int | None = None  # the step of the last checkpoint written in this run
        self._grads_finite = None
        self._trainer = None
        self._last: LastCheckpoint | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer
        self._last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)

    # ------------------------------------------------------------------------- signals
    @contextlib.contextmanager
    def handle_signals(self):
        def note(signum, frame):
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl+C: stop now
            self.signal = signal.Signals(signum).name
            if signum == signal.SIGTERM:
                # Lightning's own SIGTERM handler (which runs just before this one) would exit at the next
                # batch end without a checkpoint when the signal lands after this guard's check (e.g. while
                # ModelCheckpoint writes): unset its flag, so that this guard always stops the run itself
                connector = getattr(self._trainer, "_signal_connector", None)
                if connector is not None and hasattr(connector, "received_sigterm"):
                    connector.received_sigterm = False

        try:
            previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_if_signalled(self, trainer) -> None:
        if self.signal is None:
            return
        if trainer.global_step == 0 and not self.last_ckpt.is_file():
            raise Interrupted(f"{self.signal} before the first training step: nothing to keep")
        if self._last is not None and self._last.path == self.last_ckpt:
            self._last.save(trainer)  # nothing to write when last.ckpt holds this step already
        else:
            trainer.save_checkpoint(self.last_ckpt, weights_only=False)
        raise Interrupted(f"{self.signal} at step {trainer.global_step}: wrote {self.last_ckpt}; "
                          "continue with the same command and train.resume=auto")

    # ------------------------------------------------------------------------ non-finite
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.check_grads:
            grads = [p.grad.detach().sum() for p in pl_module.parameters() if p.grad is not None]
            self._grads_finite = torch.stack(grads).sum().isfinite() if grads else None  # no sync here

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        weights = torch.stack([p.detach().sum() for p in pl_module.parameters()]).sum().isfinite()
        flags = [weights]
        names = ["weights after the optimizer step"]
        if torch.is_tensor(loss):
            flags.insert(0, loss.detach().isfinite().all())
            names.insert(0, "loss")
        if self._grads_finite is not None:
            flags.insert(len(flags) - 1, self._grads_finite)
            names.insert(len(names) - 1, "gradients")
        self._grads_finite = None
        ok = torch.stack([f.to(weights.device) for f in flags]).tolist()  # the one sync per step
        if not all(ok):
            what = names[ok.index(False)]
            kept = (f"{self.last_ckpt} (step {self.saved_step}) is kept" if self.saved_step is not None
                    else f"{self.last_ckpt} is kept as it was" if self.last_ckpt.is_file()
                    else "no checkpoint had been written")
            raise NonFiniteTraining(f"step {trainer.global_step}: the {what} became NaN or Inf; training "
                                    f"stopped and {kept}" + (f"; {self.fix}" if self.fix else ""))
        self._stop_if_signalled(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._stop_if_signalled(trainer)  # a signal during the previous epoch's end (validation, sample grid)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saved_step = int(checkpoint.get("global_step", trainer.global_step))
