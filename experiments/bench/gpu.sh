#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md on a GPU machine, plus the GPU correctness tests of the
# round (the vmapped round equals the per-market loop there too).
#
#   bash experiments/bench/gpu.sh OUTDIR [SECTION ...]
#
# Sections, in this order by default: env tests small reference_bf16 runs_bf16
# reference_torch small_torch s2ce dp. Each writes OUTDIR/SECTION.txt (and .json / .png where the benchmark
# writes them) and has its own time limit, so one that fails or overruns does not stop the
# rest. PYTHON picks the interpreter (default python3).
#
# Budget: on an H200 each JAX program takes 17-35 s to compile (2026-11-27, JAX 0.11.2), so
# the sections are sized to about 2-3 min each and the whole script to about 15 min. With a
# 15-minute device lease, run it as two calls: `env tests small reference_bf16 runs_bf16`,
# then `reference_torch small_torch s2ce dp`.
set -uo pipefail

out=${1:?usage: bash experiments/bench/gpu.sh OUTDIR [SECTION ...]}
shift
known=(env tests small reference_bf16 runs_bf16 reference_torch small_torch s2ce dp)
sections=("$@")
if [ ${#sections[@]} -eq 0 ]; then
  sections=("${known[@]}")
fi
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# Let JAX and PyTorch share the GPU, and let XLA report what each program needs.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

run() {  # run NAME SECONDS COMMAND...: output to OUTDIR/NAME.txt, never stops the script
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date +%T), limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

bench() {  # bench NAME SECONDS MODULE FLAGS...
  local name=$1 limit=$2 module=$3
  shift 3
  run "$name" "$limit" "$py" -m "$module" "$@" --json="$out/$name.json"
}

for s in "${sections[@]}"; do
  case $s in
    env)
      run env 60 bash -c "nvidia-smi -L; $py -c 'import jax, flax, optax, numpy; \
print(\"jax\", jax.__version__, jax.devices(), \"flax\", flax.__version__, \
\"optax\", optax.__version__, \"numpy\", numpy.__version__)'" ;;
    tests)
      # The code-path equalities on the GPU: the vmapped round equals the per-market loop,
      # one market's FedAvg is one SGD step, padding markets change nothing, blockwise S²CE
      # equals dense, grouped runs equal each run alone (the 8-device sharding test needs 8
      # devices: left to the CPU suite).
      run tests 200 env JAX_PLATFORMS=cuda XLA_FLAGS= "$py" -m pytest -p no:cacheprovider \
        tests/test_round.py tests/test_losses.py tests/test_runs.py \
        -k "equals_loop or one_market_fedavg or zero_weight or blockwise or alone" ;;
    small)
      # Small markets: the vmapped one-jit round vs the per-market loop (the H200 target is
      # >= 20x at M = 256), with the compiled round's peak memory.
      bench small 200 experiments.bench.round --config=small --markets=1,64,256 \
        --backends=vmap,loop --memory --seconds=1 --plot="$out/small.png" ;;
    reference_bf16)
      # Reference config in bf16: MFU against the bf16 matmul peak measured in the same run.
      bench reference_bf16 150 experiments.bench.round --config=reference --dtype=bfloat16 \
        --markets=1,64,256 --backends=vmap --seconds=1 ;;
    runs_bf16)
      # Runs stacked on a leading axis (R seeds x 64 markets in one compiled round): the
      # extra parallel work that one round's small products lack (the project's target: >= 25% MFU).
      # R = 64 needs ~60 GB of activations; a run that fails keeps the smaller R in the JSON.
      bench runs_bf16 200 experiments.bench.round --config=reference --dtype=bfloat16 \
        --markets=64 --runs=1,4,16,64 --backends=vmap --seconds=1 ;;
    reference_torch)
      bench reference_torch 150 experiments.bench.round --config=reference --markets=8,64 \
        --backends=vmap,torch --seconds=1 ;;
    small_torch)
      bench small_torch 150 experiments.bench.round --config=small --markets=64,256 \
        --backends=vmap,torch --seconds=1 ;;
    s2ce)
      bench s2ce 150 experiments.bench.s2ce --items=10000,1000000 --positions=6400 \
        --budget_gib=100 --seconds=0.5 --plot="$out/s2ce.png" ;;
    dp)
      # The cost of user-level DP-SGD: the same round with and without (per-user gradients,
      # clipping, noise), side by side.
      bench dp 150 experiments.bench.round --config=reference --markets=8,64 --backends=vmap \
        --dp=off,on --seconds=1 ;;
    *)
      echo "unknown section: $s (known: ${known[*]})" >&2
      exit 2 ;;
  esac
done
