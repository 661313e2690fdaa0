"""Training: optimiser groups, LR schedule, EMA, resumable data order, exact resume, checkpoints, errors."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from jsddpm.config import load_config
from jsddpm.errors import Interrupted, UserError
from jsddpm.training.ema import EMA, ema_decay_at
from jsddpm.training.loaders import EpochSampler
from jsddpm.training.optim import param_groups, warmup_cosine

pytestmark = pytest.mark.usefixtures("one_thread")


SIZE = 16
TINY = [
    f"data.image_size={SIZE}", "data.n_zbins=4", "model.base_channels=8", "model.channel_mult=[1,2]",
    "model.attention_resolutions=[8]", "model.attention_head_dim=8", "model.num_classes=2",
    "model.prior=cross_attention", "model.prior_attention_resolutions=[8]", "model.prior_tokens=4",
    "model.prior_channels=8", "diffusion.timesteps=100", "train.batch_size=4", "train.warmup_steps=2",
    "train.patience=0", "train.sample_every_n_epochs=1", "train.sample_grid_steps=2", "train.log_every_n_steps=1",
    "train.accelerator=cpu", "train.devices=1", "loss.ffl_weight=0.5", "loss.uncertainty_weighting=true",
    "train.progress_bar=false",
    "diffusion.self_conditioning_prob=0.5", "loss.min_snr_gamma=5",
]


def write_tiny_cache(root: Path, n_subjects: int = 4, slices: int = 5, seed: int = 0) -> Path:
    """A slice cache per docs/internals.md: blobs whose brightness follows z, lesions as bright dots."""
    from jsddpm.data.cache import cache_stats, write_cache

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, masks, rows = [], [], []
    for s in range(n_subjects):
        label = s % 2
        split = ["train", "train", "val", "train"][s % 4]
        for k in range(slices):
            z_norm = (k + 0.5) / slices
            brain = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) < (SIZE * (0.25 + 0.1 * z_norm)) ** 2
            img = np.where(brain, 0.2 + 0.5 * z_norm, -1.0) + 0.05 * rng.standard_normal((SIZE, SIZE))
            mask = np.zeros((SIZE, SIZE), np.uint8)
            if label:
                mask[SIZE // 2 - 2:SIZE // 2 + 1, SIZE // 2:SIZE // 2 + 3] = 1
                img[mask == 1] = 0.95
            images.append(np.clip(img, -1, 1)[None])
            masks.append(mask[None])
            rows.append((f"s{s}", ["normal", "abnormal"][label], label, split, 0, k, z_norm,
                         min(int(z_norm * 4), 3), int(mask.any()), int(mask.sum())))
    cols = ("subject_id", "group", "label", "split", "fold", "z", "z_norm", "zbin", "has_lesion", "lesion_area")
    index = {c: np.array([r[i] for r in rows]) for i, c in enumerate(cols)}
    index["z_norm"] = index["z_norm"].astype(np.float32)
    priors = np.stack([np.mean([m for m, z in zip(images, index["zbin"]) if z == b], axis=0)[0] > -0.5
                       for b in range(4)]).astype(np.float32)
    cfg = load_config(None, TINY)
    root.mkdir(parents=True)
    write_cache(root, cfg, np.stack(images).astype(np.float32), np.stack(masks), index, priors,
                cache_stats(index, ["normal", "abnormal"], 4, {}))
    return root


def tiny_cfg(tmp_path: Path, *extra: str):
    cache = tmp_path / "cache"
    if not cache.exists():
        write_tiny_cache(cache)
    return load_config(None, [*TINY, f"data.cache_dir={cache}", f"train.out_dir={tmp_path / 'run'}", *extra])


# ------------------------------------------------------------------------------- optimiser
def test_weight_decay_only_on_linear_and_conv_weights():
    from jsddpm.model import build_model
    from jsddpm.training.objective import Objective

    cfg = load_config(None, TINY)
    net = build_model(cfg, verbose=False)
    objective = Objective(cfg, None)
    decay, no_decay = param_groups([net, objective], weight_decay=0.1)
    names = {id(p): n for n, p in [*net.named_parameters(), *objective.named_parameters()]}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decayed) + len(kept) == len(names)
    assert all(n.endswith(".weight") and "norm" not in n for n in decayed)
    for needle in ("bias", "norm", "class_embed", "null", "position", "log_var"):
        hits = [n for n in names.values() if needle in n]
        assert hits and set(hits) <= kept, needle


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(110, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------- EMA
def test_ema_update_is_the_exact_average_and_covers_every_parameter():
    from jsddpm.model import build_model

    net = build_model(load_config(None, TINY), verbose=False)
    ema = EMA(net, decay=0.9)
    assert set(ema.module.state_dict()) == set(net.state_dict())
    assert any(k.startswith("prior_encoder.") for k in ema.module.state_dict())
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)  # first update: decay min(0.9, 1/10) = 0.1
    ema.update(net)  # second: min(0.9, 2/11)
    d1, d2 = ema_decay_at(0.9, 0), ema_decay_at(0.9, 1)
    assert (d1, d2) == (pytest.approx(0.1), pytest.approx(2 / 11))
    for name, p in net.named_parameters():
        expected = d2 * (d1 * before[name] + (1 - d1) * p) + (1 - d2) * p
        torch.testing.assert_close(ema.module.state_dict()[name], expected)
    assert int(ema.updates) == 2


# ------------------------------------------------------------------------------ data order
def test_epoch_sampler_is_keyed_by_epoch_shards_ranks_and_resumes():
    full = list(EpochSampler(10, 3, seed=1))
    assert len(full) == 12 and full == list(EpochSampler(10, 3, seed=1))  # padded to whole batches
    s = EpochSampler(10, 3, seed=1)
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]
    s.set_epoch(0)
    s.resume(0, 2)  # two batches of epoch 0 done: the rest, then whole epochs again
    assert list(s) == full[6:]
    assert list(s) == full
    ranks = [list(EpochSampler(10, 2, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    both = ranks[0] + ranks[1]
    assert {i for i, _ in both} == set(range(10)) and len({seed for _, seed in both}) == 12
    weighted = EpochSampler(4, 2, seed=1, weights=np.array([0.0, 0.0, 0.0, 1.0]))  # lesion oversampling
    assert [i for i, _ in weighted] == [3, 3, 3, 3]


# ------------------------------------------------------------------------- resume + checkpoints
class CrashAt(L.Callback):
    """Kills the fit at the start of step `n`, after last.ckpt of step n was written (a preemption)."""

    def __init__(self, n: int):
        self.n = n

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.n:
            raise RuntimeError("simulated crash")


def last_checkpoint(cfg) -> dict:
    return torch.load(Path(cfg.train.out_dir) / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same weights (network, EMA, loss weights), optimizer and LR state, bit for bit."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for k, state in a["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(b["optimizer_states"][0]["state"][k]["exp_avg_sq"], state["exp_avg_sq"],
                                   rtol=0, atol=0)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_resume_reproduces_uninterrupted_training_exactly(tmp_path):
    from jsddpm.training.trainer import train

    # 15 train slices, batch 4: 4 steps per epoch, so a crash at step 3 resumes in mid-epoch
    args = ("train.max_steps=6", "train.ckpt_every_n_steps=1")
    straight = tiny_cfg(tmp_path / "a", *args)
    train(straight)
    interrupted = tiny_cfg(tmp_path / "b", *args)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(interrupted, callbacks=[CrashAt(3)])
    assert last_checkpoint(interrupted)["global_step"] == 3
    train(tiny_cfg(tmp_path / "b", *args, "train.resume=auto"))
    a, b = last_checkpoint(straight), last_checkpoint(interrupted)
    assert a["global_step"] == b["global_step"] == 6
    assert_same_state(a, b)
    assert any(k.startswith("ema.module.prior_encoder.") for k in a["state_dict"])
    assert any("log_vars" in k for k in a["state_dict"])
    run = tmp_path / "b" / "run"
    for name in ("config.yaml", "versions.json", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    assert len(list((run / "logs").glob("version_*/metrics.csv"))) == 2  # one per start, none lost
    assert list((run / "samples").glob("epoch_*.png"))
    assert list((run / "tensorboard").glob("events.*"))
    record = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["jsddpm"]
    assert record["config"]["diffusion"]["prediction_type"] == "sample"
    assert tuple(record["priors"].shape) == (4, SIZE, SIZE) and record["classes"] == ["normal", "abnormal"]


class FirstStep(L.Callback):
    """Records the step a fit starts from."""

    def on_train_start(self, trainer, *args):
        self.step = trainer.global_step


def test_a_copied_run_folder_resumes_into_its_own_last_ckpt(tmp_path, recwarn):
    """cp -r of a run folder, then train.resume=auto in the copy: last.ckpt is always the newest state."""
    from jsddpm.checkpoint import Checkpoint
    from jsddpm.training.trainer import train

    args = ("train.max_steps=8", "train.ckpt_every_n_steps=1", "train.sample_every_n_epochs=0")
    straight = tiny_cfg(tmp_path / "a", *args)
    train(straight)
    original = tiny_cfg(tmp_path / "b", *args)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(original, callbacks=[CrashAt(3)])
    copy = tmp_path / "copy"
    shutil.copytree(original.train.out_dir, copy)

    def in_copy(*extra):
        return load_config(None, [*TINY, f"data.cache_dir={original.data.cache_dir}", f"train.out_dir={copy}",
                                  *args, "train.resume=auto", *extra])

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(in_copy(), callbacks=[CrashAt(6)])
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no last-v1
    assert last_checkpoint(in_copy())["global_step"] == 6
    first = FirstStep()
    train(in_copy(), callbacks=[first])
    assert first.step == 6  # continued from the newest state, not the copied step 3
    a, c = last_checkpoint(straight), last_checkpoint(in_copy())
    assert a["global_step"] == c["global_step"] == 8
    assert_same_state(a, c)
    best = next(v for k, v in c["callbacks"].items() if "val/loss" in k)
    assert Path(best["dirpath"]) == Path(best["best_model_path"]).parent == copy / "checkpoints"
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    assert last_checkpoint(original)["global_step"] == 3  # the original folder is untouched
    # what `jsddpm generate --ckpt COPY/checkpoints/last.ckpt` samples with: the newest EMA weights
    net = Checkpoint.load(copy / "checkpoints" / "last.ckpt").model()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, a["state_dict"][f"ema.module.{key}"], rtol=0, atol=0, msg=key)


class SignalDuringValidation(L.Callback):
    """SIGTERM to this process while epoch 0's end-of-epoch validation runs (after its last training step)."""

    def on_validation_start(self, trainer, *args):
        if trainer.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("patience", [0, 3])
