#!/usr/bin/env bash
# The test suite: lint + format check (ruff), then pytest. Installs what it needs into .venv
# (requirements.txt, then requirements-test.txt: PyTorch for the benchmarks' reference check).
# Extra arguments go to pytest, e.g. bash launch/test.sh -k s2ce
set -euo pipefail
EXTRA_REQUIREMENTS=requirements-test.txt
source "$(dirname "${BASH_SOURCE[0]}")/setup_venv.sh"
ruff check .
ruff format --check .
exec python -m pytest "$@"
