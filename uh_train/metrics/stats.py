"""Cache of real-data statistics, keyed by (manifest hash, metric config).

Real features cost as much Inception time as fake ones but do not change between checkpoints, so
each real set's statistics (mean, covariance, the T(v, s) of every patch, and for precision/recall
the features themselves) are stored once in `{metric}-{key}.npz`. The key hashes the shard folders'
`manifest.parquet` bytes together with everything that decides which real images are drawn and how
they are featurised (metric, counts, resolutions, seed, Inception file hash, STATS_VERSION). Files
are written to a temporary name in the same folder and renamed, so a reader never sees half a file;
an unreadable cache file is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uh_train.format.atomic import atomic_write

from .inception import MetricsError

STATS_VERSION = 2  # 2: real patches read with the one resampler (uh_train/resample.py)
log = logging.getLogger(__name__)


def manifest_digest(folders: Sequence[str | Path]) -> str:
    """sha256 over the `manifest.parquet` of each shard folder, in order."""
    digest = hashlib.sha256()
    for folder in folders:
        path = Path(folder) / "manifest.parquet"
        if not path.is_file():
            raise MetricsError(f"{path} is missing: is {folder} a shard folder? (`mst validate {folder}`)")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def stats_key(manifests: str, config: dict[str, Any]) -> str:
    """Cache key of a real set: hash of the manifests' digest and the metric config (JSON-able)."""
    payload = json.dumps({"manifests": manifests, "config": config, "version": STATS_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class StatsCache:
    """`.npz` files of real statistics in one folder; `folder=None` caches nothing."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def path(self, metric: str, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{metric}-{key[:24]}.npz"

    def load(self, metric: str, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(metric, key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable statistics %s (%s); recomputing", path, exc)
            return None
        if str(arrays.get("key", "")) != key:
            return None
        return arrays

    def save(self, metric: str, key: str, arrays: dict[str, np.ndarray]) -> Path | None:
        path = self.path(metric, key)
        if path is None:
            return None
        return atomic_write(path, lambda f: np.savez(f, key=np.array(key), **arrays))
