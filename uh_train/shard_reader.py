"""Reading `unitedhuman-shard/1` shards for training: a WebDataset pipeline of small stages.

    shard list -> (split by node) -> (split by worker) -> tar samples -> shuffle -> decode -> ShardRecord

Under `torchrun` (torch.distributed initialised) each rank reads a disjoint subset of the shards,
and each DataLoader worker a disjoint subset of its rank's shards. A truncated or corrupt shard, or
a sample that breaks the spec, is skipped with a counted, rate-limited warning rather than ending a
long run; a repeating shard list that yields no sample in a whole pass raises `NoSamples` instead of
looping forever.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from uh_train.format import spec
from uh_train.format.image import SampleDefect, open_image
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


_GREY16 = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _grey8(img: Image.Image) -> np.ndarray:
    """uint8 [h, w] of a grey image of any bit depth (16-bit grey rescaled, not clipped to white)."""
    if img.mode in _GREY16:
        arr = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    return np.asarray(img.convert("L"))


def image_pixels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 RGB [h, w, 3], uint8 alpha [h, w] or None) of an image in any mode a JPEG or PNG can
    hold: grey of 1, 8 or 16 bits, palette (with transparency), CMYK, with or without alpha.
    Transparent pixels are composited over the padding white; the alpha is returned so that they
    do not count as real."""
    alpha = None
    if img.mode in _GREY16:
        return np.repeat(_grey8(img)[..., None], 3, axis=2), None
    if "transparency" in img.info and img.mode in ("1", "L", "RGB", "P") or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(img.getchannel("A"))
    rgb = np.asarray(img.convert("RGB"))
    if alpha is None or alpha.min() == 255:
        return rgb, None
    a = alpha[..., None].astype(np.float32) / 255.0
    rgb = np.round(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return rgb, alpha


def decode_sample(sample: dict[str, Any]) -> ShardRecord:
    """Turn a raw WebDataset sample (bytes per field) into a typed record, or raise SampleDefect.

    The same per-sample checks as `mst validate`: the metadata against the spec (geometry
    included), the image's and mask's size against the metadata (read from the file header, before
    decoding), the mask single-channel."""
    key = sample.get("__key__")
    try:
        meta = json.loads(sample["meta.json"])
    except KeyError:
        raise SampleDefect(key, ["no meta.json"]) from None
    except (ValueError, RecursionError) as e:  # bad UTF-8 / JSON, or nesting deeper than Python's stack
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
            if m.mode not in ("1", "L", "P", *_GREY16):
                raise SampleDefect(key, [f"mask.png has mode {m.mode}, expected a single channel"])
            mask = _grey8(m)
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
    stage after the tar reader that lets the list see what its shards yielded.
    """

    def __init__(self, urls: list[str], seed: int = 0, shuffle: bool = True, repeat: bool = False) -> None:
        self.urls, self.seed, self.shuffle, self.repeat = urls, seed, shuffle, repeat
        self.epoch = 0
        self.samples = 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        if self.repeat and not self.urls:
            raise NoSamples("no shards to read")
        while True:
            before = self.samples
            if self.shuffle:
                yield from _shuffled_shards(self.urls, self.seed, self.epoch)
            else:
                yield from ({"url": u} for u in self.urls)
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
