"""Reading `unitedhuman-shard/1` shards for training: a WebDataset pipeline of small stages.

    shard list -> (split by node) -> (split by worker) -> tar samples -> shuffle -> decode -> ShardRecord

Under `torchrun` (torch.distributed initialised) each rank reads a disjoint subset of the shards,
and each DataLoader worker a disjoint subset of its rank's shards. A truncated or corrupt shard, or
a sample that breaks the spec, is skipped with a counted, rate-limited warning rather than ending a
long run; a repeating shard list that yields no sample in a whole pass raises `NoSamples` instead of
looping forever.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from uh_train.format import spec
from uh_train.format.image import GREY16_MODES, SampleDefect, grey8, image_pixels, open_image
from uh_train.format.manifest import MANIFEST, read_manifest
from uh_train.format.spec import SHARD_NAME, ShardRecord

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
        table = read_manifest(folder)
        if table is None:
            raise FileNotFoundError(f"{Path(folder) / MANIFEST} is missing; run `mst validate {folder}` to see why")
        tables.append(table)
    return pa.concat_tables(tables)


class NoSamples(RuntimeError):
    """A shard list that, read whole, yielded no sample at all."""


class ShardRefused(ValueError):
    """A whole shard file that breaks the spec (a compressed tar); `shard` is its file name."""

    def __init__(self, shard: str, reason: str) -> None:
        super().__init__(reason)
        self.shard = shard


def decode_sample(sample: dict[str, Any]) -> ShardRecord:
    """Turn a raw WebDataset sample (bytes per field) into a typed record, or raise SampleDefect.

    The same per-sample checks as `mst validate`: the metadata against the spec (geometry
    included), the image's and mask's size against the metadata (read from the file header, before
    decoding), the mask single-channel."""
    key = sample.get("__key__")
    try:
        meta = spec.loads_meta(sample["meta.json"])
    except KeyError:
        raise SampleDefect(key, ["no meta.json"]) from None
    except spec.MetaTooComplex as e:
        raise SampleDefect(key, [str(e)]) from None
    except ValueError as e:  # bad UTF-8 or JSON
        raise SampleDefect(key, [f"meta.json is not valid JSON ({type(e).__name__})"]) from None
    defects = spec.meta_defects(meta)
    if defects:
        raise SampleDefect(key, defects)
    data = sample.get("img.jpg") or sample.get("img.png")
    if data is None:
        raise SampleDefect(key, ["no image"])
    w, h = meta["width"], meta["height"]
    try:
        image, alpha = image_pixels(open_image(data, "image", w, h))
        mask = None
        if "mask.png" in sample:
            m = open_image(sample["mask.png"], "mask.png", w, h)
            if m.mode not in ("1", "L", "P", *GREY16_MODES):
                raise SampleDefect(key, [f"mask.png has mode {m.mode}, expected a single channel"])
            mask = grey8(m)
    except SampleDefect as e:
        raise SampleDefect(key, e.reasons) from None
    if alpha is not None:
        mask = alpha if mask is None else np.minimum(mask, alpha)
    return ShardRecord.from_parts(meta, image, mask)


class SkipLog:
    """Counts skipped data per reason and rate-limits the warnings: each reason is logged at its
    1st, 2nd, 3rd, 10th, 100th, ... occurrence, with the count so far."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last: deque[str] = deque(maxlen=5)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, what: str, reason: str) -> None:
        category = re.sub(r"'[^']*'|\d[\d.e+-]*", "_", reason)[:120]  # values vary, the reason does not
        self.counts[category] += 1
        self.last.append(f"{what}: {reason}")
        n = self.counts[category]
        if n <= 3 or (n >= 10 and str(n).rstrip("0") == "1"):
            suffix = f" ({n} times so far for this reason, {self.total} skips in all)" if n > 1 else ""
            log.warning("skipping %s: %s%s", what, reason, suffix)


skips = SkipLog()  # per process: each DataLoader worker counts its own


def warn_and_skip(exn: Exception) -> bool:
    if isinstance(exn, SampleDefect):
        skips.record(f"sample {exn.key}", "; ".join(exn.reasons))
    elif isinstance(exn, ShardRefused):
        skips.record(f"shard {exn.shard}", str(exn))
    else:
        skips.record("unreadable shard data", f"{type(exn).__name__}: {exn}")
    return True


def _shuffled_shards(urls: list[str], seed: int, epoch: int) -> Iterator[dict[str, str]]:
    order = list(urls)
    random.Random(f"{seed}-{epoch}").shuffle(order)
    for url in order:
        yield {"url": url}


class ShardList:
    """The shard list stage: a fresh, seeded order each epoch; loops forever when `repeat`.

    With `repeat`, a pass over every shard that yields no sample (empty, unreadable or 0-byte tars)
    raises NoSamples instead of listing the same shards again forever; `count_samples` is the
    stage after the tar reader that lets the list see what its shards yielded. A compressed tar
    (which the tar reader would open) is not a shard: it is passed to `handler` as ShardRefused and
    skipped, as `mst validate` refuses it.
    """

    def __init__(self, urls: list[str], seed: int = 0, shuffle: bool = True, repeat: bool = False,
                 handler: Callable[[Exception], bool] = warn_and_skip) -> None:
        self.urls, self.seed, self.shuffle, self.repeat = urls, seed, shuffle, repeat
        self.handler = handler
        self.epoch = 0
        self.samples = 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        if self.repeat and not self.urls:
            raise NoSamples("no shards to read")
        while True:
            before = self.samples
            order = _shuffled_shards(self.urls, self.seed, self.epoch) if self.shuffle else \
                ({"url": u} for u in self.urls)
            for item in order:
                try:
                    defect = spec.shard_compression_defect(item["url"])
                except OSError:
                    defect = None  # the tar reader reports an unreadable file
                if defect is None:
                    yield item
                else:
                    self.handler(ShardRefused(Path(item["url"]).name, defect))
            self.epoch += 1
            if not self.repeat:
                return
            if self.samples == before:
                names = ", ".join(Path(u).name for u in self.urls[:3]) + (", ..." if len(self.urls) > 3 else "")
                raise NoSamples(f"a whole pass over {len(self.urls)} shard(s) ({names}) yielded no sample; "
                                f"last problems: {' | '.join(skips.last) or 'none (empty tars)'}")

    def count_samples(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in samples:
            self.samples += 1
            yield sample

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
    shard_list = ShardList(urls, seed=seed, shuffle=shuffle_buffer > 0, repeat=repeat)
    stages: list[Any] = [shard_list]
    if split:
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [wds.tarfile_to_samples(handler=warn_and_skip), shard_list.count_samples]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(100, shuffle_buffer), rng=random.Random(seed)))
    stages.append(wds.map(decode_sample, handler=warn_and_skip))
    return wds.DataPipeline(*stages)
