#!/usr/bin/env bash
# Create the virtualenv (.venv, or $UNITEDHUMAN_VENV) with every extra (mst, render, train, eval, dev).
# Idempotent: returns at once when pyproject.toml and constraints.txt have not changed since the last
# successful run. Prints each step with the time since it started and, while pip works, what pip is
# doing every $UNITEDHUMAN_SETUP_TICK seconds (default 15); on failure the end of the log and what to do.
set -euo pipefail

T0=$SECONDS
TICK="${UNITEDHUMAN_SETUP_TICK:-15}"

elapsed() {  # seconds since the start as m:ss
  local s=$((SECONDS - T0))
  printf '%d:%02d' $((s / 60)) $((s % 60))
}

say() { echo "[$(elapsed)] $*"; }

pip_status() {  # LOG: one line saying what pip is doing, read from its output so far
  local log=$1 collected installing downloading
  collected=$(grep -c '^Collecting ' "$log" || true)
  installing=$(grep '^Installing collected packages:' "$log" | tail -n 1 || true)
  if [[ -n "$installing" ]]; then
    local names=${installing#Installing collected packages: }
    echo "unpacking $(tr ',' '\n' <<<"$names" | grep -c .) packages into the environment"
    return
  fi
  downloading=$(grep -E '^ *Downloading ' "$log" | tail -n 1 | sed -E 's/^ *Downloading //; s|.*/||' || true)
  if [[ -n "$downloading" ]]; then
    echo "resolving: $collected packages so far; latest download: $downloading"
  else
    echo "resolving: $collected packages so far"
  fi
}

installed_count() {  # LOG: how many packages pip's last "Successfully installed" line names
  local line
  line=$(grep '^Successfully installed ' "$1" 2>/dev/null | tail -n 1 || true)
  [[ -n "$line" ]] || { echo 0; return; }
  wc -w <<<"${line#Successfully installed }" | tr -d ' '
}

fail() {  # STEP LOG HINT: the end of LOG and what to do, then exit 1
  local step=$1 log=$2 hint=$3
  echo "" >&2
  echo "error: $step failed after $(elapsed). The last lines of its log:" >&2
  tail -n 25 "$log" | sed 's/^/    /' >&2
  echo "full log: $FULL_LOG" >&2
  echo "what to do: $hint" >&2
  exit 1
}

PIP_HINT="read the error above. Usual causes: no access to the package index (set PIP_INDEX_URL or a \
proxy), a full disk (the environment takes about 9 GB), or a Python other than 3.11. Then run the \
command again: pip reuses what it already downloaded (delete the environment folder to start clean)."

pip_step() {  # TITLE ARGS...: pip install ARGS with a status line every TICK seconds
  local title=$1
  shift
  local step_log="$VENV/setup-step.log" start=$SECONDS next=$((SECONDS + TICK)) rc=0
  say "$title"
  : >"$step_log"
  "$VENV/bin/python" -m pip install --progress-bar off "$@" >"$step_log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if ((SECONDS >= next)); then
      say "  ... $(pip_status "$step_log")"
      next=$((SECONDS + TICK))
    fi
  done
  wait "$pid" || rc=$?
  cat "$step_log" >>"$FULL_LOG"
  if ((rc != 0)); then
    fail "pip install $*" "$step_log" "$PIP_HINT"
  fi
  say "  done in $((SECONDS - start)) s ($(installed_count "$step_log") packages installed or upgraded)"
  rm -f "$step_log"
}

main() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  VENV="${UNITEDHUMAN_VENV:-.venv}"
  local py="${PYTHON:-python3.11}"
  command -v "$py" >/dev/null 2>&1 || py=python3
  if ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: UnitedHuman needs Python 3.11 (bpy 5.0.1 and mediapipe 0.10.21 wheels); found $("$py" --version)" >&2
    echo "what to do: install Python 3.11 (e.g. 'apt-get install python3.11 python3.11-venv', pyenv or uv) and" \
         "run again, or point PYTHON at it: PYTHON=/path/to/python3.11 bash scripts/setup.sh" >&2
    exit 1
  fi
  local stamp="$VENV/.setup-stamp" want
  want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
  if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
  fi
  echo "==> setting up $VENV: every extra, torch and Blender's bpy included (first run: a few minutes, about 9 GB)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating the virtual environment with $("$py" --version)"
    local venv_log
    venv_log=$(mktemp)
    if ! "$py" -m venv "$VENV" >"$venv_log" 2>&1; then
      FULL_LOG=$venv_log
      fail "$py -m venv $VENV" "$venv_log" "on Debian/Ubuntu install the venv module (apt-get install \
python3.11-venv), delete $VENV if it was left half-made, then run again."
    fi
    rm -f "$venv_log"
  fi
  FULL_LOG="$VENV/setup.log"
  : >"$FULL_LOG"
  say "pip's full output goes to $FULL_LOG"
  pip_step "upgrading pip" --upgrade pip
  pip_step "installing the project and its dependencies (-e '.[all,dev]', pinned by constraints.txt)" \
    -c constraints.txt -e '.[all,dev]'
  # pyrender pins PyOpenGL 3.1.0, whose OSMesa binding is broken; 3.1.7+ works (pip cannot take it as a constraint).
  pip_step "upgrading PyOpenGL past pyrender's pin (its OSMesa binding)" 'PyOpenGL>=3.1.7'
  echo "$want" >"$stamp"
  say "$VENV ready ($("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | wc -l | tr -d ' ') packages)." \
      "The body model is built by the first command that needs it (about 1.5 min, then cached)."
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
