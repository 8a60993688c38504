#!/usr/bin/env bash
# The main job on the default data: bash launch/run.sh [--workdir=DIR] [--config.field=value ...]
# Installs what it needs into .venv on first use.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_venv.sh"
args=("$@")
if [[ " ${args[*]-} " != *" --workdir="* ]]; then
  args+=("--workdir=workdir/default")
fi
if [[ " ${args[*]-} " != *" --config="* ]]; then
  args=("--config=experiments/configs/default.py" "${args[@]}")
fi
exec python -m experiments.main "${args[@]}"
