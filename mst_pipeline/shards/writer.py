"""Writing and reading `unitedhuman-shard/1` shard folders (spec: shards/README.md).

The writer is crash-safe and resumable:
* a shard is written as `NAME.tar.tmp` and renamed to `NAME.tar` only when complete, so a killed run
  never leaves a truncated `.tar` behind; the next run deletes the `.tmp` and redoes its samples;
* an exception inside the writer (an unexpected error in the caller, a full disk) closes the open
  shard with the samples written completely so far (a half-written sample is cut off first), so
  finished work is never thrown away;
* one writer per (folder, source, part) at a time, and no two writers of overlapping slices of a
  source's keys (`--part k/n`): a second one is refused (`WriterBusy`, naming the other process)
  instead of deleting the first one's live temporary shard or writing its keys again;
* a shard is only ever completed with at least one whole sample: an aborted run leaves no empty
  shard, and the next run of a (source, part) deletes an empty or unreadable one it finds (its
  samples, if any, are redone);
* `ShardWriter.has(key)` tells a resumed run which keys complete shards already hold;
* `manifest.parquet` is rebuilt from the complete shards and replaced atomically.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import re
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from uh_train.format import spec as shardspec
from uh_train.format.locks import holder, is_held, take_lock
from uh_train.format.manifest import MANIFEST, MANIFEST_SCHEMA, manifest_row, read_manifest
from uh_train.format.spec import FORMAT, SHARD_NAME

TMP_SUFFIX = ".tmp"


class ShardError(Exception):
    """A shard folder or file that cannot be used, with a one-line explanation."""


class WriterBusy(ShardError):
    """Another process (or writer) is writing the same source and part into the folder."""


@dataclass
class EncodedSample:
    key: str
    image: bytes
    image_ext: str
    meta: dict[str, Any]
    mask: bytes | None = None


def encode_image(image: np.ndarray, ext: str, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if ext == "jpg":
        pil.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif ext == "png":
        pil.save(buf, format="PNG", optimize=False)
    else:
        raise ValueError(f"unsupported image type {ext!r} (jpg or png)")
    return buf.getvalue()


def encode_sample(
    source: str,
    stem: str,
    image: np.ndarray,
    fields: dict[str, Any],
    mask: np.ndarray | None = None,
    ext: str = "jpg",
    encoded: bytes | None = None,
) -> EncodedSample:
    """Build a complete, schema-checked sample from an RGB uint8 image and its metadata fields.

    `fields` holds kind, tier, H, region, density, keypoints, smpl, fit, orig; this function adds
    format, key, source, image type, size and has_mask, then validates the whole record.
    `encoded`: the image's file bytes (of type EXT, decoding to `image`), stored as they are instead
    of re-encoding (an aligned full-body photo keeps its original bytes).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [h, w, 3], got {image.dtype} {list(image.shape)}")
    key = shardspec.make_key(source, stem)
    h, w = image.shape[:2]
    meta = dict(fields)
    meta.update(format=FORMAT, key=key, source=key.split("/")[0], image=ext, width=w, height=h,
                has_mask=mask is not None)
    meta = json.loads(json.dumps(meta, default=_json_default))
    defects = shardspec.meta_defects(meta)
    if mask is not None and mask.shape != (h, w):
        defects.append(f"mask has shape {list(mask.shape)}, image is {h}x{w}")
    if defects:
        raise ValueError(f"sample {key}: " + "; ".join(defects))
    mask_bytes = encode_image(mask.astype(np.uint8), "png") if mask is not None else None
    data = encoded if encoded is not None else encode_image(image, ext)
    return EncodedSample(key, data, ext, meta, mask_bytes)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot store {type(x).__name__} in meta.json")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def complete_shards(folder: str | os.PathLike) -> list[Path]:
    """Complete shard files of a folder (names matching the spec), sorted."""
    return sorted(p for p in Path(folder).glob("*.tar") if SHARD_NAME.match(p.name))


