"""benchmarks/gpu_check.sh --dry-run: the GPU machine's one call, every step at tiny sizes on the CPU, so
that the script cannot rot between the rare runs on a GPU."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_writes_its_results(demo_phantom, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORK=str(tmp_path / "work"),
               GPU_CHECK_COHORT=str(demo_phantom), OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary] == [[s, "ok"] for s in ("setup", "tests", "bench", "demo")]
    assert "GPU: none visible" in log and "jsddpm 0.1.0 from " + str(ROOT / "src") in log  # PYTHONPATH=src
    bench = (out / "bench.txt").read_text()
    assert "TFLOP/s" in bench and "measured matmul peak" in bench and "\ndemo_cpu," in bench
    assert '"metrics"' in (out / "diagnostics.json").read_text()
    assert "Headline" in (out / "report.html").read_text()
    assert (out / "gpu_check.log").read_text() == proc.stdout  # the whole log is kept as it goes
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files)  # what the GPU machine's tool brings back


FAKE_PYTHON = """#!/bin/sh
echo "fake $0 $*"
cat > /dev/null
"""


@pytest.mark.parametrize("python_set", [False, True])
def test_dry_run_takes_the_clone_s_venv_python_unless_python_is_set(tmp_path, python_set):
    """A fresh clone after `make test` has .venv/bin/python and no jsddpm on the system python3."""
    clone = tmp_path / "clone"
    (clone / "benchmarks").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_check.sh", clone / "benchmarks")
    pythons = {}
    for name, path in (("venv", clone / ".venv" / "bin" / "python"), ("given", tmp_path / "given" / "python")):
        path.parent.mkdir(parents=True)
        path.write_text(FAKE_PYTHON)
        path.chmod(0o755)
        pythons[name] = path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "OUT")}
    if python_set:
        env["PYTHON"] = str(pythons["given"])
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(tmp_path / "out")], cwd=clone,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    used = pythons["given"] if python_set else pythons["venv"]
    assert proc.returncode == 0, log[-3000:]
    assert f"fake {used} -m pytest -m gpu" in log and f"fake {used} benchmarks/train_bench.py" in log
    assert "python3" not in log.replace("python3.", "")
