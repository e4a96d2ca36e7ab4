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


class ManifestError(ValueError):
    """A manifest.parquet that cannot be used: not a file, not Parquet, or not of MANIFEST_SCHEMA."""


# Columns a manifest written before `shard_bytes` existed may lack (the rebuild then reads every shard).
OPTIONAL_COLUMNS = ("shard_bytes",)


def read_manifest(folder: str | os.PathLike) -> pa.Table | None:
    """The folder's manifest (only the columns of MANIFEST_SCHEMA, checked), or None when it has none;
    ManifestError when it is unusable. The one manifest reader: `mst validate`, the writer's rebuild,
    `mst derive-sr` and the trainer all read it here."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    if not path.is_file():
        raise ManifestError(f"{path} is not a file")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ManifestError(f"{path} is not a readable Parquet file ({type(e).__name__}: {e})") from None
    problems = []
    for column in MANIFEST_SCHEMA:
        if column.name not in table.column_names:
            if column.name not in OPTIONAL_COLUMNS:
                problems.append(f"no column {column.name!r}")
        elif not table.schema.field(column.name).type.equals(column.type):
            problems.append(f"column {column.name!r} is {table.schema.field(column.name).type}, expected {column.type}")
    if problems:
        raise ManifestError(f"{path} does not have the manifest schema: " + "; ".join(problems)
                            + " (delete it: the next `mst` command that writes into the folder rebuilds it)")
    return table.select([c.name for c in MANIFEST_SCHEMA if c.name in table.column_names])
