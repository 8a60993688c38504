#!/usr/bin/env bash
# The test suite: lint + format check (ruff), then pytest. Installs what it needs into .venv.
# Extra arguments go to pytest, e.g. bash launch/test.sh -k s2ce
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_venv.sh"
ruff check .
ruff format --check .
exec python -m pytest "$@"
