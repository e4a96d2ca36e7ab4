#!/usr/bin/env bash
# Create .venv with every extra (mst, render, train, eval, dev). Idempotent: returns at once when
# pyproject.toml and constraints.txt have not changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: UnitedHuman needs Python 3.11 (bpy 5.0.1 and mediapipe 0.10.21 wheels); found $("$PY" --version)" >&2
  exit 1
fi
STAMP=.venv/.setup-stamp
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [[ -x .venv/bin/python && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi
echo "==> setting up .venv (first run takes a few minutes)"
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
LOG=.venv/setup.log
pip_step() {  # quiet unless it fails: pip's full output goes to .venv/setup.log
  if ! .venv/bin/python -m pip install "$@" >>"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "error: pip install $* failed (full log: $LOG)" >&2
    exit 1
  fi
}
: > "$LOG"
pip_step --upgrade pip
pip_step -c constraints.txt -e '.[all,dev]'
# pyrender pins PyOpenGL 3.1.0, whose OSMesa binding is broken; 3.1.7+ works (pip cannot take it as a constraint).
pip_step 'PyOpenGL>=3.1.7'
echo "$WANT" > "$STAMP"
echo "==> .venv ready"
