"""`uh-view --shards DIR`: a real sample shown in the same window as the generated view.

The sample is the one whose region covers most of the window (the densest among equals), read from
its shard and warped into the window through its H."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from uh_train.format.geometry import PatchView, warp_to_canvas
from uh_train.format.manifest import MANIFEST
from uh_train.format.spec import ShardRecord
from uh_train.shard_reader import decode_sample, read_manifests

from .request import View

BACKGROUND = 128  # grey where the sample has no pixels


def shard_folders(root: Path) -> list[Path]:
    """ROOT if it is a shard folder (has a manifest), else its sub-folders that are."""
    if (root / MANIFEST).is_file():
        return [root]
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    if not found:
        raise FileNotFoundError(f"no {MANIFEST} in {root} or its sub-folders; run `mst validate` on the shard folder")
    return found


def window_homography(view: View) -> np.ndarray:
    """Full-body space -> the window's unit square (the inverse of T(v, s) with the corner at 0)."""
    return np.linalg.inv(PatchView(view.v, view.s).homography(1))


class RealSamples:
    """The manifests of a shard folder, and the samples read from it (the last few kept)."""

    def __init__(self, root: Path, keep: int = 8):
        folders = shard_folders(root)
        table = read_manifests(folders)
        self.folder_of = {}
        for folder in folders:
            for shard in set(read_manifests([folder]).column("shard").to_pylist()):
                self.folder_of[shard] = folder
        self.keys = table.column("key").to_pylist()
        self.shards = table.column("shard").to_pylist()
        self.bbox = np.stack([table.column(c).to_numpy() for c in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")], 1)
        self.density = table.column("density").to_numpy()
        self.keep = keep
        self._records: dict[int, ShardRecord] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def best(self, view: View) -> int | None:
        """Index of the sample covering most of the window (then the densest), or None if none touches it."""
        side = 1.0 / view.s
        x0, y0 = view.v[0] - side / 2, view.v[1] - side / 2
        w = np.clip(np.minimum(self.bbox[:, 2], x0 + side) - np.maximum(self.bbox[:, 0], x0), 0, None)
        h = np.clip(np.minimum(self.bbox[:, 3], y0 + side) - np.maximum(self.bbox[:, 1], y0), 0, None)
        cover = np.round(w * h / (side * side), 3)
        if len(cover) == 0 or cover.max() <= 0:
            return None
        return int(np.lexsort((-self.density, -cover))[0])

    def record(self, index: int) -> ShardRecord:
        if index not in self._records:
            key, shard = self.keys[index], self.shards[index]
            sample: dict = {"__key__": key}
            with tarfile.open(self.folder_of[shard] / shard, "r:") as tar:
                for member in tar:
                    if member.isfile() and member.name.startswith(key + "."):
                        sample[member.name[len(key) + 1:]] = tar.extractfile(member).read()
            if len(self._records) >= self.keep:
                self._records.pop(next(iter(self._records)))
            self._records[index] = decode_sample(sample)
        return self._records[index]

    def render(self, view: View) -> tuple[str, np.ndarray] | None:
        """(key, uint8 [size, size, 3]) of the best sample warped into the view's window, or None."""
        index = self.best(view)
        if index is None:
            return None
        rec = self.record(index)
        canvas, alpha = warp_to_canvas(rec.image, window_homography(view) @ rec.H, view.size, rec.mask)
        a = alpha[..., None]
        return rec.key, np.round(canvas * a + BACKGROUND * (1 - a)).clip(0, 255).astype(np.uint8)
