#!/usr/bin/env bash
# The one-call GPU check (benchmarks/README.md, "The GPU check"). On the GPU machine, from the repository
# root, with the wheels of benchmarks/gpu_prepare.sh carried in .gpu_wheels/:
#
#   benchmarks/gpu_check.sh                # writes into $OUT (else ./gpu_check_out)
#   benchmarks/gpu_check.sh --dry-run      # the same steps at tiny sizes on the CPU (the test suite runs it)
#
# Steps, each under `timeout` and cut to the time left of --budget-s (default 470 s), each recorded in
# summary.txt as it ends, so a run stopped anywhere leaves what it finished:
#   1 setup   install the carried wheels with pip --target (never torch), PYTHONPATH=src, print versions + GPU
#   2 tests   pytest -m gpu tests/test_gpu.py (bf16 steps per preset, resume, generation, channels-last)
#   3 bench   benchmarks/train_bench.py res96 res128 res160 on CUDA in bf16 vs MONAI: images/s, TFLOP/s,
#             share of the measured bf16 matmul peak -> bench.txt
#   4 demo    jsddpm demo with the res96 UNet for the time left (about 4 minutes of training), then
#             generate and diagnose -> report.html, diagnostics.json, train_metrics.csv
# Output folder (at most 8 files): gpu_check.log (everything), summary.txt, bench.txt, report.html,
# diagnostics.json, train_metrics.csv.
# Environment: PYTHON (default python3), GPU_WHEELS (default .gpu_wheels), GPU_CHECK_WORK (scratch folder,
# default a new temporary one), GPU_CHECK_COHORT (an existing demo cohort folder to reuse instead of
# building one), GPU_CHECK_BUDGET_S (default 470).
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=0
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
OUT_DIR=${OUT:-gpu_check_out}
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) OUT_DIR=$2; shift ;;
        --budget-s) BUDGET_S=$2; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# PYTHON unset: a dry run (a fresh clone after `make test`) takes .venv/bin/python when there is one, else python3
if [ -z "${PYTHON:-}" ] && (( DRY )) && [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=${PYTHON:-python3}; fi
WHEELS=${GPU_WHEELS:-.gpu_wheels}
RESERVE_S=10      # kept for copying results and the summary
DEMO_OTHER_S=120  # cohort + cache + start + generate + diagnose + inpaint of the GPU demo (an estimate: untried)
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d)}
mkdir -p "$WORK"
SUMMARY=$OUT_DIR/summary.txt
T0=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

left() { echo $(( T0 + BUDGET_S - $(date +%s) )); }

# step NAME LIMIT_S CMD...: CMD under `timeout` (LIMIT_S, cut to the budget left); STEP_TEE=FILE copies its output
step() {
    local name=$1 limit=$2 budget rc t
    shift 2
    budget=$(( $(left) - RESERVE_S ))
    (( limit > budget )) && limit=$budget
    if (( limit < 10 )); then
        echo "== $name: skipped, the budget is spent"
        printf '%-6s %-18s %5s\n' "$name" "skipped (budget)" "-" >> "$SUMMARY"
        return 1
    fi
    echo "== $name (at most ${limit} s; $(( $(date +%s) - T0 )) s into the check)"
    t=$(date +%s)
    if [ -n "${STEP_TEE:-}" ]; then
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$STEP_TEE"
        rc=${PIPESTATUS[0]}
    else
        timeout --kill-after=10 "$limit" "$@"
        rc=$?
    fi
    local status=ok
    if (( rc == 124 || rc == 137 )); then status="stopped at ${limit} s"; elif (( rc != 0 )); then status="failed (exit $rc)"; fi
    printf '%-6s %-18s %5d s\n' "$name" "$status" $(( $(date +%s) - t )) >> "$SUMMARY"
    echo "== $name: $status"
    return "$rc"
}

