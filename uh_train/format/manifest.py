"""The per-folder `manifest.parquet` of a shard folder (shards/README.md): its file name, its schema
and the row a sample contributes. `mst_pipeline.shards.writer` writes it; the trainer and `mst validate`
read it with `read_manifest`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from uh_train.format.spec import region_bbox

MANIFEST = "manifest.parquet"

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("source", pa.string()),
    ("kind", pa.string()),
    ("tier", pa.string()),
    ("image", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("H", pa.list_(pa.float64(), 9)),
    ("bbox_x0", pa.float64()),
    ("bbox_y0", pa.float64()),
    ("bbox_x1", pa.float64()),
    ("bbox_y1", pa.float64()),
    ("density", pa.float64()),
    ("has_mask", pa.bool_()),
    ("fit_loss", pa.float64()),
    ("fit_visible", pa.int32()),
    ("fit_iterations", pa.int32()),
    ("shard_bytes", pa.int64()),
])


def manifest_row(meta: dict[str, Any], shard: str, shard_bytes: int) -> dict[str, Any]:
    """The manifest row of a valid sample's `meta.json`, found in SHARD (a file of SHARD_BYTES bytes)."""
    x0, y0, x1, y1 = region_bbox(meta["region"])
    fit = meta.get("fit") or {}
    losses = fit.get("losses") or {}
    return {
        "key": meta["key"], "shard": shard, "source": meta["source"], "kind": meta["kind"],
        "tier": meta["tier"], "image": meta["image"], "width": meta["width"], "height": meta["height"],
        "H": [float(v) for v in np.asarray(meta["H"], dtype=np.float64).reshape(9)],
        "bbox_x0": x0, "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1,
        "density": float(meta["density"]), "has_mask": bool(meta.get("has_mask", False)),
        "fit_loss": float(sum(losses.values())) if losses else None,
        "fit_visible": fit.get("visible"), "fit_iterations": fit.get("iterations"),
        "shard_bytes": shard_bytes,
    }


def read_manifest(folder: str | os.PathLike) -> pa.Table | None:
    """The folder's manifest, or None when it has none."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    return pq.read_table(path)
