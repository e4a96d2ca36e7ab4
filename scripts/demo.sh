#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${UNITEDHUMAN_VENV:-.venv}/bin/python" scripts/demo.py "$@"
