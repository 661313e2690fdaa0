"""Checkpoint reading below training and generation: layering, records, one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from jsddpm.checkpoint import _first_line, load_checkpoint, non_finite_weights, spacing_from_checkpoint
from jsddpm.config import load_config
from jsddpm.errors import UserError


def test_training_loads_without_generation():
    code = ("import sys, jsddpm.training.trainer, jsddpm.training.module, jsddpm.checkpoint; "
            "print(sorted(m for m in sys.modules if m.startswith('jsddpm.generation')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_records_spacing_and_non_finite_weights_and_errors(tmp_path):
    cfg = load_config(None, ["data.image_size=64", "data.fov_mm=224", "data.spacing_mm=[1,1,2.5]"])
    assert spacing_from_checkpoint({"jsddpm": {"spacing_mm": [1.5, 2.0, 3.0]}}, cfg).tolist() == [1.5, 2.0, 3.0]
    # older checkpoints: the spacing their data config asks for (fov / size in-plane)
    assert spacing_from_checkpoint({"jsddpm": {}}, cfg).tolist() == [3.5, 3.5, 2.5]
    state = {"net.a": torch.zeros(2), "ema.module.a": torch.tensor([0.0, np.inf]), "ema.module.n": torch.tensor(3)}
    assert non_finite_weights({"state_dict": state}, "ema.module.") == ["ema.module.a"]
    assert non_finite_weights({"state_dict": state}, "net.") == []
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="no 'jsddpm' record"):
        load_checkpoint(tmp_path / "other.ckpt")
    long = ValueError("word " * 60 + "\nsecond line")
    assert _first_line(long, 42) == ("word " * 8).strip() + " ..."  # cut at a word boundary, first line only


def test_resume_accepts_a_checkpoint_written_before_new_config_keys(tmp_path):
    """A run written before `diffusion.sigma_data` / `t_sampling` existed resumes: missing keys take their
    defaults, which is what that run used; a real difference is still refused in one line."""
    import pytest
    import torch

    from jsddpm.config import load_config, to_container
    from jsddpm.errors import UserError
    from jsddpm.training.trainer import check_resume_compatible

    cfg = load_config(None, [])
    stored = to_container(cfg)
    for key in ("sigma_data", "t_sampling", "p_mean", "p_std"):
        stored["diffusion"].pop(key)
    path = tmp_path / "last.ckpt"
    torch.save({"jsddpm": {"config": stored}, "state_dict": {}}, path)
    check_resume_compatible(cfg, path)
    with pytest.raises(UserError, match="different diffusion"):
        check_resume_compatible(load_config(None, ["diffusion.prediction_type=v"]), path)
