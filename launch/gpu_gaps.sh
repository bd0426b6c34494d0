#!/usr/bin/env bash
# The measured-gap check in one lease call, never-measured items first: the
# GPU tests of the packed layout and the fused head kernel, the batch-1 block
# sampler (exact cache, separate and fused block write), the fused head +
# candidate kernel against head-then-kernel / head-then-XLA, a profile of the
# dual-cache sampler at the LLaDA-8B shape, batch 1, against its memory floor,
# the batch-32 block sampler (both writes), and the MoE grouped-matmul paths
# (llada2_mini layer vs its weight floor, block sampler ragged vs capacity). Then, while the time budget
# lasts, the items measured before (candidate kernel shapes, train rows incl.
# the packed layout, the dual-cache sampler, all GPU tests). Wheels for grain, array_record,
# ml_collections and portpicker (not on the GPU image) are carried in .whl/.
#
#   bash launch/gpu_gaps.sh             # full size, ~9 minutes (BUDGET=540 s)
#   SMALL=1 bash launch/gpu_gaps.sh     # the same commands at CPU-sized shapes
#   PART=sample|train bash launch/gpu_gaps.sh   # one half
#
# Each command runs under `timeout` (its own limit or what is left of $BUDGET,
# whichever is less; skipped when under 20 s are left), so one hang cannot take
# the lease; full logs go to $OUT, the tables to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
. launch/gpu_env.sh
OUT=${OUT:-/tmp/gpu_gaps}; mkdir -p "$OUT"
PART=${PART:-all}
BUDGET=${BUDGET:-540}
show() { grep -v -i -E 'warn|^\s*$' "$@"; }
START=$(date +%s)
stamp() { echo "-- $(( $(date +%s) - START )) s: $*"; }
# go PART SECONDS WHAT: whether to run the next step (its part is selected and
# the budget lasts); sets LIM, the step's timeout.
go() {
  [ "$PART" = all ] || [ "$PART" = "$1" ] || return 1
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then stamp "skipped, budget spent: $3"; return 1; fi
  LIM=$(( $2 < left ? $2 : left ))
  stamp "$3 (limit $LIM s)"
}
T() { timeout "$LIM" "$@"; }

if [ -n "${SMALL:-}" ]; then
  S8="--preset=tiny --dtype=float32 --prompt_len=32 --gen_length=64 --block_length=16"
  T1="--preset=tiny --seq_len=128 --batch=4"
  K="--vocab=4096 --rows=64,512"
  H="--vocab=4096 --head_dim=256 --head_rows=32,384"
  B32=4; PSTEPS=8; FLOOR_GB=0.01
  MOE="--preset=llada2_tiny --layer_rows=32,256 --block_batch=1,4 --gen_length=32"
else
  S8="--preset=llada_8b --dtype=bfloat16 --prompt_len=128 --gen_length=256 --block_length=32"
  T1="--preset=llada_1b --dtype=bfloat16 --seq_len=2048 --batch=8"
  K="--rows=384,12288"
  H="--head_dim=4096 --head_rows=32,384,12288"
  B32=32; PSTEPS=32; FLOOR_GB=16
  MOE="--preset=llada2_mini --dtype=bfloat16 --param_dtype=bfloat16 \
    --layer_rows=32,1024,16384 --block_batch=1,32 --prompt_length=128 --gen_length=256"
fi
# The floor's bandwidth: the card's copy rate (perf_notes: H100 3.0, H200 ~4.3 TB/s).
BW=3.0e12
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -q H200 && BW=4.3e12

# Never measured: these first.
if go "$PART" 120 "GPU tests: cuDNN's packed layout, the fused head kernel"; then
  T python3 -m pytest -q -m gpu tests/test_gpu.py -k "packed or head_kernel" 2>&1 \
    | tee "$OUT/tests_packed.txt" | tail -4
fi
if go sample 130 "block diffusion sampler, batch 1: exact cache, separate and fused write"; then
  T python3 -m launch.bench_block $S8 --batch=1 --tokens_per_step=8 --repeats=2 \
    --variants=cached,fused 2>&1 | tee "$OUT/block_b1.txt" | show | tail -5
fi
if go sample 120 "fused head + candidate kernel vs head, then kernel / XLA twin"; then
  T python3 -m launch.bench_kernel $H --rows= --repeats=5 2>&1 \
    | tee "$OUT/head.txt" | show | tail -37
fi
if go sample 120 "dual cache, batch 1, 8 tokens/step: profile against the memory floor"; then
  T python3 -m launch.bench_sampler $S8 --batch=1 --tokens_per_step=8 --repeats=1 \
    --variants=dual_k --profile_dir="$OUT/prof" 2>&1 | tee "$OUT/profile_run.txt" \
    | show | tail -3
fi
if go sample 60 "where a dual-cache step's time goes ($PSTEPS steps traced)"; then
  T python3 -m launch.profile_summary "$OUT/prof/dual_k_b1" --steps=$PSTEPS \
    --floor_gb=$FLOOR_GB --bandwidth=$BW --top=15 2>&1 | tee "$OUT/profile.txt" \
    | show | tail -30
fi
if go sample 150 "block diffusion sampler, batch $B32: exact cache, separate and fused write"; then
  T python3 -m launch.bench_block $S8 --batch=$B32 --tokens_per_step=8 --repeats=1 \
    --variants=cached,fused 2>&1 | tee "$OUT/block_b32.txt" | show | tail -5
fi
if go sample 150 "MoE layer paths (ragged, capacity, dense) vs active dense and the weight floor; \
block sampler ragged vs capacity"; then
  T python3 -m launch.bench_moe $MOE --bandwidth=$BW --parts=layer,block \
    --impls=ragged,capacity --repeats=2 2>&1 | tee "$OUT/moe.txt" | show | tail -24
fi

# Measured before (experiments/perf_notes.md): reruns while the budget lasts.
if go sample 90 "candidate kernel launch shapes and the split twin vs XLA"; then
  T python3 -m launch.bench_kernel $K --repeats=5 --kernels=8:1024:0:0:4,4:1024:0:1:4 \
    2>&1 | tee "$OUT/kernel.txt" | show | tail -16
fi
if go train 240 "train step: scatter / one-hot embedding gradient, 8 documents per row \
(cuDNN masked vs packed layout)"; then
  T python3 -m launch.bench_train $T1 --steps=3 --warmup=1 \
    --embed_grad=scatter,onehot,scatter,scatter --segments=false,false,8,8 \
    --attention_impl=default,default,cudnn,cudnn_packed \
    2>&1 | tee "$OUT/train.txt" | show | tail -8
fi
if go sample 120 "dual cache (Fast-dLLM), batch 1, 8 tokens/step"; then
  T python3 -m launch.bench_sampler $S8 --batch=1 --tokens_per_step=8 --repeats=3 \
    --variants=uncached_k,dual_k 2>&1 | tee "$OUT/sampler.txt" | show | tail -5
fi
if go "$PART" 150 "GPU tests"; then
  T python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/tests.txt" | tail -4
fi
stamp done
