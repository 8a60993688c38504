#!/usr/bin/env bash
# Runs an experiment on a Cloud TPU VM (single host or a multi-host pod slice).
#
#   bash launch/tpu_vm.sh --name=fecosr-v5e --zone=us-west4-a --accelerator=v5litepod-16 \
#       --workdir=gs://BUCKET/fecosr/m256 [--dry-run] -- \
#       --config=experiments/configs/synthetic_sweep.py:256 --config.num_rounds=200
#
# Steps (each printed, with --dry-run only printed):
#   1. create the TPU VM unless it exists (gcloud compute tpus tpu-vm describe / create);
#   2. copy this checkout (committed files plus tracked changes, `git stash create`) to every
#      worker and install it there into ~/fecosr_jax/.venv with Python 3.11 (uv), the pinned
#      requirements, jax[tpu] and gcsfs;
#   3. run `python -m experiments.main --distributed ...` on every worker (--worker=all):
#      jax.distributed.initialize() finds the other workers by itself, the federated round's
#      market axis spans every chip of the slice, and process 0 writes the outputs;
#   4. with --delete, delete the TPU VM afterwards.
#
# Options:
#   --name=NAME          TPU VM name (required)
#   --zone=ZONE          zone that has the accelerator type and your quota (required)
#   --accelerator=TYPE   e.g. v4-8, v4-32, v5litepod-8, v5litepod-16, v6e-8 (default v5litepod-8)
#   --version=RUNTIME    TPU software version (default: by accelerator, see runtime_for below)
#   --project=PROJECT    Google Cloud project (default: gcloud's configured project)
#   --workdir=PATH       run folder; gs://BUCKET/... for multi-host slices (required)
#   --spot               create a Spot TPU VM (cheaper, can be preempted: re-run to resume)
#   --skip-install       the workers already have this checkout installed
#   --detach             start the run under nohup on every worker and return; its output is
#                        ~/fecosr_jax/run.log on each worker
#   --delete             delete the TPU VM when the run has finished
#   --dry-run            print every command, run none
#   -- ARGS              the rest go to experiments.main (default: the default config)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="" ZONE="" ACCELERATOR="v5litepod-8" VERSION="" PROJECT="" WORKDIR=""
SPOT=0 SKIP_INSTALL=0 DETACH=0 DELETE=0 DRY_RUN=0
JAX_VERSION="$(sed -n 's/^jax==\([^ ]*\).*/\1/p' "$ROOT/requirements.txt")"
REMOTE_DIR="fecosr_jax"  # on each worker, under the login user's home folder

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "launch/tpu_vm.sh: $*" >&2
  exit 2
}

MAIN_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --detach) DETACH=1 ;;
    --delete) DELETE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown option $1 (experiments.main flags go after --; see --help)" ;;
  esac
  shift
done
[ -n "$NAME" ] || die "--name=NAME is required"
[ -n "$ZONE" ] || die "--zone=ZONE is required (one where $ACCELERATOR is offered and you have quota)"
[ -n "$WORKDIR" ] || die "--workdir=gs://BUCKET/PATH is required"
if [ "$DELETE" = 1 ] && [ "$DETACH" = 1 ]; then
  die "--delete with --detach would delete the TPU VM under the running job"
fi
for arg in "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}"; do
  case "$arg" in
    --workdir=* | --distributed*) die "$arg: tpu_vm.sh sets it (use --workdir before --)" ;;
  esac
done
if [[ "$WORKDIR" != gs://* ]]; then
  echo "warning: --workdir=$WORKDIR is not a gs:// path: each TPU VM worker has its own disk," \
    "so only a single-host slice (one worker) can use it" >&2
fi

runtime_for() {  # the TPU software version for an accelerator type
  case "$1" in
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) echo "tpu-ubuntu2204-base" ;;  # v2, v3, v4
  esac
}
VERSION="${VERSION:-$(runtime_for "$ACCELERATOR")}"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then
  WHERE+=(--project="$PROJECT")
fi

quote() {  # one argument as a shell word: as it is when safe, else in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./=:@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run() {  # prints the command (copy-pasteable); runs it unless --dry-run
  printf '+'
  for arg in "$@"; do
    printf ' %s' "$(quote "$arg")"
  done
  printf '\n'
  if [ "$DRY_RUN" = 0 ]; then
    "$@"
  fi
}

# 1. The TPU VM.
if [ "$DRY_RUN" = 1 ]; then
  echo "# create the TPU VM if \`${GCLOUD[*]} describe $NAME ${WHERE[*]}\` finds none:"
fi
if [ "$DRY_RUN" = 1 ] || ! "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  create=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR"
    --version="$VERSION")
  if [ "$SPOT" = 1 ]; then
    create+=(--spot)
  fi
  run "${create[@]}"
else
  echo "# $NAME exists in $ZONE: reusing it"
fi

# 2. The code and its environment on every worker.
if [ "$SKIP_INSTALL" = 0 ]; then
  ARCHIVE="${TMPDIR:-/tmp}/fecosr_jax-$NAME.tar.gz"
  commit="$(git -C "$ROOT" stash create 2>/dev/null || true)"
  run git -C "$ROOT" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$ARCHIVE" "${commit:-HEAD}"
  run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:~/fecosr_jax.tar.gz" "${WHERE[@]}" --worker=all
  install="set -e; rm -rf ~/$REMOTE_DIR; tar xzf ~/fecosr_jax.tar.gz -C ~; cd ~/$REMOTE_DIR"
  install+="; python3 -m pip install --user --quiet uv"
  install+="; ~/.local/bin/uv venv --quiet --python 3.11 .venv"
  install+="; ~/.local/bin/uv pip install --quiet --python .venv/bin/python -r requirements.txt"
  install+=" \"jax[tpu]==$JAX_VERSION\" gcsfs"
  install+="; ~/.local/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e ."
  install+="; .venv/bin/python -c \"import jax; print(jax.local_device_count(), jax.default_backend())\""
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$install"
fi

# 3. The run, on every worker at once.
if [ ${#MAIN_ARGS[@]} -eq 0 ]; then
  MAIN_ARGS=(--config=experiments/configs/default.py)
fi
main="cd ~/$REMOTE_DIR && .venv/bin/python -m experiments.main --distributed"
main+=" $(quote "--workdir=$WORKDIR")"
for arg in "${MAIN_ARGS[@]}"; do
  main+=" $(quote "$arg")"
done
if [ "$DETACH" = 1 ]; then
  main="nohup bash -c $(quote "$main") > ~/$REMOTE_DIR/run.log 2>&1 < /dev/null &"
fi
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$main"

# 4. Clean up.
if [ "$DELETE" = 1 ]; then
  run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
fi
