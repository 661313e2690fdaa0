"""The wheel users install: built from the sources alone, installed without the checkout on the path,
`jsddpm --help` and a 2-step `jsddpm train` on a preset that must come from inside the wheel."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd, env, cwd, timeout=300):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_installs_and_trains_from_its_own_presets(tmp_path):
    from test_training import TINY, write_tiny_cache

    # build from a copy holding only what the sdist would: the checkout's build/ and egg-info stay untouched
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "dist")], env, project)
    wheel = next((tmp_path / "dist").glob("jsddpm-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    presets = sorted(p.name for p in (ROOT / "src" / "jsddpm" / "configs").glob("*.yaml"))
    assert presets and all(f"jsddpm/configs/{p}" in names for p in presets)
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(target),
         str(wheel)], env, tmp_path)
    env["PYTHONPATH"] = str(target)  # ahead of the editable install's path to src/
    work = tmp_path / "work"
    work.mkdir()
    where = run([sys.executable, "-c", "import jsddpm; print(jsddpm.__file__)"], env, work)
    assert where.strip().startswith(str(target))
    jsddpm = [str(target / "bin" / "jsddpm")]  # the console script from the wheel's entry point
    assert "train" in run(jsddpm + ["--help"], env, work)

    cache = write_tiny_cache(tmp_path / "cache")
    run(jsddpm + ["train", "--config", "demo_cpu", *TINY, f"data.cache_dir={cache}", "data.image_size=16",
                  f"train.out_dir={work / 'run'}", "train.max_steps=2", "train.sample_every_n_epochs=0"], env, work)
    assert (work / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "lesion_oversample: 4.0" in (work / "run" / "config.yaml").read_text()  # demo_cpu's, from the wheel
