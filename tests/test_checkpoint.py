"""Checkpoint reading below training and generation: layering, records, abilities, resume checks."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_random_checkpoint

from jsddpm.checkpoint import Checkpoint, non_finite_tensors
from jsddpm.cli import main
from jsddpm.config import load_config, to_container
from jsddpm.errors import UserError, first_line


def test_training_loads_without_generation():
    code = ("import sys, jsddpm.training.trainer, jsddpm.training.module, jsddpm.checkpoint; "
            "print(sorted(m for m in sys.modules if m.startswith('jsddpm.generation')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_records_spacing_and_non_finite_weights_and_errors(tmp_path):
    cfg = load_config(None, ["data.image_size=64", "data.fov_mm=224", "data.spacing_mm=[1,1,2.5]"])
    record = {"config": to_container(cfg)}
    assert Checkpoint("a.ckpt", {**record, "spacing_mm": [1.5, 2.0, 3.0]}, {}).spacing_mm.tolist() == [1.5, 2.0, 3.0]
    # older checkpoints: the spacing their data config asks for (fov / size in-plane)
    assert Checkpoint("a.ckpt", record, {}).spacing_mm.tolist() == [3.5, 3.5, 2.5]
    state = {"net.a": torch.zeros(2), "ema.module.a": torch.tensor([0.0, np.inf]), "ema.module.n": torch.tensor(3)}
    assert non_finite_tensors(state) == ["ema.module.a"]
    assert non_finite_tensors({k: v for k, v in state.items() if k.startswith("net.")}) == []
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="no 'jsddpm' record"):
        Checkpoint.load(tmp_path / "other.ckpt")
    torch.save({"state_dict": state, "jsddpm": record}, tmp_path / "nan.ckpt")
    with pytest.raises(UserError, match="nan.ckpt: 1 weight tensor.* NaN or Inf .*ema.module.a"):
        Checkpoint.load(tmp_path / "nan.ckpt")
    long = ValueError("word " * 60 + "\nsecond line")
    assert first_line(long, 42) == ("word " * 8).strip() + " ..."  # cut at a word boundary, first line only


def test_checkpoint_holds_config_weights_data_and_abilities(tmp_path):
    tiny = ["data.image_size=16", "data.n_zbins=3", "model.base_channels=8", "model.channel_mult=[1,2]",
            "model.attention_resolutions=[]", "model.num_classes=2", "model.prior=concat"]
    priors = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    path = write_random_checkpoint(tmp_path / "joint.ckpt", load_config(None, tiny), 0.1, ["normal", "abnormal"],
                                   priors, [1.0, 1.0, 2.0])
    ckpt = Checkpoint.load(path)
    assert ckpt.path == path and ckpt.classes == ["normal", "abnormal"] and ckpt.cache_fingerprint is None
    torch.testing.assert_close(ckpt.priors, priors, rtol=0, atol=0)
    assert ckpt.config.model.prior == "concat" and ckpt.config.data.image_size == 16
    assert (ckpt.joint, ckpt.image_only, ckpt.mask_conditioned) == (True, False, False)
    net = ckpt.model(use_ema=True)
    assert not net.training
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, ckpt.state_dict[f"ema.module.{name}"], rtol=0, atol=0)
    raw = torch.load(path, weights_only=True)  # raw and EMA weights apart: use_ema picks one
    raw["state_dict"] = {k: v + 1 if k.startswith("net.") and v.is_floating_point() else v
                         for k, v in raw["state_dict"].items()}
    torch.save(raw, tmp_path / "apart.ckpt")
    apart = Checkpoint.load(tmp_path / "apart.ckpt")
    w_ema, w_raw = (next(iter(apart.model(use_ema=e).parameters())) for e in (True, False))
    torch.testing.assert_close(w_raw, w_ema + 1)
    image_only = write_random_checkpoint(tmp_path / "image.ckpt", load_config(None, [*tiny, "model.joint_mask=false"]),
                                         0.1, ["normal", "abnormal"], priors, None)
    ckpt = Checkpoint.load(image_only)
    assert (ckpt.joint, ckpt.image_only, ckpt.mask_conditioned) == (False, True, False)
    raw["jsddpm"]["config"]["model"]["base_channels"] = 16 # weights that do not fit the stored config
    torch.save(raw, tmp_path / "misfit.ckpt")
    with pytest.raises(UserError, match="misfit.ckpt: its weights do not fit"):
        Checkpoint.load(tmp_path / "misfit.ckpt").model()


def test_resume_accepts_a_checkpoint_written_before_new_config_keys(tmp_path):
    """A run written before `diffusion.sigma_data` / `t_sampling` existed resumes: missing keys take their
    defaults, which is what that run used; a real difference is still refused in one line."""
    cfg = load_config(None, [])
    stored = to_container(cfg)
    for key in ("sigma_data", "t_sampling", "p_mean", "p_std"):
        stored["diffusion"].pop(key)
    path = tmp_path / "last.ckpt"
    torch.save({"jsddpm": {"config": stored}, "state_dict": {}}, path)
    Checkpoint.load(path).check_resume(cfg)
    with pytest.raises(UserError, match="different diffusion"):
        Checkpoint.load(path).check_resume(load_config(None, ["diffusion.prediction_type=v"]))


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) -> SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.usefixtures("one_thread")
def test_resume_refuses_other_data_or_cache_in_one_line_and_follows_a_moved_cache(tmp_path, capsys):
    from test_training import TINY, write_tiny_cache

    cache = write_tiny_cache(tmp_path / "cache")
    run = tmp_path / "run"
    base = ["train", *TINY, "train.sample_every_n_epochs=0", "train.ckpt_every_n_steps=1", f"train.out_dir={run}"]
    assert main([*base, f"data.cache_dir={cache}", "train.max_steps=2"]) == 0
    capsys.readouterr()
    before = folder_state(run)
    other_cohort = write_tiny_cache(tmp_path / "other", n_subjects=5, seed=1)
    resume = [*base, "train.resume=auto", "train.max_steps=3"]
    for extra, needle in (([f"data.cache_dir={other_cohort}"], "trained on another cache"),
                          ([f"data.cache_dir={cache}", "data.lesion_oversample=2.0"],
                           "different data.* settings (data.lesion_oversample)"),
                          ([f"data.cache_dir={cache}", "data.augment.enabled=false", "loss.p=2"],
                           "different data.* and loss.* settings (data.augment.enabled, loss.p)")):
        assert main([*resume, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "start a new train.out_dir" in err[0], err
        assert folder_state(run) == before  # config.yaml, checkpoints and logs as they were
    # the same cache under another name, loaded by another number of workers: the same run, resumed
    moved = tmp_path / "renamed"
    shutil.copytree(cache, moved)
    assert main([*resume, f"data.cache_dir={moved}", "data.num_workers=1"]) == 0
    assert Checkpoint.load(run / "checkpoints" / "last.ckpt").global_step == 3
    assert load_config(run / "config.yaml").data.cache_dir == str(moved)
