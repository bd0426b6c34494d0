#!/usr/bin/env bash
# The measured-gap check in one lease call (about 8 minutes on an H100/H200,
# machine start not included): GPU tests, the candidate kernel's launch shapes
# against XLA, the dual-cache and block-diffusion samplers at the LLaDA-8B shape,
# and the llada_1b train step with packed documents (masked vs cuDNN's packed
# layout) and the one-hot embedding gradient. Wheels for grain, array_record,
# ml_collections and portpicker (not on the GPU image) are carried in .whl/.
#
#   bash launch/gpu_gaps.sh             # full size
#   SMALL=1 bash launch/gpu_gaps.sh     # the same commands at CPU-sized shapes
#   PART=sample|train bash launch/gpu_gaps.sh   # one half
#
# Each command runs under `timeout` so one hang cannot take the lease; full logs
# go to $OUT, the tables to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
. launch/gpu_env.sh
OUT=${OUT:-/tmp/gpu_gaps}; mkdir -p "$OUT"
PART=${PART:-all}
T() { local s=$1; shift; timeout "$s" "$@"; }
show() { grep -v -i -E 'warn|^\s*$' "$@"; }
START=$(date +%s)
stamp() { echo "-- $(( $(date +%s) - START )) s: $*"; }

if [ -n "${SMALL:-}" ]; then
  S8="--preset=tiny --dtype=float32 --prompt_len=32 --gen_length=64 --block_length=16"
  T1="--preset=tiny --seq_len=128 --batch=4"
  K="--vocab=4096 --rows=64,512 --head_dim=256 --head_rows=32,512"
  B32=4
else
  S8="--preset=llada_8b --dtype=bfloat16 --prompt_len=128 --gen_length=256 --block_length=32"
  T1="--preset=llada_1b --dtype=bfloat16 --seq_len=2048 --batch=8"
  K="--rows=384,12288 --head_dim=4096"
  B32=32
fi

if [ "$PART" = all ] || [ "$PART" = train ]; then
  stamp "train step: unpacked (scatter / one-hot embedding gradient), 8 documents"
  stamp "per row (cuDNN masked vs packed layout), 1 document (packed layout)"
  T 240 python3 -m launch.bench_train $T1 --steps=5 --warmup=1 \
    --embed_grad=scatter,onehot,scatter,scatter,scatter \
    --segments=false,false,8,8,1 --attention_impl=default,default,cudnn,cudnn_packed,cudnn_packed \
    2>&1 | tee "$OUT/train.txt" | show | tail -9
fi
if [ "$PART" = all ] || [ "$PART" = sample ]; then
  stamp "dual cache (Fast-dLLM), batch 1, 8 tokens/step"
  T 120 python3 -m launch.bench_sampler $S8 --batch=1 --tokens_per_step=8 --repeats=3 \
    --variants=uncached_k,dual_k 2>&1 | tee "$OUT/sampler.txt" | show | tail -5
  stamp "block diffusion sampler, batch 1"
  T 130 python3 -m launch.bench_block $S8 --batch=1 --tokens_per_step=8 --repeats=3 \
    --variants=uncached,cached,fused 2>&1 | tee "$OUT/block_b1.txt" | show | tail -6
  stamp "block diffusion sampler, batch $B32"
  T 130 python3 -m launch.bench_block $S8 --batch=$B32 --tokens_per_step=8 --repeats=2 \
    --variants=cached,fused 2>&1 | tee "$OUT/block_b32.txt" | show | tail -5
fi
if [ "$PART" = all ] || [ "$PART" = sample ]; then
  stamp "candidate kernel launch shapes and the split twin vs XLA"
  T 120 python3 -m launch.bench_kernel $K --repeats=10 2>&1 | tee "$OUT/kernel.txt" \
    | show | tail -45
  stamp "GPU tests"
  T 150 python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/tests.txt" | tail -4
fi
stamp done