def test_signal_during_end_of_epoch_validation_resumes_exactly(tmp_path, patience):
    from jsddpm.training.trainer import train

    # 4 steps per epoch: the signal comes after step 4, while epoch 0's validation runs
    args = ("train.max_steps=6", "train.ckpt_every_n_steps=1", "train.sample_every_n_epochs=1",
            f"train.patience={patience}")
    straight = tiny_cfg(tmp_path / "a", *args)
    train(straight)
    interrupted = tiny_cfg(tmp_path / "b", *args)
    with pytest.raises(Interrupted, match="SIGTERM at step 4: wrote"):
        train(interrupted, callbacks=[SignalDuringValidation()])
    assert last_checkpoint(interrupted)["global_step"] == 4
    train(tiny_cfg(tmp_path / "b", *args, "train.resume=auto"))
    a, b = last_checkpoint(straight), last_checkpoint(interrupted)
    assert a["global_step"] == b["global_step"] == 6 and a["epoch"] == b["epoch"] == 1
    assert_same_state(a, b)
    samples = tmp_path / "b" / "run" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["epoch_0001.png", "epoch_0002.png"]  # epoch ends run once


def test_last_checkpoint_holds_the_final_step(tmp_path):
    """train.max_steps not a multiple of train.ckpt_every_n_steps: the end of training still writes last.ckpt."""
    from jsddpm.training.trainer import train

    cfg = tiny_cfg(tmp_path, "train.max_steps=6", "train.ckpt_every_n_steps=4", "train.sample_every_n_epochs=0")
    train(cfg)
    assert last_checkpoint(cfg)["global_step"] == 6


