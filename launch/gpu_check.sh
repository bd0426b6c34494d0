#!/usr/bin/env bash
# The GPU check: one command on a single-GPU machine without network access.
# Installs the pure-Python/compiled wheels carried in .whl/ (grain, array_record,
# ml_collections, tensorboardX, portpicker: not on the GPU image), runs the GPU
# tests (the fused kernel compiled by Triton against its twin included) and the
# kernel / sampler / train-step benchmarks, and prints their tables.
#
#   bash launch/gpu_check.sh            # full (LLaDA-8B sampler, 1B train step)
#   SMALL=1 bash launch/gpu_check.sh    # the same at CPU-sized shapes
#   QUICK=1 bash launch/gpu_check.sh    # GPU tests, batch-1 sampler, train step only
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

echo "== tests"
python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tail -3
[ -z "${QUICK:-}" ] && python3 -m pytest -q tests/test_fused_kernel.py \
  tests/test_fast_sampling.py tests/test_model.py 2>&1 | tail -3

if [ -n "${SMALL:-}" ]; then
  S8="--preset=tiny --dtype=float32 --prompt_len=32 --gen_length=64 --block_length=16"
  T1="--preset=tiny --seq_len=128 --batch=8"
  K="--vocab=4096 --rows=64,512"
else
  S8="--preset=llada_8b --dtype=bfloat16 --prompt_len=128 --gen_length=256 --block_length=32"
  T1="--preset=llada_1b --dtype=bfloat16 --seq_len=2048 --batch=4"
  K="--rows=384,12288"
fi
echo "== fused kernel vs XLA"
python3 -m launch.bench_kernel $K 2>&1 | tee "$OUT/bench_kernel.txt" | grep -v -i warn
echo "== sampler, batch 1: (a) 1/step, (b) 8/step, dual cache, (c) threshold + dual, (d) AR"
# The prefix cache traces one model copy per block (its window shrinks): at the
# 8B shape that compile is slow, so it is left to a separate run.
python3 -m launch.bench_sampler $S8 --batch=1 --tokens_per_step=8 --repeats=2 \
  --variants=uncached_1,uncached_k,dual_k,dual_threshold,ar_cached \
  2>&1 | tee "$OUT/bench_sampler_b1.txt" | grep -v -i warn
if [ -z "${QUICK:-}" ]; then
  echo "== sampler, batch 32"
  python3 -m launch.bench_sampler $S8 --batch=32 --tokens_per_step=8 --repeats=1 \
    --variants=uncached_k,dual_k,ar_cached 2>&1 | tee "$OUT/bench_sampler_b32.txt" \
    | grep -v -i warn
fi
echo "== train step"
python3 -m launch.bench_train $T1 --steps=5 2>&1 | tee "$OUT/bench_train.txt" | grep -v -i warn
