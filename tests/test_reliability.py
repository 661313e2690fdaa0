"""Reliability (issue 9, docs/failures.md): nothing non-finite passes silently, one run per output folder,
every failure one line with exit 2 (130 for SIGINT / SIGTERM) and nothing half-written left behind.

Every case goes through `jsddpm.cli.main`; real second processes where a lock or a signal needs one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_training import TINY, write_tiny_cache

from jsddpm.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = [*TINY, "train.sample_every_n_epochs=0", "train.ckpt_every_n_steps=1"]


def cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and the last stderr line of `jsddpm ARGV`."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def leftovers(folder: Path) -> list[str]:
    """Hidden temp folders, old copies and lock files: what a finished or failed run must not leave."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or
                  ".old-" in p.name or p.name.endswith(".lock")))


@pytest.fixture
def cache(tmp_path) -> Path:
    return write_tiny_cache(tmp_path / "cache")


def train_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *QUICK, "train.max_steps=2", f"data.cache_dir={cache}", f"train.out_dir={out}", *extra]


def image_folder(root: Path, n: int = 3) -> Path:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), (40 * i + 20) % 256, np.uint8)).save(root / name / f"{i}.png")
    return root


# ------------------------------------------------------------------------- 1. non-finite values
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_tiff_with_one_nan_or_inf_pixel_is_refused(tmp_path, capsys, bad):
    root = image_folder(tmp_path / "images")
    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    pixels[3, 4] = bad
    Image.fromarray(pixels, mode="F").save(root / "a" / "float.tif")
    code, line = cli(capsys, "cache", "--images", root, "--out", tmp_path / "c", "data.image_size=8")
    assert code == 2 and "float.tif: image contains NaN or Inf pixels" in line
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []


def test_non_finite_config_numbers_are_refused_naming_where_they_came_from(tmp_path, capsys, cache):
    out = tmp_path / "run"
    code, line = cli(capsys, *train_args(cache, out, "train.lr=inf"))
    assert code == 2 and line.endswith("command-line override train.lr: train.lr=inf is not a finite number; "
                                       "give a finite value")
    preset = tmp_path / "preset.yaml"
    preset.write_text("train:\n  lr: 0.001\n")
    code, line = cli(capsys, "train", "--config", preset, f"data.cache_dir={cache}", "train.lr=nan")
    assert code == 2 and "command-line override train.lr: train.lr=nan" in line  # not the file
    preset.write_text("loss:\n  p: .nan\n")
    code, line = cli(capsys, "train", "--config", preset, f"data.cache_dir={cache}")
    assert code == 2 and f"{preset}: loss.p=nan is not a finite number" in line
    preset.write_text("- data\n- model\n")
    code, line = cli(capsys, "train", "--config", preset)
    assert code == 2 and "the top level is a list" in line
    code, line = cli(capsys, "train", "train.lr=${nope}")
    assert code == 2 and "bad value for 'train.lr': Interpolation key 'nope' not found" in line
    assert not out.exists()


