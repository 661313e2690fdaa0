#!/usr/bin/env bash
# Run HERE, on a machine that reaches PyPI, before benchmarks/gpu_check.sh runs on the GPU machine (which
# reaches no registry). Downloads, for CPython 3.12 on manylinux x86-64, the wheels of the packages the
# GPU machine lacks into .gpu_wheels/ (git-ignored), pinned to the versions this checkout's .venv tests
# with (MONAI: the version train_bench.py was tried with). The lead carries the folder:
#   run(carry=[".gpu_wheels"], command="benchmarks/gpu_check.sh", timeout_s=600)
# No dependencies are fetched (--no-deps): the GPU machine has torch, numpy, scipy, pandas, PyYAML,
# einops, scikit-learn, lightning ... already; omegaconf 2.4 carries its own antlr4 runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu_wheels}
PY=${PYTHON:-.venv/bin/python}
MONAI_VERSION=${MONAI_VERSION:-1.6.1}

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PACKAGES=("nibabel==$(version nibabel)" "nilearn==$(version nilearn)" "omegaconf==$(version omegaconf)"
          "PyWavelets==$(version PyWavelets)" "monai==$MONAI_VERSION")
rm -rf "$DEST"
mkdir -p "$DEST"
echo "downloading ${PACKAGES[*]} -> $DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PACKAGES[@]}"
ls -l "$DEST"
du -sh "$DEST"
