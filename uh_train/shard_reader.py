"""Reading `unitedhuman-shard/1` shards for training: a WebDataset pipeline of small stages.

    shard list -> (split by node) -> (split by worker) -> tar samples -> shuffle -> decode -> ShardRecord

Under `torchrun` (torch.distributed initialised) each rank reads a disjoint subset of the shards,
and each DataLoader worker a disjoint subset of its rank's shards. A truncated or corrupt shard is
skipped with a warning rather than ending a long run.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from uh_train import shardspec
from uh_train.shardspec import SHARD_NAME, ShardRecord

log = logging.getLogger(__name__)


def list_shards(folders: Sequence[str | Path]) -> list[str]:
    """Complete shard files of the given folders (sorted per folder)."""
    urls: list[str] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"shard folder {folder} does not exist")
        found = sorted(str(p) for p in folder.glob("*.tar") if SHARD_NAME.match(p.name))
        if not found:
            raise FileNotFoundError(f"no shards in {folder} (expected {{source}}-000-000000.tar files)")
        urls += found
    return urls


def read_manifests(folders: Sequence[str | Path]) -> pa.Table:
    """Concatenated manifests of the folders (statistics, mixing weights)."""
    tables = []
    for folder in folders:
        path = Path(folder) / "manifest.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; run `mst validate {folder}` to see why")
        tables.append(pq.read_table(path))
    return pa.concat_tables(tables)


def decode_sample(sample: dict[str, Any]) -> ShardRecord:
    """Turn a raw WebDataset sample (bytes per field) into a typed record."""
    meta = json.loads(sample["meta.json"])
    defects = shardspec.meta_defects(meta)
    if defects:
        raise ValueError(f"{sample.get('__key__')}: " + "; ".join(defects))
    data = sample.get("img.jpg") or sample.get("img.png")
    if data is None:
        raise ValueError(f"{sample.get('__key__')}: no image")
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    mask = None
    if "mask.png" in sample:
        mask = np.asarray(Image.open(io.BytesIO(sample["mask.png"])).convert("L"))
    return ShardRecord.from_parts(meta, image, mask)


def warn_and_skip(exn: Exception) -> bool:
    log.warning("skipping unreadable shard data: %s", exn)
    return True


def _shuffled_shards(urls: list[str], seed: int, epoch: int) -> Iterator[dict[str, str]]:
    order = list(urls)
    random.Random(f"{seed}-{epoch}").shuffle(order)
    for url in order:
        yield {"url": url}


class ShardList:
    """The shard list stage: a fresh, seeded order each epoch; loops forever when `repeat`."""

    def __init__(self, urls: list[str], seed: int = 0, shuffle: bool = True, repeat: bool = False) -> None:
        self.urls, self.seed, self.shuffle, self.repeat = urls, seed, shuffle, repeat
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        while True:
            if self.shuffle:
                yield from _shuffled_shards(self.urls, self.seed, self.epoch)
            else:
                yield from ({"url": u} for u in self.urls)
            self.epoch += 1
            if not self.repeat:
                return

    def __call__(self) -> Iterator[dict[str, str]]:  # WebDataset calls a source stage with no arguments
        return iter(self)


def shard_pipeline(
    folders: Sequence[str | Path],
    shuffle_buffer: int = 1000,
    seed: int = 0,
    repeat: bool = False,
    split: bool = True,
) -> Iterable[ShardRecord]:
    """A WebDataset pipeline yielding ShardRecords from every shard of `folders`.

    `split=True` splits shards by node (torch.distributed rank) and by DataLoader worker.
    """
    import webdataset as wds

    urls = list_shards(folders)
    stages: list[Any] = [ShardList(urls, seed=seed, shuffle=shuffle_buffer > 0, repeat=repeat)]
    if split:
        stages += [wds.split_by_node, wds.split_by_worker]
    stages.append(wds.tarfile_to_samples(handler=warn_and_skip))
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(100, shuffle_buffer), rng=random.Random(seed)))
    stages.append(wds.map(decode_sample, handler=warn_and_skip))
    return wds.DataPipeline(*stages)