def read_shard(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {field: bytes}) per sample, grouping members the way WebDataset does.

    Raises ShardError with a one-line reason for a file that is not a tar or is truncated.
    """
    path = Path(path)
    try:
        compressed = shardspec.shard_compression_defect(path)
    except OSError as e:
        raise ShardError(f"{path.name}: not a readable tar file ({e})") from None
    if compressed:
        raise ShardError(compressed)
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as e:
        raise ShardError(f"{path.name}: not a readable tar file ({e})") from None
    current: str | None = None
    fields: dict[str, bytes] = {}
    try:
        with tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)
                stem, _, ext = base[-1].partition(".")
                key = f"{base[0]}/{stem}" if len(base) == 2 else stem
                if key != current:  # the previous sample is complete before this member is read
                    if current is not None:
                        yield current, fields
                    current, fields = key, {}
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise ShardError(f"{path.name}: truncated inside member {member.name}")
                fields[ext] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"{path.name}: truncated or corrupt tar ({e})") from None
    if current is not None:
        yield current, fields


def shard_keys(path: str | os.PathLike) -> list[str]:
    return [key for key, _ in read_shard(path)]


class ShardWriter:
    """Write samples of one source into rolling shards `{source}-{part:03d}-{index:06d}.tar`.

    Use as a context manager. `part` separates concurrent writers of the same source; PARTS (n of
    `--part k/n`, with part = k) declares the slice of keys the writer owns, so that a writer of an
    overlapping slice is refused; 0 claims only the part number.
    """

    _lock = None  # the writer's lock file, once acquired

    def __init__(
        self,
        folder: str | os.PathLike,
        source: str,
        part: int = 0,
        parts: int = 0,
        max_count: int = 1000,
        max_bytes: int = 1 << 30,
        update_manifest: bool = True,
    ) -> None:
        if shardspec.sanitise_part(source) != source:
            raise ValueError(f"source name {source!r} must use only [A-Za-z0-9_-]")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.source, self.part = source, part
        self.max_count, self.max_bytes = max_count, max_bytes
        self.update_manifest = update_manifest
        self.written = 0
        self.skipped = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp_path: Path | None = None
        self._count = 0
        self._pending: set[str] = set()
        self._lock = _writer_lock(self.folder, source, part, parts)
        prefix = f"{source}-{part:03d}-"
        for stale in self.folder.glob(f"{prefix}*.tar{TMP_SUFFIX}"):
            stale.unlink()  # half-written by a killed run: discard, its samples are redone
        self._existing: set[str] = set()
        self._next_index = 0
        for shard in complete_shards(self.folder):
            m = SHARD_NAME.match(shard.name)
            if m["source"] != source:
                continue
            own = int(m["part"]) == part
            if own:
                self._next_index = max(self._next_index, int(m["index"]) + 1)
            try:
                keys = shard_keys(shard)
            except ShardError:
                keys = None  # `mst validate` reports it; its samples are not trusted as done
            if own and not keys:
                shard.unlink()  # empty or unreadable, left by an earlier run: its samples are redone
                continue
            self._existing.update(keys or ())

    def has(self, key: str) -> bool:
        """True when `key` is already in a complete shard (or written in this run)."""
        return key in self._existing or key in self._pending

    def write(self, sample: EncodedSample) -> bool:
        """Append a sample; returns False (and writes nothing) when its key is already done."""
        if self.has(sample.key):
            self.skipped += 1
            return False
        if self._tar is None:
            self._open()
        assert self._tar is not None and self._tmp_path is not None
        mtime = time.time()
        tar, start, members = self._tar, self._tar.offset, len(self._tar.members)
        try:
            _add_member(tar, f"{sample.key}.img.{sample.image_ext}", sample.image, mtime)
            if sample.mask is not None:
                _add_member(tar, f"{sample.key}.mask.png", sample.mask, mtime)
            _add_member(tar, f"{sample.key}.meta.json", shardspec.dumps_meta(sample.meta), mtime)
        except BaseException:
            # Cut the half-written sample off, so the shard can still be closed with the complete ones.
            tar.fileobj.seek(start)
            tar.fileobj.truncate()
            tar.offset = start
            del tar.members[members:]
            raise
        self._pending.add(sample.key)
        self._count += 1
        self.written += 1
        if self._count >= self.max_count or self._tar.fileobj.tell() >= self.max_bytes:
            self._finish()
        return True

    def _open(self) -> None:
        name = shardspec.shard_name(self.source, self.part, self._next_index)
        self._next_index += 1
        self._tmp_path = self.folder / (name + TMP_SUFFIX)
        self._tar = tarfile.open(self._tmp_path, "w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def _finish(self) -> None:
        if self._tar is None:
            return
        assert self._tmp_path is not None
        fileobj = self._tar.fileobj
        self._tar.close()
        del fileobj
        if not self._pending:  # no whole sample (the first one failed): never an empty shard
            self._tmp_path.unlink()
            self._tar, self._tmp_path = None, None
            return
        with open(self._tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp_path, self._tmp_path.with_suffix(""))
        self._existing |= self._pending
        self._pending = set()
        self._tar, self._tmp_path = None, None

    def close(self) -> None:
        """Close the open shard with the samples written so far, update the manifest, release the lock."""
        try:
            self._finish()
            if self.update_manifest:
                write_manifest(self.folder)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases its flock
            self._lock = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Ctrl-C or an error: every sample written so far is complete (a half-written one was cut
        # off in `write`), so the open shard is closed and kept for the resumed run.
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            self._release()

    def __del__(self) -> None:
        self._release()


def slices_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two writers' claims (part k, of n slices; n = 0: the part number alone) can share a key.

    Slice k/n holds the files whose hash h has h mod n = k; h mod n = k and h mod n' = k' have a
    common solution exactly when k = k' mod gcd(n, n') (Chinese remainder theorem).
    """
    (k, n), (k2, n2) = a, b
    if k == k2:
        return True
    if n == 0 or n2 == 0:
        return False
    return (k - k2) % math.gcd(n, n2) == 0