@pytest.mark.parametrize("given, line", [
    # the bad key is reported, not a valid key given beside it on the same command line
    (["inpaint.dilate_px=2", "inpaint.placement_tries=0"],
     "command-line override inpaint.placement_tries: inpaint.placement_tries must be at least 1"),
    (["diagnostics.utility_seeds=2", "diagnostics.utility_steps=0"],
     "command-line override diagnostics.utility_steps: diagnostics.utility_steps must be at least 1"),
    (["data.augment.crop_scale=0.5"],  # a three-part key is a command-line override too, not "defaults"
     "command-line override data.augment.crop_scale: data.augment.crop_scale must be >= 1"),
    (["diffusion.p_mean=1e30"], "command-line override diffusion.p_mean: diffusion.p_mean must be in [-10, 10]"),
    (["diffusion.p_std=1e30"], "diffusion.p_std must be in (0, 10]"),
    (["diagnostics.severity_scale=0"], "diagnostics.severity_scale must be > 0"),
])
def test_range_checks_name_the_key_to_change(tmp_path, capsys, given, line):
    code, last = cli(capsys, "train", *given, "train.out_dir=" + str(tmp_path / "run"))
    assert code == 2 and line in last, last
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, capsys, cache):
    out = tmp_path / "run"
    # lr 1e30: step 1 moves the weights to ~1e30 (still finite), step 2's loss overflows
    code, line = cli(capsys, *train_args(cache, out, "train.max_steps=5", "train.lr=1e30"))
    assert code == 2
    assert "step 2: the loss became NaN or Inf; training stopped and" in line and "(step 1) is kept" in line
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    from jsddpm.training.callbacks import AtomicCheckpointIO, NonFiniteTraining

    path = tmp_path / "last.ckpt"
    path.write_bytes(b"the last good checkpoint")
    state = {"global_step": 7, "state_dict": {"w": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(NonFiniteTraining, match="step 7: 1 weight tensor"):
        AtomicCheckpointIO().save_checkpoint(state, path)
    assert path.read_bytes() == b"the last good checkpoint" and leftovers(tmp_path) == []


def _damage(cache: Path, how: str) -> str:
    """Damage a built cache the way a crash or a hand edit would; returns the file the error must name."""
    images = np.load(cache / "images.npy")
    if how == "nan":
        images[2, 0, 5, 5] = np.nan
        np.save(cache / "images.npy", images)
    elif how == "truncated":
        data = (cache / "images.npy").read_bytes()
        (cache / "images.npy").write_bytes(data[: len(data) // 2])
    elif how == "objects":
        np.save(cache / "images.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    elif how == "short_index":
        lines = (cache / "index.csv").read_text().splitlines(keepends=True)
        (cache / "index.csv").write_text("".join(lines[:-3]))
        return "index.csv"
    elif how == "masks":
        np.save(cache / "masks.npy", np.load(cache / "masks.npy")[:-1])
        return "masks.npy"
    elif how == "priors":
        np.save(cache / "priors.npy", np.full((4, 16, 16), np.inf, np.float32))
        return "priors.npy"
    return "images.npy"


@pytest.mark.parametrize("how", ["nan", "truncated", "objects", "short_index", "masks", "priors"])
def test_damaged_cache_is_refused_in_one_line_naming_the_file(tmp_path, capsys, cache, how):
    name = _damage(cache, how)
    code, line = cli(capsys, *train_args(cache, tmp_path / "run"))
    assert code == 2 and f"{cache / name}:" in line and "rebuild" in line, line
    code, line = cli(capsys, "diagnose", "run-all", "--real", cache, "--synthetic", cache, "--out", tmp_path / "d")
    assert code == 2 and f"{cache / name}:" in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "d").exists()


# ------------------------------------------------------------------------ 2. one run per folder
HOLD = """
import sys, time
from jsddpm.io import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def holder(out: Path):
    """A second real process holding the lock of `out` (as a running jsddpm stage does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_into_a_held_folder_fails_and_a_killed_holder_does_not_block(tmp_path, capsys, cache):
    images = image_folder(tmp_path / "images")
    out, run = tmp_path / "c", tmp_path / "run"
    with holder(out) as proc:
        code, line = cli(capsys, "cache", "--images", images, "--out", out, "data.image_size=8")
        assert code == 2 and line.endswith(f"{out}: another jsddpm run (pid {proc.pid}) is writing into this "
                                           "folder; wait for it to finish or choose another output folder")
    # killed with SIGKILL: its lock file stays, but the kernel released the lock
    assert (tmp_path / ".c.lock").exists()
    assert cli(capsys, "cache", "--images", images, "--out", out, "data.image_size=8")[0] == 0
    with holder(run):
        code, line = cli(capsys, *train_args(cache, run, "train.max_steps=1"))
        assert code == 2 and "another jsddpm run" in line and not run.exists()
    assert cli(capsys, *train_args(cache, run, "train.max_steps=1"))[0] == 0
    study, diag = tmp_path / "study", tmp_path / "diag"
    with holder(study), holder(diag):
        code, line = cli(capsys, "study", "--out", study, "--cache", cache, "--grid", "loss.p=1.5,2.0")
        assert code == 2 and "another jsddpm run" in line
        code, line = cli(capsys, "diagnose", "run-all", "--real", cache, "--real-split", "val", "--synthetic",
                         cache, "--synthetic-split", "train", "--out", diag)
        assert code == 2 and "another jsddpm run" in line
    # finished runs leave nothing; the killed holders leave their lock files for the next run to take over
    assert leftovers(tmp_path) == [".diag.lock", ".study.lock"]


def test_stale_temp_folders_of_killed_runs_are_removed_by_the_next_run(tmp_path, capsys):
    images = image_folder(tmp_path / "images")
    for stale in (".c.tmp-k9dead", ".c.old-4242"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "images.npy").write_bytes(b"half")
    (tmp_path / ".other.tmp-x").mkdir()  # another output's: not ours to remove
    assert cli(capsys, "cache", "--images", images, "--out", tmp_path / "c", "data.image_size=8")[0] == 0
    assert leftovers(tmp_path) == [".other.tmp-x"]


# --------------------------------------------------------------- 3. one line, exit 2, every time
def test_output_that_is_a_file_or_the_current_folder(tmp_path, capsys, monkeypatch):
    images = image_folder(tmp_path / "images")
    (tmp_path / "f").write_text("x")
    code, line = cli(capsys, "cache", "--images", images, "--out", tmp_path / "f")
    assert code == 2 and "exists and is a file, not a folder" in line
    monkeypatch.chdir(tmp_path / "images" / "a")
    code, line = cli(capsys, "phantom", "--out", ".")
    assert code == 2 and "is the current folder" in line


def test_npz_sets_with_no_images_or_python_objects(tmp_path, capsys, cache):
    empty, objects = tmp_path / "empty.npz", tmp_path / "objects.npz"
    np.savez(empty, images=np.zeros((0, 1, 16, 16), np.float32))
    np.savez(objects, images=np.array([np.zeros((1, 4, 4)), "x"], dtype=object))
    run_all = ["diagnose", "run-all", "--real", cache, "--real-split", "val", "--out", tmp_path / "d"]
    code, line = cli(capsys, *run_all, "--synthetic", empty)
    assert code == 2 and "'images' holds 0 images" in line
    code, line = cli(capsys, *run_all, "--synthetic", objects)
    assert code == 2 and f"{objects}: not a readable .npz set" in line


def test_aggregate_of_a_diagnostics_json_holding_a_list(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "diagnostics.json").write_text("[]")
    code, line = cli(capsys, "diagnose", "aggregate", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "agg")
    assert code == 2 and "not a diagnostics record" in line


def diagnostics_folder(folder: Path, severity: float = 0.3, **metrics) -> Path:
    """A diagnostics folder as run-all writes it (severity record, metric records), written with json.dumps,
    which writes a float NaN as a bare `NaN` (what a hand edit or another tool leaves)."""
    folder.mkdir(parents=True)
    values = {"spectral_slope_diff": 0.01, "wavelet_hh_l1_ratio": 0.9, "glcm_dissimilarity_real": 4.0,
              "glcm_dissimilarity_synth": 4.1, "gradient_mean_real": 0.7, "gradient_mean_synth": 0.71,
              "background_std_synth": 0.003, "classifier_auc_dithered": 0.6, **metrics}
    records = {k: {"value": v, "null_mean": 0.0, "null_sd": 0.01} for k, v in values.items()}
    sev = {"severity": severity, "component_set": ["spectral_slope_diff"], "version": 2}
    (folder / "diagnostics.json").write_text(json.dumps({"metrics": records, "severity": sev}))
    return folder


@pytest.mark.parametrize("where, bad", [("severity.severity", {"severity": np.nan}),
                                        ("metrics.spectral_slope_diff.value", {"spectral_slope_diff": np.inf})])
def test_aggregate_and_criteria_refuse_nan_or_inf_naming_the_file_and_field(tmp_path, capsys, where, bad):
    good = diagnostics_folder(tmp_path / "good", severity=0.2)
    damaged = diagnostics_folder(tmp_path / "damaged", **bad)
    code, line = cli(capsys, "diagnose", "aggregate", good, damaged, "--out", tmp_path / "agg")
    assert code == 2 and f"{damaged / 'diagnostics.json'}: {where} is " in line and "not a finite number" in line
    assert not (tmp_path / "agg").exists()
    code, line = cli(capsys, "diagnose", "criteria", "--baseline", good, "--candidate", damaged)
    assert code == 2 and f"{damaged / 'diagnostics.json'}: {where} is " in line
    assert not (damaged / "criteria.json").exists()


def test_criteria_exit_codes_and_a_severity_that_is_a_number(tmp_path, capsys):
    base = diagnostics_folder(tmp_path / "base", severity=0.5)
    better = diagnostics_folder(tmp_path / "better", severity=0.2)
    worse = diagnostics_folder(tmp_path / "worse", severity=0.6, wavelet_hh_l1_ratio=0.5)
    assert cli(capsys, "diagnose", "criteria", "--baseline", base, "--candidate", better)[0] == 0
    assert cli(capsys, "diagnose", "criteria", "--baseline", base, "--candidate", worse)[0] == 3  # not 1: a bug
    assert json.loads((worse / "criteria.json").read_text())["all_passed"] is False
    number = tmp_path / "number"
    number.mkdir()
    record = json.loads((better / "diagnostics.json").read_text())
    (number / "diagnostics.json").write_text(json.dumps(dict(record, severity=0.2)))
    code, line = cli(capsys, "diagnose", "criteria", "--baseline", base, "--candidate", number)
    assert code == 2 and f"{number / 'diagnostics.json'}: 'severity' is float 0.2, not the mapping" in line
    code, line = cli(capsys, "diagnose", "aggregate", base, number, "--out", tmp_path / "agg")
    assert code == 2 and "'severity' is float 0.2" in line


def test_inpaint_with_an_impossible_count_is_refused_in_one_line(tmp_path, capsys, demo_cache):
    from conftest import write_random_checkpoint
    from test_inpaint import TINY64

    from jsddpm.config import load_config
    from jsddpm.data.cache import load_cache

    source = load_cache(demo_cache)
    ckpt = write_random_checkpoint(tmp_path / "last.ckpt", load_config(None, TINY64), 0.1, source.classes,
                                   source.priors, source.stats["spacing_mm"])
    code, line = cli(capsys, "inpaint", "--ckpt", ckpt, "--source", demo_cache, "--out", tmp_path / "o",
                     "--n", 10**15)
    assert code == 2 and "--n 1000000000000000: " in line and "give at most --n " in line, line
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_os_errors_and_malformed_files_end_in_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    """The mechanism: an OSError nobody foresaw still ends in one line with its path, exit 2."""
    import errno

    from jsddpm.commands import phantom

    def broken(args):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "x"))

    monkeypatch.setattr(phantom, "run", broken)
    assert cli(capsys, "phantom", "--out", tmp_path / "p") == (
        2, f"jsddpm phantom: error: {tmp_path / 'x'}: input/output error from the storage; check the disk")

    def bad_json(args):
        json.loads("{")

    monkeypatch.setattr(phantom, "run", bad_json)
    code, line = cli(capsys, "phantom", "--out", tmp_path / "p")
    assert code == 2 and "JSONDecodeError" in line


# ----------------------------------------------------------- read-only and full file systems
@contextlib.contextmanager
def mounted(folder: Path, options: str):
    folder.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode
    if ok != 0:
        pytest.skip("mounting a tmpfs is not allowed here (see test_full_disk_simulated_at_the_write)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_file_system(tmp_path, capsys, cache):
    images = image_folder(tmp_path / "images")
    with mounted(tmp_path / "ro", "ro,size=1m") as ro:
        code, line = cli(capsys, "cache", "--images", images, "--out", ro / "c", "data.image_size=8")
        assert code == 2 and line.endswith(f"{ro / 'c'}: read-only file system; choose a writable output folder")
        code, line = cli(capsys, *train_args(cache, ro / "run"))
        assert code == 2 and "read-only file system" in line
        assert list(ro.iterdir()) == []


def test_full_disk(tmp_path, capsys, cache):
    images = image_folder(tmp_path / "images", n=40)
    with mounted(tmp_path / "full", "size=200k") as full:
        code, line = cli(capsys, "cache", "--images", images, "--out", full / "c", "data.image_size=32")
        assert code == 2 and f"{full / 'c' / 'images.npy'}: no space left on device" in line  # not the temp name
        assert list(full.iterdir()) == []
        (full / "ballast").write_bytes(b"\0" * 150_000)  # config.yaml fits, a checkpoint does not
        code, line = cli(capsys, *train_args(cache, full / "run", "train.max_steps=2"))
        assert code == 2 and "no space left on device" in line
        assert sorted(p.name for p in full.iterdir()) == ["ballast"]  # no config.yaml, logs/, checkpoints/


def test_full_disk_simulated_at_the_write(tmp_path, capsys, monkeypatch):
    """The same, where mounting is not allowed: the write itself fails with ENOSPC."""
    import errno

    images = image_folder(tmp_path / "images")

    def full(file, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)  # what jsddpm.io.atomic_save_npy writes with
    code, line = cli(capsys, "cache", "--images", images, "--out", tmp_path / "c", "data.image_size=8")
    monkeypatch.undo()
    assert code == 2 and f"{tmp_path / 'c' / 'images.npy'}: no space left on device" in line
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------- 4. nothing left behind
@pytest.mark.parametrize("bad", ["model.channel_mult=[1,-2]", "model.channel_mult=[1,2,2,2,2,2]",
                                 "model.attention_resolutions=[5]", "model.norm_groups=3", "model.prior_tokens=5",
                                 "model.attention_head_dim=0"])
def test_model_config_errors_are_found_before_anything_is_written(tmp_path, capsys, cache, bad):
    code, line = cli(capsys, *train_args(cache, tmp_path / "run", bad))
    assert code == 2 and bad.split("=")[0] in line
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- 5. smaller things
def test_manifest_details(tmp_path, capsys, demo_phantom):
    rows = (demo_phantom / "manifest.csv").read_text().splitlines()
    header = rows[0]
    image = demo_phantom / rows[1].split(",")[header.split(",").index("image")]
    manifest = tmp_path / "m.csv"

    def attempt(image_cell: str, subject: str = "s1", bom: bool = True) -> tuple[int, str]:
        text = f"{header}\n{subject},{image_cell},,control\n"
        manifest.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
        out = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        return cli(capsys, "cache", "--manifest", manifest, "--out", out, "data.image_size=32",
                   "data.n_zbins=2", "data.split_fractions=[1,0,0]")

    assert attempt(str(image))[0] == 0  # a spreadsheet's "CSV UTF-8" (BOM) is read
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert attempt(str(tmp_path))[1].endswith(f"{tmp_path}: image is a folder, not a file; fix the path in the "
                                              "manifest")
    assert "image is a symlink loop" in attempt(str(tmp_path / "loop"))[1]
    code, line = attempt(str(image), subject="")
    assert code == 2 and "empty subject_id" in line


def test_multi_frame_tiff_and_large_batch_warn(tmp_path, capsys, cache):
    root = image_folder(tmp_path / "images")
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(root / "a" / "stack.tif", save_all=True, append_images=frames[1:])
    code, line = cli(capsys, "cache", "--images", root, "--out", tmp_path / "c", "data.image_size=8")
    assert code == 0 and "hold several frames" in line and "only the first frame" in line
    code = main(train_args(cache, tmp_path / "run", "train.max_steps=1", "train.batch_size=64"))
    assert code == 0 and "train.batch_size=64 is larger than the 15 train slices" in capsys.readouterr().err


def test_sigint_writes_a_resumable_checkpoint_and_exits_130(tmp_path, capsys, cache):
    out = tmp_path / "run"

    def interrupt_once_training():
        deadline = time.time() + 120
        while not (out / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_training, daemon=True).start()
    code, line = cli(capsys, *train_args(cache, out, "train.max_steps=100000"))
    assert code == 130 and "interrupted; SIGINT at step" in line and "train.resume=auto" in line
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"SIGINT at step {step}:" in line
    assert cli(capsys, *train_args(cache, out, f"train.max_steps={step + 1}", "train.resume=auto"))[0] == 0


def test_sigterm_checkpoints_and_stops_within_a_step(tmp_path, cache):
    """A cluster's SIGTERM to a real `jsddpm train` process."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jsddpm.cli", *train_args(cache, out, "train.max_steps=100000")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "checkpoints" / "last.ckpt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert time.time() - sent < 10
    last_line = err.strip().splitlines()[-1]
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert last_line.startswith(f"jsddpm train: interrupted; SIGTERM at step {step}: wrote ")


def test_sigterm_in_any_other_stage_unwinds_like_ctrl_c(tmp_path, capsys, monkeypatch):
    """`cache` (any stage but train): SIGTERM leaves no temp folder and no lock, exit 130."""
    from jsddpm.data import images as images_module

    images = image_folder(tmp_path / "images")
    read_image = images_module.read_image

    def terminated_while_reading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return read_image(*args, **kwargs)

    monkeypatch.setattr(images_module, "read_image", terminated_while_reading)
    assert cli(capsys, "cache", "--images", images, "--out", tmp_path / "c") == (130, "jsddpm cache: interrupted")
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command
