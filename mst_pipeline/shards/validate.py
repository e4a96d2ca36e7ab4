"""`mst validate`: check a shard folder against the spec (shards/README.md) and its manifest."""

from __future__ import annotations

import io
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from mst_pipeline.shards.writer import TMP_SUFFIX, ShardError, read_shard
from uh_train.format import spec as shardspec
from uh_train.format.image import SampleDefect, open_image
from uh_train.format.manifest import MANIFEST, read_manifest
from uh_train.format.spec import SHARD_NAME

_ALLOWED_FIELDS = {"img.jpg", "img.png", "mask.png", "meta.json"}


@dataclass
class Defect:
    shard: str
    key: str
    problem: str


@dataclass
class SourceStats:
    samples: int = 0
    shards: set[str] = field(default_factory=set)
    kinds: Counter = field(default_factory=Counter)
    tiers: Counter = field(default_factory=Counter)
    density_min: float = float("inf")
    density_max: float = 0.0


@dataclass
class Report:
    folder: str
    shards: int = 0
    samples: int = 0
    sources: dict[str, SourceStats] = field(default_factory=dict)
    defects: list[Defect] = field(default_factory=list)
    spaces: Counter = field(default_factory=Counter)  # fitted samples per full-body space (meta aligned_with)

    @property
    def ok(self) -> bool:
        return not self.defects and self.samples > 0

    def add(self, shard: str, key: str, problem: str) -> None:
        self.defects.append(Defect(shard, key, problem))

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "ok": self.ok,
            "shards": self.shards,
            "samples": self.samples,
            "sources": {
                name: {
                    "samples": s.samples, "shards": len(s.shards), "kinds": dict(s.kinds),
                    "tiers": dict(s.tiers),
                    "density": [s.density_min, s.density_max] if s.samples else None,
                }
                for name, s in sorted(self.sources.items())
            },
            "spaces": dict(self.spaces),
            "defects": [d.__dict__ for d in self.defects],
        }


def _decode(data: bytes, what: str, width: Any, height: Any) -> tuple[np.ndarray | None, str | None]:
    """Pixels of an image member, its size checked against meta from the file header first (an
    image far larger than declared is never decoded); a size mismatch or a bomb is a defect."""
    if not (isinstance(width, int) and isinstance(height, int)):
        width, height = _header_size(data)  # meta has no usable size; its own defect says so
    try:
        return np.asarray(open_image(data, what, width, height)), None
    except SampleDefect as e:
        return None, "; ".join(e.reasons)


def _header_size(data: bytes) -> tuple[int, int]:
    try:
        return Image.open(io.BytesIO(data)).size
    except Exception:  # the full decode reports it
        return -1, -1


def check_sample(key: str, fields: dict[str, bytes]) -> tuple[dict[str, Any] | None, list[str]]:
    """All defects of one sample (grouped tar members). Returns (meta or None, defects)."""
    problems = list(shardspec.key_defects(key))
    for name in fields:
        if name not in _ALLOWED_FIELDS:
            problems.append(f"unexpected member {key}.{name}")
    images = [f for f in ("img.jpg", "img.png") if f in fields]
    if not images:
        problems.append("no image (img.jpg or img.png)")
    elif len(images) > 1:
        problems.append("two images (img.jpg and img.png)")
    if "meta.json" not in fields:
        problems.append("no meta.json")
        return None, problems
    try:
        meta = shardspec.loads_meta(fields["meta.json"])
    except shardspec.MetaTooComplex as e:
        problems.append(str(e))
        return None, problems
    except ValueError as e:  # bad UTF-8 or JSON
        problems.append(f"meta.json is not valid JSON ({e})")
        return None, problems
    meta_problems = shardspec.meta_defects(meta)
    problems += meta_problems
    if not isinstance(meta, dict):
        return None, problems
    if meta.get("key") != key:
        problems.append(f"meta key {meta.get('key')!r} differs from the tar key")
    if images:
        ext = images[0].split(".")[1]
        if meta.get("image") in shardspec.IMAGE_EXTS and meta["image"] != ext:
            problems.append(f"meta says image is {meta['image']}, the shard holds {images[0]}")
        arr, error = _decode(fields[images[0]], "image", meta.get("width"), meta.get("height"))
        if error:
            problems.append(error)
        elif arr is not None and (arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3):
            problems.append(f"image is not 8-bit RGB (shape {list(arr.shape)}, {arr.dtype})")
    if "mask.png" in fields:
        if meta.get("has_mask") is False:
            problems.append("mask.png present but has_mask is false")
        arr, error = _decode(fields["mask.png"], "mask.png", meta.get("width"), meta.get("height"))
        if error:
            problems.append(error)
        elif arr is not None and (arr.ndim != 2 or arr.dtype != np.uint8):
            problems.append(f"mask.png has shape {list(arr.shape)} ({arr.dtype}), expected one 8-bit channel")
    elif meta.get("has_mask") is True:
        problems.append("has_mask is true but mask.png is missing")
    return (meta if not meta_problems else None), problems


