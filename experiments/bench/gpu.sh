#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md on a GPU machine, in one go, plus the GPU correctness
# tests of the round (the vmapped round equals the per-market loop there too).
#
#   bash experiments/bench/gpu.sh OUTDIR [SECTION ...]
#
# Sections, in this order by default: env tests small reference_bf16 reference_torch
# small_torch s2ce. Each writes OUTDIR/SECTION.txt (and .json / .png where the benchmark
# writes them) and has its own time limit, so one that fails or overruns does not stop the
# rest. PYTHON picks the interpreter (default python3).
set -uo pipefail

out=${1:?usage: bash experiments/bench/gpu.sh OUTDIR [SECTION ...]}
shift
sections=("$@")
if [ ${#sections[@]} -eq 0 ]; then
  sections=(env tests small reference_bf16 reference_torch small_torch s2ce)
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
      # The round and loss tests on the GPU: the vmapped round equals the per-market loop,
      # FedAvg by hand, blockwise S²CE equals dense (the 8-device sharding test needs 8
      # devices and is left to the CPU suite).
      run tests 150 env JAX_PLATFORMS=cuda XLA_FLAGS= "$py" -m pytest -p no:cacheprovider \
        tests/test_round.py tests/test_losses.py -k "not sharded" ;;
    small)
      # Small markets: vmapped one-jit round vs the per-market loop, M up to 1024, with the
      # compiled round's peak memory (the scaling plot).
      bench small 180 experiments.bench.round --config=small --markets=1,8,64,256,1024 \
        --backends=vmap,loop --memory --seconds=1 --plot="$out/small.png" ;;
    reference_bf16)
      # Reference config in bf16: MFU against the bf16 matmul peak measured in the same run.
      bench reference_bf16 150 experiments.bench.round --config=reference --dtype=bfloat16 \
        --markets=1,8,64,256 --backends=vmap,loop --seconds=1 ;;
    reference_torch)
      bench reference_torch 150 experiments.bench.round --config=reference \
        --markets=1,8,64 --backends=vmap,loop,torch --seconds=1 ;;
    small_torch)
      bench small_torch 150 experiments.bench.round --config=small --markets=8,64,256 \
        --backends=vmap,loop,torch --seconds=1 ;;
    s2ce)
      bench s2ce 150 experiments.bench.s2ce --items=1000,10000,100000,1000000 \
        --positions=1600,6400 --budget_gib=100 --seconds=0.5 --plot="$out/s2ce.png" ;;
    *)
      echo "unknown section: $s (known: env tests small reference_bf16 reference_torch" \
        "small_torch s2ce)" >&2
      exit 2 ;;
  esac
done
