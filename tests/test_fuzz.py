"""Seeded fuzzing of the shard format's public entry points: byte flips and truncations of whole
tars, of single members (image, mask, meta.json) and of image files given to `mst align`.

For every case: `mst validate` (validate_folder), the manifest rebuild, the trainer's reader
(`shard_pipeline`, `decode_sample`) and align's `read_image` end without a traceback and within a
time limit, and the reader never yields a sample that `mst validate` rejects.
"""

from __future__ import annotations

import io
import json
import signal
import tarfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mst_pipeline.detect.images import Rejected, read_image
from mst_pipeline.shards.validate import check_sample, validate_folder
from mst_pipeline.shards.writer import (
    ShardError,
    ShardWriter,
    complete_shards,
    encode_sample,
    read_shard,
    write_manifest,
)
from uh_train.shard_reader import decode_sample, shard_pipeline

from shard_helpers import random_image, sample_fields, write_raw_tar

SEED = 20260
CASES = {"tar": 90, "member": 150, "meta": 60, "image": 60}
CASE_SECONDS = 5  # a case that takes longer is a hang


@contextmanager
def deadline(seconds: int, what: str):
    """Fail (instead of hanging the suite) when the block runs longer than SECONDS."""
    def expire(signum, frame):
        raise TimeoutError(f"{what} took more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flip 1-8 random bytes, truncate, cut a block out, or duplicate a block."""
    if not data:
        return data
    buf = bytearray(data)
    how = rng.integers(4)
    if how == 0:
        for i in rng.integers(0, len(buf), size=rng.integers(1, 9)):
            buf[i] ^= int(rng.integers(1, 256))
        return bytes(buf)
    a = int(rng.integers(0, len(buf)))
    if how == 1:
        return bytes(buf[:a])
    b = int(rng.integers(a, min(len(buf), a + 512) + 1))
    return bytes(buf[:a] + buf[b:]) if how == 2 else bytes(buf[:b] + buf[a:b] + buf[b:])


def mutate_meta(meta: dict, rng: np.random.Generator) -> dict:
    """A structurally valid JSON document with one field replaced by a hostile value."""
    hostile = [None, "1", -1, 0, 1e300, float("nan"), float("inf"), [], {}, [[1, 2]], "x" * 10000, True,
               [[float("nan")] * 3] * 3, [[0.0] * 3] * 3, {"a": {"b": {"c": [1]}}}, 2**63, -1e-300]
    meta = json.loads(json.dumps(meta))
    path = [k for k in meta if k not in ("format",)]
    key = path[int(rng.integers(len(path)))]
    value = hostile[int(rng.integers(len(hostile)))]
    if isinstance(meta[key], dict) and meta[key] and rng.random() < 0.5:
        sub = list(meta[key])
        meta[key][sub[int(rng.integers(len(sub)))]] = value
    else:
        meta[key] = value
    return meta


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid folder: PNG, JPEG and masked samples in one shard; its members; an image file."""
    folder = tmp_path_factory.mktemp("base")
    with ShardWriter(folder, "src") as w:
        for i, (ext, mask) in enumerate((("png", False), ("jpg", False), ("png", True))):
            m = (np.arange(16 * 32).reshape(32, 16) % 3 * 100).astype(np.uint8) if mask else None
            w.write(encode_sample("src", f"s{i}", random_image(16, 32, i), sample_fields(16, 32, i), mask=m, ext=ext))
    assert validate_folder(folder).ok
    (shard,) = complete_shards(folder)
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    return shard.read_bytes(), members


def check_folder(folder: Path) -> None:
    """The properties every case must keep (see the module docstring)."""
    with deadline(CASE_SECONDS, f"checking {folder.name}"):
        validate_folder(folder)
        write_manifest(folder)
        report = validate_folder(folder)
        accepted = set()  # keys `mst validate` finds no defect in
        for shard in complete_shards(folder):
            try:
                for key, fields in read_shard(shard):
                    if not check_sample(key, fields)[1]:
                        accepted.add(key)
            except ShardError:
                pass
        # Per-sample verdicts: a damaged shard's intact samples are not in the manifest (it lists only
        # complete shards), which is a defect of the folder, not of those samples.
        defective = {d.key for d in report.defects if "manifest" not in d.problem}
        records = list(shard_pipeline([folder], shuffle_buffer=0, split=False))
        for shard in complete_shards(folder):  # the decode stage alone: only errors the pipeline skips
            try:
                samples = [{"__key__": key, **fields} for key, fields in read_shard(shard)]
            except ShardError:
                continue
            for sample in samples:
                try:
                    decode_sample(sample)
                except Exception:  # noqa: BLE001, S112 - any error here is a skip with a reason in the pipeline
                    continue
    yielded = {r.key for r in records}
    wrongly = yielded - (accepted - defective)
    assert not wrongly, f"the reader yielded samples `mst validate` rejects: {sorted(wrongly)}: " + "; ".join(
        d.problem for d in report.defects if d.key in wrongly)


def _cases(kind: str) -> list[int]:
    return list(range(CASES[kind]))


def run_case(failures: list[str], name: str, folder: Path) -> None:
    """check_folder, recording a failure (a broken property or any exception) instead of stopping."""
    try:
        check_folder(folder)
    except Exception as e:  # noqa: BLE001 - every failing case is listed, not just the first
        failures.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")


@pytest.mark.parametrize("case", [pytest.param(_cases("tar"), id="tars")])
def test_fuzzed_tars(tmp_path, base, case):
    shard_bytes, _ = base
    rng = np.random.default_rng([SEED, 0])
    failures: list[str] = []
    for i in case:
        folder = tmp_path / f"tar{i}"
        folder.mkdir()
        (folder / "src-000-000000.tar").write_bytes(mutate(shard_bytes, rng))
        run_case(failures, folder.name, folder)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", [pytest.param(_cases("member"), id="members")])
def test_fuzzed_members(tmp_path, base, case):
    _, members = base
    rng = np.random.default_rng([SEED, 1])
    failures: list[str] = []
    for i in case:
        target = int(rng.integers(len(members)))
        changed = [(n, mutate(d, rng) if j == target else d) for j, (n, d) in enumerate(members)]
        folder = tmp_path / f"member{i}"
        folder.mkdir()
        write_raw_tar(folder / "src-000-000000.tar", changed)
        run_case(failures, folder.name, folder)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", [pytest.param(_cases("meta"), id="meta-values")])
def test_fuzzed_meta_values(tmp_path, base, case):
    _, members = base
    rng = np.random.default_rng([SEED, 2])
    failures: list[str] = []
    metas = [j for j, (n, _) in enumerate(members) if n.endswith(".meta.json")]
    for i in case:
        target = metas[int(rng.integers(len(metas)))]
        changed = list(members)
        name, data = changed[target]
        changed[target] = (name, json.dumps(mutate_meta(json.loads(data), rng)).encode())
        folder = tmp_path / f"meta{i}"
        folder.mkdir()
        write_raw_tar(folder / "src-000-000000.tar", changed)
        run_case(failures, folder.name, folder)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", [pytest.param(_cases("image"), id="align-images")])
def test_fuzzed_images_are_read_or_rejected_by_align(tmp_path, case):
    rng = np.random.default_rng([SEED, 3])
    sources = {}
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")):
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated: the EXIF block is read
        Image.fromarray(random_image(24, 40, 7)).save(buf, format=fmt, exif=exif)
        sources[ext] = buf.getvalue()
    outcomes = {"read": 0, "rejected": 0}
    for i in case:
        ext = list(sources)[i % 3]
        path = tmp_path / f"img{i}.{ext}"
        path.write_bytes(mutate(sources[ext], rng))
        with deadline(CASE_SECONDS, path.name):
            try:
                image = read_image(path)
            except Rejected as e:
                assert str(e) and "\n" not in str(e)
                outcomes["rejected"] += 1
            else:
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                outcomes["read"] += 1
    assert outcomes["rejected"] > 0  # the mutations do reach the decoder