# read by _count and _check_manifest
MERGE_FIELDS = ("source", "kind", "tier", "density", "width", "height", "H", "aligned_with")


def check_shard(tar: Path) -> tuple[list[tuple[str, dict[str, Any] | None, list[str]]], str | None]:
    """Every sample of one shard checked on its own: ([(key, meta or None, defects)] in shard order,
    the shard's read error or None). Runs in a worker process; duplicates across shards and the
    manifest are checked afterwards, in one place."""
    rows = []
    try:
        for key, fields in read_shard(tar):
            meta, problems = check_sample(key, fields)
            # Only what the counts and the manifest check read goes back: whole metas (keypoints)
            # made pickling between processes cost as much as the checks themselves.
            rows.append((key, None if meta is None else {k: meta.get(k) for k in MERGE_FIELDS}, problems))
    except ShardError as e:
        return rows, str(e)
    return rows, None


def validate_folder(folder: str | Path, workers: int | None = None) -> Report:
    """Check every shard of `folder` and its manifest. Shards are checked in `workers` processes
    (default: one per CPU core; 1: in this process); the report is the same, in the same order, for
    any number of workers."""
    folder = Path(folder)
    report = Report(folder=str(folder))
    tars = sorted(folder.glob("*.tar"))
    for leftover in sorted(folder.glob(f"*.tar{TMP_SUFFIX}")):
        report.add(leftover.name, "-", "incomplete shard left by an interrupted run (re-run the writer to redo it)")
    if not tars:
        report.add("-", "-", f"no shards (*.tar) in {folder}")
        return report
    workers = min(workers or os.cpu_count() or 1, len(tars))
    if workers > 1:
        # Results come back in shard order (map keeps it), so the report does not depend on timing.
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(check_shard, tars)
            _merge(report, tars, results)
    else:
        _merge(report, tars, map(check_shard, tars))
    return report


def _merge(report: Report, tars: list[Path], results) -> None:
    """Fold the per-shard results into the report, in shard order: duplicate keys, per-source counts,
    then the manifest."""
    seen: dict[str, str] = {}
    tar_rows: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for tar, (rows, error) in zip(tars, results, strict=True):
        if not SHARD_NAME.match(tar.name):
            report.add(tar.name, "-", "file name does not follow {source}-{part:03d}-{index:06d}.tar")
        report.shards += 1
        for key, meta, problems in rows:
            report.samples += 1
            if key in seen:
                report.add(tar.name, key, f"duplicate key (also in {seen[key]})")
                continue
            seen[key] = tar.name
            for p in problems:
                report.add(tar.name, key, p)
            tar_rows[key] = (tar.name, meta)
            if meta is not None:
                _count(report, tar.name, meta)
        if error is not None:
            report.add(tar.name, "-", error)
        elif not rows:
            report.add(tar.name, "-", "shard holds no samples (the trainer refuses a source without usable samples)")
    if len(report.spaces) > 1:
        counts = ", ".join(f"{name}: {n}" for name, n in report.spaces.most_common())
        report.add("-", "-", f"samples aligned in {len(report.spaces)} different full-body spaces ({counts}): "
                             "their H do not share one frame; align every source with the same --space")
    _check_manifest(Path(report.folder), report, tar_rows)


