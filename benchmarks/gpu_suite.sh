#!/usr/bin/env bash
# The GPU suite, in one go (CONTRIBUTING.md, "The GPU suite"): build the CUDA extension, run the GPU tests, run the
# benchmarks against naive (and open_clip / Inf-CL where installed), print a summary table last.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR
#
# Wheels for open_clip / Inf-CL travel in .whl/ (git-ignored) and are installed into a temporary target.
# Budget: under 10 minutes on one H100/H200. The device tool allows 10 minutes a command, so run it
# in two calls on one warm machine (stage timeouts: tests 300 s, ncu 150 + 90 s; benchmarks 180 + 30 + 90 + 100 + 60 + 60 + 30 s):
#   SUITE_STAGES="build tests ncu" bash benchmarks/gpu_suite.sh $OUT
#   SUITE_STAGES="bench summary" bash benchmarks/gpu_suite.sh $OUT
# SUITE_ONE_CALL=1 fits everything but the contrastive ncu profile into one 10-minute command (a 15-minute device
# budget: build 60 s, tests on 4 workers 180 s, benchmarks at most 100 + 40 + 40 + 30 + 100 + 60 + 40 + 60 s (each
# stage's timeout; the narrow-tile runs take seconds), then the augmentation kernel's ncu profile, 60 s, last): the
# contrastive loss at 32768 and 65536 against open_clip only (and at 65536 with a 1 GiB workspace and with the
# 128 x 128 tiles), no distributed run.
# SUITE_QUICK=1 runs tiny sizes (to check the script itself); without a GPU it runs the quick CPU check.
set -uo pipefail
OUT=${1:?usage: gpu_suite.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export VLKERNELS_CUDA_ARCHS=${VLKERNELS_CUDA_ARCHS:-9.0} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
DEVICE=cuda
QUICK=${SUITE_QUICK:-0}
ONE_CALL=${SUITE_ONE_CALL:-0}
if [ "$ONE_CALL" = 1 ]; then DEFAULT_STAGES="build tests bench ncu_augment summary"; else DEFAULT_STAGES="build tests ncu bench summary"; fi
STAGES=" ${SUITE_STAGES:-$DEFAULT_STAGES} "
stage() { [[ "$STAGES" == *" $1 "* ]]; }
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || DEVICE=cpu
[ "$DEVICE" = cpu ] && QUICK=1 && echo "no CUDA device: running the suite's quick CPU check only"

if compgen -G ".whl/*.whl" >/dev/null; then
  S=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$S" .whl/*.whl && export PYTHONPATH="$S:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

# The augmentation kernel under ncu: one fused_augment call (the cost model's open_clip case) beside the
# model's prediction for it (printed first): executed instructions, issue rate, pipes and stall reasons
# against benchmarks/augment_cost_model.py.
ncu_augment() {
  echo "== ncu: one fused_augment call (open_clip: 256 x 500x375 bicubic to 224, fp32) beside its cost model"
  timeout 60 ncu --profile-from-start off --clock-control none -k regex:fused_augment_kernel \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis \
    --section InstructionStats --section WarpStateStats python3 -m benchmarks.profile_one --augment \
    >"$OUT/ncu_augment.txt" 2>&1
  python3 -c "import sys; from benchmarks.summary import ncu_augment_lines as f; print('\n'.join(f(sys.argv[1])))" "$OUT"
}

if stage build; then
  echo "== 1. build (sm_${VLKERNELS_CUDA_ARCHS/./})"
  start=$SECONDS
  python3 -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || tail -20 "$OUT/build.log"
  echo "build took $((SECONDS - start)) s" | tee -a "$OUT/build.log"
  # The link line and the libraries _C needs (libstdc++ must be the shared one: tests/test_augment.py).
  grep -E -- "-shared .*_C" "$OUT/build.log" | tail -1 | cut -c1-600
  readelf -d vlkernels/_C*.so 2>/dev/null | grep NEEDED | tr -s ' ' | cut -d' ' -f6 | tr '\n' ' '; echo
fi
python3 -c "import vlkernels._ext as e; print('vlkernels._C:', e.build_info() if e.available() else e.load_error())" | tee -a "$OUT/build.log"

if stage tests; then
  echo "== 2. GPU tests"
  if [ "$QUICK" = 1 ]; then MARK="gpu or not slow"; else MARK="gpu"; fi
  # Two workers when pytest-xdist is there: a test that crashes its process is reported as failed and the
  # others still run.
  WORKERS=2 TESTS_S=300
  [ "$ONE_CALL" = 1 ] && WORKERS=4 TESTS_S=180
  XDIST=(); python3 -c "import xdist" 2>/dev/null && XDIST=(-n "$WORKERS")
  # -v: one line per test, so a run cut off by the timeout still says what passed and failed.
  timeout "$TESTS_S" python3 -m pytest -v -m "$MARK" "${XDIST[@]}" tests -p no:cacheprovider -rfE 2>&1 \
    | tee "$OUT/gpu_tests.log" | grep -E "FAILED|ERROR|crashed|node down|[0-9]+ (passed|failed)" | tail -60
fi

if stage ncu && [ "$DEVICE" = cuda ] && command -v ncu >/dev/null; then
  echo "== 2b. ncu: one contrastive v2 forward + backward (B=32768, D=1024, bf16)"
  # A few sections per kernel: achieved occupancy, SM / memory (L2, DRAM) throughput, pipe utilisation.
  # Only our kernels, the first 8 launches (lse, forward, the first G chunks and their GEMMs).
  timeout 150 ncu --profile-from-start off --clock-control none -k regex:"^_(lse|forward|weights|matmul)_kernel" \
    --launch-count 8 --section SpeedOfLight --section Occupancy \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis python3 -m benchmarks.profile_one \
    --batch 32768 --dim 1024 >"$OUT/ncu.txt" 2>&1
  grep -E "^  [A-Za-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Executed Ipc A" "$OUT/ncu.txt" | head -80
  ncu_augment
fi

stage bench || { stage summary && python3 -m benchmarks.summary "$OUT" | tee "$OUT/summary.md"; exit 0; }
echo "== 3. benchmarks"
if [ "$QUICK" = 1 ]; then
  BC=(--batch-sizes 256 1024 --dims 64 --dtypes float32 --reps 2)
  BS=(--batch-sizes 256 1024 --dims 64 --reps 2 --modes fwd+bwd --teacher-dims 0 32)
  BA=(--batch 16 --reps 2)
  BG=(--batch-sizes 256 1024 --dims 64 --reps 2 --modes fwd+bwd)
else
  BC=(--batch-sizes 8192 32768 131072 524288 1048576 --dims 1024 --dtypes bfloat16 --modes fwd+bwd
      --impls naive open_clip inf_cl triton torch --max-flops 1e16)
  BS=(--batch-sizes 16384 65536 --dims 1024 --dtypes bfloat16 --modes fwd+bwd --impls naive triton
      --teacher-dims 0 768)
  BA=(--batch 256 --inputs open_clip 256x256 mixed)
  BG=(--batch-sizes 16384 65536 --dims 1024 --dtypes bfloat16 --modes fwd+bwd --impls naive chunked_saved triton)
fi
if [ "$ONE_CALL" = 1 ] && [ "$QUICK" != 1 ]; then
  BC=(--batch-sizes 32768 65536 --dims 1024 --dtypes bfloat16 --modes fwd+bwd --impls open_clip triton --max-flops 2e17)
  BC_S=100
fi
timeout "${BC_S:-180}" python3 -m benchmarks.bench_contrastive --device "$DEVICE" "${BC[@]}" --out "$OUT/contrastive.json"
if [ "$ONE_CALL" = 1 ] && [ "$QUICK" != 1 ]; then
  # The workspace budget's effect on the G-chunk backward (default 256 MiB above): 1 GiB covers every column.
  VLKERNELS_WORKSPACE_MB=1024 timeout 40 python3 -m benchmarks.bench_contrastive --device "$DEVICE" \
    --batch-sizes 65536 --dims 1024 --dtypes bfloat16 --modes fwd+bwd --impls triton --max-flops 2e17 \
    --out "$OUT/contrastive_workspace_1024.json"
fi
if [ "$QUICK" != 1 ]; then
  # The wide score tiles (128 x 256 forward, 256 x 128 G through TMA descriptors) against the 128 x 128 ones
  # of before, same run: the cost model says 46-76 ms against 51-89 ms at B = 65536.
  VLKERNELS_WIDE_TILES=0 timeout 40 python3 -m benchmarks.bench_contrastive --device "$DEVICE" \
    --batch-sizes 65536 --dims 1024 --dtypes bfloat16 --modes fwd+bwd --impls triton --max-flops 2e17 \
    --out "$OUT/contrastive_narrow_tiles.json"
fi
if [ "$QUICK" != 1 ]; then
  # B = 262144 at the default budget: chunks of 8192 rows with G in slabs of 4096 columns (modelled
  # 0.91-1.62 s); vlkernels only (naive and open_clip hold B x B logits: 128 GiB in bf16).
  timeout 30 python3 -m benchmarks.bench_contrastive --device "$DEVICE" --batch-sizes 262144 --dims 1024 \
    --dtypes bfloat16 --modes fwd+bwd --impls triton --max-flops 2e18 \
    --out "$OUT/contrastive_b262144.json"
fi
if [ "$QUICK" != 1 ] && [ "$ONE_CALL" != 1 ]; then
  # The sizes the issue is about, against the fastest baseline only (the others take seconds a step there).
  timeout 90 python3 -m benchmarks.bench_contrastive --device "$DEVICE" --batch-sizes 65536 131072 --dims 1024 \
    --dtypes bfloat16 --modes fwd+bwd --impls open_clip triton --max-flops 2e17 --out "$OUT/contrastive_large.json"
fi
if [ -f benchmarks/bench_soft_target.py ]; then
  timeout 100 python3 -m benchmarks.bench_soft_target --device "$DEVICE" "${BS[@]}" --out "$OUT/soft_target.json"
fi
timeout 60 python3 -m benchmarks.bench_sigmoid --device "$DEVICE" "${BG[@]}" --out "$OUT/sigmoid.json"
if [ "$QUICK" != 1 ]; then
  # The sigmoid kernels' wide tiles against their 128 x 128 ones, same run (modelled 46-77 ms against
  # 51-89 ms at B = 65536, D = 1024).
  VLKERNELS_WIDE_TILES=0 timeout 40 python3 -m benchmarks.bench_sigmoid --device "$DEVICE" \
    --batch-sizes 65536 --dims 1024 --dtypes bfloat16 --modes fwd+bwd --impls triton \
    --out "$OUT/sigmoid_narrow_tiles.json"
fi
if [ -f benchmarks/bench_augment.py ]; then
  timeout 60 python3 -m benchmarks.bench_augment --device "$DEVICE" "${BA[@]}" --out "$OUT/augment.json"
fi
if [ "$DEVICE" = cuda ] && [ "$ONE_CALL" != 1 ]; then
  # Overhead of the distributed path at world size 1 (NCCL) against the plain loss, same process.
  timeout 30 torchrun --standalone --nproc_per_node 1 examples/bench_distributed.py --device cuda \
    --dtype bfloat16 --dim 1024 --batch-per-rank 8192 32768 --single >"$OUT/distributed_world1.jsonl"
fi

# fp32 features: IEEE dots against the split-precision tensor-core candidates (VLKERNELS_FP32_DOTS), errors
# against float64 and times. In one call after the augmentation profile, where running out of time loses only it.
fp32_dots() {
  [ "$DEVICE" = cuda ] && timeout 60 python3 -m benchmarks.bench_fp32_dots --device cuda --out "$OUT/fp32_dots.json"
}
if [ "$ONE_CALL" != 1 ]; then fp32_dots; fi

# In one call the augmentation kernel's profile comes next (60 s), where running out of time loses only it
# and the fp32 dots.
if stage ncu_augment && [ "$DEVICE" = cuda ] && command -v ncu >/dev/null; then
  ncu_augment
fi
if [ "$ONE_CALL" = 1 ] && stage bench; then fp32_dots; fi

if stage summary; then
  echo "== 4. summary"
  python3 -m benchmarks.summary "$OUT" | tee "$OUT/summary.md"
fi
