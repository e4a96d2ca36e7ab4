#!/usr/bin/env bash
# Build a small shard set with the real `mst` commands and validate it; any defect fails.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
export OMP_NUM_THREADS=1
echo "==> mst synthetic (small multi-source set)"
.venv/bin/mst synthetic --out "$OUT/shards" --n 6 --size 64
echo "==> inputs for mst align and mst render-hands (a small SMPL-format body, OpenPose JSON of posed people)"
.venv/bin/python scripts/ci_inputs.py "$OUT/inputs"
echo "==> mst align (openpose-json)"
.venv/bin/mst align "$OUT/inputs/people" --detector openpose-json --body-model "$OUT/inputs/body.npz" \
  --iterations 120 --batch 8 --source people --out "$OUT/shards"
echo "==> mst render-hands (the bare command: the open default body model)"
.venv/bin/mst render-hands --n 2 --size 64 --out "$OUT/shards"
echo "==> mst validate"
.venv/bin/mst validate "$OUT/shards"
.venv/bin/mst preview "$OUT/shards" --out "$OUT/preview.png" --n 16