def _count(report: Report, shard: str, meta: dict[str, Any]) -> None:
    stats = report.sources.setdefault(meta["source"], SourceStats())
    stats.samples += 1
    stats.shards.add(shard)
    stats.kinds[meta["kind"]] += 1
    stats.tiers[meta["tier"]] += 1
    stats.density_min = min(stats.density_min, float(meta["density"]))
    stats.density_max = max(stats.density_max, float(meta["density"]))
    aligned_with = meta.get("aligned_with")
    if isinstance(aligned_with, dict) and aligned_with.get("space"):
        report.spaces[f"{aligned_with.get('space_source', '?')}:{aligned_with['space']}"] += 1


def _check_manifest(folder: Path, report: Report, tar_rows: dict[str, tuple[str, dict[str, Any] | None]]) -> None:
    try:
        table = read_manifest(folder)
    except Exception as e:  # pyarrow raises several types for a damaged file
        report.add(MANIFEST, "-", f"manifest cannot be read ({type(e).__name__}: {e})")
        return
    if table is None:
        report.add(MANIFEST, "-", "manifest.parquet is missing (rebuild it: `mst validate` only reads)")
        return
    rows = table.to_pylist()
    listed: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["key"] in listed:
            report.add(MANIFEST, row["key"], "listed twice in the manifest")
        listed[row["key"]] = row
    for key, (shard, meta) in tar_rows.items():
        row = listed.get(key)
        if row is None:
            report.add(shard, key, "sample is not in the manifest")
            continue
        if row["shard"] != shard:
            report.add(MANIFEST, key, f"manifest places it in {row['shard']}, found in {shard}")
        if meta is not None:
            for name in ("source", "kind", "tier", "width", "height"):
                if row.get(name) != meta.get(name):
                    report.add(MANIFEST, key, f"manifest {name}={row.get(name)!r}, meta.json has {meta.get(name)!r}")
            if row.get("H") is None or not np.allclose(np.asarray(row["H"]), np.asarray(meta["H"]).reshape(9)):
                report.add(MANIFEST, key, "manifest H differs from meta.json")
    for key in listed.keys() - tar_rows.keys():
        report.add(MANIFEST, key, f"manifest lists a sample that no shard holds (shard {listed[key]['shard']})")


def print_report(report: Report, max_defects: int = 200, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{report.folder}: {report.samples} samples in {report.shards} shards")
    for col in ("source", "samples", "shards", "kinds", "tiers", "density (px/unit)"):
        table.add_column(col, justify="right" if col in ("samples", "shards") else "left")
    for name, s in sorted(report.sources.items()):
        table.add_row(
            name, str(s.samples), str(len(s.shards)),
            " ".join(f"{k}:{v}" for k, v in sorted(s.kinds.items())),
            " ".join(f"{k}:{v}" for k, v in sorted(s.tiers.items())),
            f"{s.density_min:.0f}–{s.density_max:.0f}",
        )
    console.print(table)
    if report.ok:
        console.print("[green]OK[/green]: no defects")
        return
    console.print(f"[red]{len(report.defects)} defect(s)[/red]")
    by_shard: dict[str, list[Defect]] = defaultdict(list)
    for d in report.defects:
        by_shard[d.shard].append(d)
    shown = 0
    for shard, defects in by_shard.items():
        for d in defects:
            if shown >= max_defects:
                console.print(f"... and {len(report.defects) - shown} more (use --json for all)")
                return
            console.print(f"  {shard}  {d.key}: {d.problem}", markup=False, highlight=False, soft_wrap=True)
            shown += 1
