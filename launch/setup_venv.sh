#!/usr/bin/env bash
# Sourced by launch/run.sh and launch/test.sh: creates .venv (once) and installs the pinned
# dependencies and this package into it. Set FECOSR_VENV to use another folder, or
# FECOSR_PYTHON to pick the interpreter (Python 3.11+). EXTRA_REQUIREMENTS (set by the
# script that sources this one): more requirement files to install after requirements.txt
# (launch/test.sh: requirements-test.txt), each once per version of it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FECOSR_VENV:-$ROOT/.venv}"
PYTHON="${FECOSR_PYTHON:-python3}"
STAMP="$VENV/.installed-$(cat "$ROOT/requirements.txt" "$ROOT/setup.cfg" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
for extra in ${EXTRA_REQUIREMENTS:-}; do
  EXTRA_STAMP="$VENV/.extra-$(basename "$extra" .txt)-$(sha256sum "$ROOT/$extra" | cut -c1-16)"
  if [ ! -f "$EXTRA_STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/$extra"
    rm -f "$VENV/.extra-$(basename "$extra" .txt)-"*
    touch "$EXTRA_STAMP"
  fi
done
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
