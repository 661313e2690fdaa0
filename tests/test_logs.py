"""What a person reads: training progress in a log file is plain lines, third-party noise is gone,
our own warnings and Lightning's useful messages stay."""

import logging
import re
import subprocess
import sys
import warnings

import pytest

from jsddpm import quiet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_log_in_a_pipe_is_plain_lines_without_third_party_noise(tmp_path):
    from test_training import TINY, write_tiny_cache

    cache = write_tiny_cache(tmp_path / "cache")
    overrides = [o for o in TINY if not o.startswith("train.progress_bar")]
    cmd = [sys.executable, "-m", "jsddpm.cli", "train", *overrides, f"data.cache_dir={cache}",
           f"train.out_dir={tmp_path / 'run'}", "train.max_steps=3", "train.sample_every_n_epochs=0",
           "train.progress_bar=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)  # stdout and stderr are pipes
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "\r" not in log  # no carriage-return bar updates in a file
    for noise in ("GPU available", "TPU available", "litlogger", "LeafSpec", "v_num"):
        assert noise not in log, noise
    assert re.search(r"^train: step 1/3 .*loss \d\.\d{4} .*lr .*steps/s .*ETA \d+:\d\d$", proc.stdout, re.M)
    assert re.search(r"^train: step 3/3 ", proc.stdout, re.M)
    assert "`Trainer.fit` stopped: `max_steps=3` reached." in log  # Lightning's useful lines stay
    assert len(log) < 2000


def test_quiet_drops_only_the_listed_third_party_messages():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    log.addHandler(handler)
    try:
        quiet.install()
        quiet.install()  # idempotent: one filter
        assert sum(isinstance(f, quiet.DropLightningBanners) for f in log.filters) == 1
        log.warning("GPU available: False, used: False")
        log.warning("💡 Tip: For seamless cloud logging ... litlogger")
        log.warning("Restoring states from the checkpoint path at last.ckpt")
    finally:
        log.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["Restoring states from the checkpoint path at last.ckpt"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("`torch.jit.load` is deprecated. Please switch to `torch.export`.", DeprecationWarning,
                      stacklevel=1)
        warnings.warn("jsddpm: a warning of ours", UserWarning, stacklevel=1)
        warnings.warn("some other library's FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["jsddpm: a warning of ours", "some other library's FutureWarning"]


def test_terminal_bar_shows_loss_val_and_lr_instead_of_v_num():
    from types import SimpleNamespace

    from jsddpm.training.callbacks import LineProgress, ReadableProgressBar, progress_callbacks

    trainer = SimpleNamespace(progress_bar_metrics={"train/loss": 0.51234, "val/loss": 0.6, "v_num": "0_"},
                              optimizers=[SimpleNamespace(param_groups=[{"lr": 2.5e-4}])])
    assert ReadableProgressBar().get_metrics(trainer, None) == {"loss": "0.5123", "val": "0.6000", "lr": "2.50e-04"}
    assert [type(c) for c in progress_callbacks(True, interactive=True)] == [ReadableProgressBar]
    assert [type(c) for c in progress_callbacks(True, interactive=False)] == [LineProgress]
    assert progress_callbacks(False) == []
