#!/usr/bin/env bash
# The GPU check: one command on a single-GPU machine without network access.
# Installs the pure-Python/compiled wheels carried in .whl/ (grain, array_record,
# ml_collections, tensorboardX, portpicker: not on the GPU image), runs the GPU
# tests (the fused kernel compiled by Triton against its twin included) and the
# kernel / sampler / train-step benchmarks, and prints their tables.
#
#   bash launch/gpu_check.sh            # full (LLaDA-8B sampler, 1B train step)
#   SMALL=1 bash launch/gpu_check.sh    # the same at CPU-sized shapes
#   QUICK=1 bash launch/gpu_check.sh    # without the batch-32 sampler and the
#                                       # atomic-scatter train row
#   ALL_TESTS=1 ...                     # also the CPU suites' kernel/sampler tests
#   PART=train bash launch/gpu_check.sh     # the train-step (MFU) table only
#   PART=sample bash launch/gpu_check.sh    # tests, kernel and sampler tables only
#   PART=kernel bash launch/gpu_check.sh    # tests and the kernel table only
# Each command runs under `timeout` ($LIMIT seconds, default 240), so one hang
# cannot take the whole lease; logs are written to $OUT. At full size on an H100
# (2026-11-27) PART=train took 354 s and PART=sample over 363 s (its last row
# was cut), machine start not included: one lease call (10 min at most) per part.
set -uo pipefail
cd "$(dirname "$0")/.."
. launch/gpu_env.sh
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
PART=${PART:-all}; T="timeout ${LIMIT:-240}"

if [ -n "${SMALL:-}" ]; then
  S8="--preset=tiny --dtype=float32 --prompt_len=32 --gen_length=64 --block_length=16"
  T1="--preset=tiny --seq_len=128"
  K="--vocab=4096 --rows=64,512"
else
  S8="--preset=llada_8b --dtype=bfloat16 --prompt_len=128 --gen_length=256 --block_length=32"
  T1="--preset=llada_1b --dtype=bfloat16 --seq_len=2048"
  K="--rows=384,12288"
fi

if [ "$PART" = all ] || [ "$PART" = train ]; then
  echo "== train step (MFU): unpacked rows (mask-free attention; the embedding"
  echo "   gradient as a scatter or a one-hot product), then one-document segment"
  echo "   ids (the masked path packed data takes)"
  $T python3 -m launch.bench_train $T1 --batch=8,8,4,16,8 \
    --grad_accum_steps=1,1,1,2,1 --embed_grad=scatter,onehot,scatter,scatter,scatter \
    --segments=false,false,false,false,true --steps=5 --warmup=1 \
    --profile_dir=/tmp/prof 2>&1 | tee "$OUT/bench_train.txt" | grep -v -i warn
  for row in 0 1; do  # batch 8: scatter and one-hot embedding gradients
    echo "== where row $row's step spends device time (2 profiled steps)"
    python3 -m launch.profile_summary /tmp/prof/row$row --steps=2 --top=25 2>&1 \
      | tee "$OUT/profile_row$row.txt"
  done
  cp "$(find /tmp/prof/row0 -name perfetto_trace.json.gz | head -1)" \
    "$OUT/perfetto_row0.json.gz" 2>/dev/null
  if [ -z "${QUICK:-}" ]; then
    # XLA makes scatters deterministic by sorting (its scatter determinism
    # expander); the atomic scatter it replaces may be faster, summing in a
    # varying order. (Triton GEMMs off changed nothing: perf_notes.)
    echo "== train step, batch 8, XLA's scatter determinism expander off"
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_scatter_determinism_expander=false" \
      $T python3 -m launch.bench_train $T1 --batch=8 --steps=5 --warmup=1 2>&1 \
      | tee "$OUT/bench_train_atomic_scatter.txt" | grep -v -i warn | tail -1
  fi
fi
[ "$PART" = train ] && exit 0

echo "== tests"
$T python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/tests.txt" | tail -3
# The CPU suites' kernel, sampler and model tests, run on the GPU (slow: opt-in).
[ -n "${ALL_TESTS:-}" ] && $T python3 -m pytest -q tests/test_fused_kernel.py \
  tests/test_fast_sampling.py tests/test_model.py 2>&1 | tail -3
echo "== fused kernel vs XLA"
$T python3 -m launch.bench_kernel $K 2>&1 | tee "$OUT/bench_kernel.txt" | grep -v -i warn
[ "$PART" = kernel ] && exit 0
echo "== sampler, batch 1: (b) 8/step, dual cache, (c) threshold + dual, (d) AR"
# (a) 1/step (86.7 tokens/s, perf_notes) is left out to save lease time; the
# prefix cache traces one model copy per block (its window shrinks), which at the
# 8B shape compiles slowly: both run with --variants in a separate call.
$T python3 -m launch.bench_sampler $S8 --batch=1 --tokens_per_step=8 --repeats=2 \
  --variants=${VARIANTS:-uncached_k,dual_k,dual_threshold,ar_cached} \
  2>&1 | tee "$OUT/bench_sampler_b1.txt" | grep -v -i warn
if [ -z "${QUICK:-}" ]; then
  echo "== sampler, batch 32"
  $T python3 -m launch.bench_sampler $S8 --batch=32 --tokens_per_step=8 --repeats=1 \
    --variants=uncached_k,dual_k,ar_cached 2>&1 | tee "$OUT/bench_sampler_b32.txt" \
    | grep -v -i warn
fi