versions() {
    "$PY" - <<'EOF'
import importlib.metadata as md, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__} from {torch.__file__}")
for name in ("lightning", "numpy", "scipy", "scikit-image", "scikit-learn", "matplotlib", "nibabel", "nilearn",
             "omegaconf", "PyWavelets", "monai", "einops"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
import jsddpm
print(f"jsddpm {jsddpm.__version__} from {jsddpm.__file__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"{torch.cuda.device_count()} visible, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("GPU: none visible (CPU run)")
EOF
}

setup() {
    if (( DRY )); then
        echo "dry run: $(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheel(s) in $WHEELS, not installed (this interpreter has the packages)"
    else
        ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run benchmarks/gpu_prepare.sh and carry it"; return 1; }
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            "$WHEELS"/*.whl || return 1
    fi
    versions
}

copy_demo_results() {
    local demo=$WORK/demo
    [ -f "$demo/report.html" ] && cp "$demo/report.html" "$OUT_DIR/"
    [ -f "$demo/diagnostics/diagnostics.json" ] && cp "$demo/diagnostics/diagnostics.json" "$OUT_DIR/"
    local metrics
    metrics=$(ls -t "$demo"/train/logs/version_*/metrics.csv 2>/dev/null | head -1)
    [ -n "$metrics" ] && cp "$metrics" "$OUT_DIR/train_metrics.csv"
    return 0
}

main() {
    echo "gpu_check: $( (( DRY )) && echo 'dry run (CPU, tiny sizes)' || echo 'GPU run'), budget ${BUDGET_S} s, out $OUT_DIR, work $WORK"
    : > "$SUMMARY"
    local failed=0 pytest_env=() bench demo
    if (( DRY )); then export PYTHONPATH="$PWD/src"; else export PYTHONPATH="$PWD/src:$WORK/site"; fi

    export -f setup versions
    export DRY PY WHEELS WORK
    step setup 120 bash -c setup || failed=1

    (( DRY )) && pytest_env=(env JSDDPM_GPU_TESTS_ON_CPU="${JSDDPM_GPU_TESTS_ON_CPU:-0}")
    step tests 150 "${pytest_env[@]}" "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -rs || failed=1

    if (( DRY )); then
        bench=("demo_cpu,data.image_size=16,model.attention_resolutions=[4]" --device cpu --precision fp32 --batch 4
               --steps 2 --warmup 1 --threads 1 --no-memory --worker-timeout 120)
    else
        bench=(res96 res128 res160 --device cuda --precision bf16 --batch 64 --steps 20 --warmup 5 --worker-timeout 90)
    fi
    STEP_TEE=$OUT_DIR/bench.txt step bench 180 "$PY" benchmarks/train_bench.py "${bench[@]}" || failed=1

    if [ -n "${GPU_CHECK_COHORT:-}" ] && [ ! -d "$WORK/demo/cohort" ]; then
        mkdir -p "$WORK/demo" && cp -r "$GPU_CHECK_COHORT" "$WORK/demo/cohort"
    fi
    local diag=(diagnostics.n_bootstrap=100 diagnostics.n_null_repeats=5 diagnostics.classifier_epochs=5
                diagnostics.classifier_repeats=1)
    if (( DRY )); then
        demo=(--config demo_cpu --subjects 8 --patients 4 --minutes 0.5 --pairs 4 data.image_size=32
              model.attention_resolutions=[8] train.max_steps=3 train.cpu_threads=1
              sample.steps=4 inpaint.steps=4 inpaint.min_fidelity=0.0 diagnostics.n_bootstrap=2 diagnostics.n_null_repeats=2
              diagnostics.classifier_epochs=1 diagnostics.classifier_folds=2 diagnostics.classifier_permutations=10
              diagnostics.classifier_repeats=1 diagnostics.utility_steps=3 diagnostics.utility_seeds=1
              diagnostics.utility_workers=1)
    else
        # the res96 UNet with the demo's data settings; the cosine spans 6,000 steps, the time limit may end it
        # sooner; last.ckpt (~300 MB with EMA and Adam states) every 2,000 steps, not every 200
        local minutes
        minutes=$("$PY" -c "print(max(round(min(4.0, ($(left) - $RESERVE_S - $DEMO_OTHER_S) / 60), 2), 0.1))")
        demo=(--config res96 --minutes "$minutes" data.n_zbins=10 data.lesion_oversample=4.0
              loss.lesion_weight=5.0 train.batch_size=32 train.lr=2e-4 train.warmup_steps=200 train.max_steps=6000
              train.val_every_n_epochs=10 train.val_max_samples=128 train.sample_every_n_epochs=50
              train.ckpt_every_n_steps=2000
              sample.batch_size=256 inpaint.min_fidelity=0.3 sample.fidelity_tries=6 "${diag[@]}")
    fi
    step demo 600 "$PY" -m jsddpm.cli demo --out "$WORK/demo" "${demo[@]}" || failed=1
    copy_demo_results

    echo "== summary ($(( $(date +%s) - T0 )) s in all)"
    cat "$SUMMARY"
    ls -la "$OUT_DIR"
    return "$failed"
}

main 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