def test_image_only_model_on_a_cache_with_masks_trains_on_the_image_channel(tmp_path, capsys):
    from jsddpm.training.trainer import train

    cfg = tiny_cfg(tmp_path, "model.joint_mask=false", "train.max_steps=4", "train.sample_every_n_epochs=1")
    train(cfg)  # 4 steps: one epoch, its validation and sample grid included
    assert "model.joint_mask=false: an image-only model; the masks of" in capsys.readouterr().out
    ckpt = last_checkpoint(cfg)
    assert ckpt["global_step"] == 4 and ckpt["jsddpm"]["config"]["model"]["joint_mask"] is False
    assert ckpt["state_dict"]["net.input_conv.weight"].shape[1] == 2  # the image and its self-conditioning copy
    assert (tmp_path / "run" / "samples" / "epoch_0001.png").is_file()


def test_train_errors_are_one_line(tmp_path):
    from jsddpm.training.trainer import train

    with pytest.raises(UserError, match="data.cache_dir"):
        train(load_config(None, TINY))
    with pytest.raises(UserError, match="not a slice cache"):
        train(load_config(None, [*TINY, f"data.cache_dir={tmp_path}"]))
    with pytest.raises(UserError, match="train.warmup_steps must be >= 0"):
        train(tiny_cfg(tmp_path, "train.warmup_steps=-1"))
    with pytest.raises(UserError, match="16-mixed needs a GPU"):
        train(tiny_cfg(tmp_path, "train.precision=16-mixed"))
    with pytest.raises(UserError, match="data.image_size"):
        train(tiny_cfg(tmp_path, "data.image_size=32"))
    with pytest.raises(UserError, match="checkpoint not found"):
        train(tiny_cfg(tmp_path, f"train.resume={tmp_path / 'nope.ckpt'}"))
    for key in ("train.strategy=foo", "train.devices=abc"):  # Lightning's own errors, as one line
        with pytest.raises(UserError, match="Lightning cannot use these"):
            train(tiny_cfg(tmp_path, key))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        train(tiny_cfg(tmp_path, f"train.resume={bad}"))


@pytest.mark.slow
def test_ddp_gloo_two_cpu_processes(tmp_path):
    """DDP smoke test: `jsddpm train` with strategy=ddp on 2 CPU processes (gloo) for 3 steps."""
    cfg = tiny_cfg(tmp_path)  # writes the cache
    cmd = [sys.executable, "-m", "jsddpm.cli", "train", *TINY, f"data.cache_dir={cfg.data.cache_dir}",
           f"train.out_dir={tmp_path / 'ddp'}", "train.max_steps=3", "train.strategy=ddp", "train.devices=2",
           "train.sample_every_n_epochs=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # Lightning's line for the second process
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
