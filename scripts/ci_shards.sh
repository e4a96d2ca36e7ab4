#!/usr/bin/env bash
# Build a small shard set with the real `mst` commands and validate it; any defect fails.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "==> mst synthetic (small multi-source set)"
.venv/bin/mst synthetic "$OUT/shards" --n 6 --res 64
echo "==> mst validate"
.venv/bin/mst validate "$OUT/shards"
.venv/bin/mst preview "$OUT/shards" --out "$OUT/preview.png" --n 12
