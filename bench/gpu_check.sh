#!/usr/bin/env bash
# Everything the GPU needs checked, in one device call: build in place, the GPU test subset, the per-kernel
# profile and the side-by-side comparison. Logs, JSON rows and plots go to $OUT (default bench/out/gpu).
#
#   bash bench/gpu_check.sh [all|build|test|profile|bench|pytest-bench]...      (default: all)
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
want() { for s in "${stages[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }
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

if want test; then
  step "GPU tests"
  $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda_path.py tests/test_cuda_small_core.py tests/test_grouped.py \
      tests/test_consensus_tsvd.py tests/test_triton_kernels.py -k "cuda or CUDA or gpu or GPU" \
      --junitxml="$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.log" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want profile; then
  step profile
  for dt in float32 bfloat16; do
    $PY -m bench.profile --case large --dtype $dt --w-on-host 2>&1 | tee "$OUT/profile_large_$dt.log"
  done
  [ -f bench/small_core_timing.py ] && $PY bench/small_core_timing.py 2>&1 | tee "$OUT/small_core_timing.log"
fi

if want bench; then
  step "comparison (fp32)"
  rm -f "$OUT/results.jsonl"
  lib="consensus_tsvd exact,consensus_tsvd exact (CUDA graph),consensus_tsvd randomized,mix_factors (DLoRA),factored_cholesky,factored_householder,dense_svd_lowrank"
  # dense + linalg.svd costs ~2 s per 4096 x 4096 product: timed (one layer, extrapolated) on small only
  $PY -m bench.compare --cases small --device cuda --budget 3 --out "$OUT" 2>&1 | tee "$OUT/compare_small.log" || status=1
  $PY -m bench.compare --cases medium,large --device cuda --budget 3 --methods "$lib" --out "$OUT" 2>&1 \
      | tee "$OUT/compare_medium_large.log" || status=1
  step "comparison (bf16, large)"
  $PY -m bench.compare --cases large --dtype bfloat16 --device cuda --budget 3 \
      --methods "consensus_tsvd exact,consensus_tsvd exact (CUDA graph),factored_cholesky,mix_factors (DLoRA)" --out "$OUT" 2>&1 \
      | tee "$OUT/compare_large_bf16.log" || status=1
fi
if want pytest-bench; then
  step "pytest-benchmark (CUDA, exact)"
  $PY -m pytest -q -p no:cacheprovider bench/test_bench_consensus.py -k "cuda and exact" --benchmark-only \
      --benchmark-columns=median,iqr,rounds --benchmark-json="$OUT/pytest_benchmark.json" 2>&1 | tail -20
fi
exit $status