def _writer_lock(folder: Path, source: str, part: int, parts: int):
    """An exclusive lock on FOLDER/.{source}-{part}-of-{parts}.lock held while the writer lives, taken
    only when no live writer holds a slice overlapping this one.

    A second writer of the same part would delete the first one's live temporary shard (it looks
    like one left by a killed run) and number its shards the same; one of an overlapping slice would
    write the same keys again: both are refused. The lock belongs to the open file, so a killed
    writer's lock goes with it.
    """
    claim = f"part {part}" + (f" (slice {part}/{parts})" if parts else "")
    pattern = re.compile(rf"^\.{re.escape(source)}-(\d{{3}})-of-(\d+)\.lock$")
    with open(folder / f".{source}.slices.lock", "a") as mutex:
        fcntl.flock(mutex, fcntl.LOCK_EX)  # one writer at a time looks at the others' claims
        for other in sorted(folder.glob(f".{source}-*-of-*.lock")):
            m = pattern.match(other.name)
            if m is None or not slices_overlap((part, parts), (int(m[1]), int(m[2]))) or not is_held(other):
                continue
            theirs = f"part {int(m[1])}" + (f" (slice {int(m[1])}/{int(m[2])})" if int(m[2]) else "")
            raise WriterBusy(f"another run is writing source {source!r} {theirs} into {folder}, which overlaps "
                             f"this run's {claim} ({holder(other)}); wait for it to finish, or give this run "
                             "a disjoint --part or another --out")
        handle = take_lock(folder / f".{source}-{part:03d}-of-{parts}.lock", f"writing {source} {claim}")
    if handle is None:  # cannot happen under the mutex; kept as a refusal, never a second writer
        raise WriterBusy(f"another run is writing source {source!r} {claim} into {folder}")
    return handle


# ---------------------------------------------------------------------------------------------
# Manifest (schema and rows: uh_train.format.manifest)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    with open(folder / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_manifest(folder: str | os.PathLike) -> int:
    """Rebuild `manifest.parquet` from the folder's complete shards; replaced atomically.

    Rows of shards the current manifest already describes are reused (same shard name and size, and
    not modified since the manifest was written); other shards are read. Unreadable shards are left
    out (`mst validate` reports them). Returns the number of rows.
    """
    folder = Path(folder)
    with _folder_lock(folder):
        old_rows: dict[str, list[dict[str, Any]]] = {}
        try:
            old = read_manifest(folder)
        except (OSError, pa.ArrowException, ValueError):
            old = None  # a damaged manifest (or one of another schema) is simply rebuilt
        if old is not None and "shard_bytes" in old.column_names:
            for row in old.to_pylist():
                old_rows.setdefault(row["shard"], []).append(row)
        made = (folder / MANIFEST).stat().st_mtime_ns if old is not None else 0
        rows: list[dict[str, Any]] = []
        for shard in complete_shards(folder):
            stat = shard.stat()
            size = stat.st_size
            cached = old_rows.get(shard.name)
            # Reused only when unchanged: same size, and not modified since the manifest was written
            # (a shard edited in place at the same size is read again).
            if cached and cached[0]["shard_bytes"] == size and stat.st_mtime_ns < made:
                rows += cached
                continue
            try:
                new = []
                for _key, fields in read_shard(shard):
                    meta = shardspec.loads_meta(fields["meta.json"])
                    if shardspec.meta_defects(meta):
                        continue
                    new.append(manifest_row(meta, shard.name, size))
            except (ShardError, KeyError, ValueError):
                continue
            rows += new
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        tmp = folder / (MANIFEST + TMP_SUFFIX)
        pq.write_table(table, tmp)
        os.replace(tmp, folder / MANIFEST)
        return len(rows)
