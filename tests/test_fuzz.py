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



# ---------------------------------------------------------------------------------------------
# Findings of the hostile test (one class each), so they stay fixed


def _aligned_one(tmp_path, name: str, save) -> dict:
    """Align a folder holding one image (written by SAVE(path)) with --aligned; its one sample's
    fields, decoded by the trainer's reader."""
    from mst_pipeline.align.folder import align_folder
    from mst_pipeline.align.settings import AlignSettings

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    save(data / name)
    summary = align_folder(data, out, "s", None, None, AlignSettings(aligned=True, detector="none"))
    assert summary.written == 1, summary.reasons
    assert validate_folder(out).ok
    ((key, fields),) = [kv for s in complete_shards(out) for kv in read_shard(s)]
    return {"record": decode_sample({"__key__": key, **fields}), "meta": json.loads(fields["meta.json"])}


class TestImageModesKeepTheirInformation:
    def test_a_16_bit_grey_png_is_rescaled_not_clipped(self, tmp_path):
        grey = (np.arange(64 * 32).reshape(64, 32) * 32).astype(np.uint16)  # 0 .. 65504
        got = _aligned_one(tmp_path, "g16.png", lambda p: Image.fromarray(grey).save(p))
        image = got["record"].image
        expected = np.round(grey.astype(np.float64) * 255 / 65535)
        assert np.abs(image[..., 0].astype(int) - expected).max() <= 1
        assert (image == 255).mean() < 0.01 and image.min() == 0  # the whole tonal range, not white

    def test_an_rgba_png_keeps_its_transparency_as_the_mask(self, tmp_path):
        rgba = np.zeros((64, 32, 4), np.uint8)
        rgba[..., :3] = random_image(32, 64, 3)
        rgba[:, 8:24, 3] = 255  # an opaque person, transparent sides
        rgba[:, 24:28, 3] = 128
        got = _aligned_one(tmp_path, "a.png", lambda p: Image.fromarray(rgba, "RGBA").save(p))
        record, meta = got["record"], got["meta"]
        assert meta["has_mask"] and record.mask is not None
        assert np.array_equal(record.mask, rgba[..., 3])
        assert np.array_equal(record.image[:, 8:24], rgba[:, 8:24, :3])  # opaque pixels exact
        assert np.all(record.image[:, :8] == 255)  # transparent: the padding white, and masked out

    def test_a_palette_png_with_a_transparent_colour_masks_it(self, tmp_path):
        index = np.zeros((64, 32), np.uint8)
        index[:, 8:24] = 1

        def save(path):
            img = Image.fromarray(index, "P")
            img.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
            img.save(path, transparency=0)

        record = _aligned_one(tmp_path, "p.png", save)["record"]
        assert np.array_equal(record.mask, np.where(index == 1, 255, 0))
        assert np.all(record.image[:, 8:24] == (200, 30, 10))

    def test_a_cmyk_jpeg_is_converted_by_the_exact_formula(self, tmp_path):
        cmyk = np.zeros((64, 32, 4), np.uint8)
        cmyk[..., 0], cmyk[..., 3] = 100, 60

        def save(path):
            Image.fromarray(cmyk, "CMYK").save(path, format="JPEG", quality=100)

        (tmp_path / "data").mkdir()
        save(tmp_path / "data" / "c.jpg")
        decoded = np.asarray(Image.open(tmp_path / "data" / "c.jpg")).astype(np.float64)  # the file's CMYK
        image = read_image(tmp_path / "data" / "c.jpg").astype(np.float64)
        expected = (255 - decoded[..., :3]) * (255 - decoded[..., 3:]) / 255
        assert np.abs(image - expected).max() <= 1


class TestMetaJsonWithinBounds:
    @pytest.mark.parametrize("field,value", [("density", "1" + "0" * 400), ("density", "9" * 5000),
                                             ("H", "[[" + "1" * 400 + ",0,0],[0,1,0],[0,0,1]]")])
    def test_a_huge_number_is_a_defect_in_every_reader(self, tmp_path, field, value):
        from shard_helpers import raw_sample

        members = raw_sample()
        members = [(n, d.replace(f'"{field}":'.encode(), f'"{field}":{value},"was":'.encode(), 1)
                    if n.endswith(".json") else d) for n, d in members]
        assert any(value.encode() in d for _, d in members)
        folder = tmp_path / "f"
        folder.mkdir()
        write_raw_tar(folder / "src-000-000000.tar", members)
        report = validate_folder(folder)
        assert any("number of" in d.problem for d in report.defects)
        key, fields = next(read_shard(folder / "src-000-000000.tar"))
        with pytest.raises(Exception, match="number of") as e:
            decode_sample({"__key__": key, **fields})
        assert e.type.__name__ == "SampleDefect"
        write_manifest(folder)  # the rebuild passes over it
        check_folder(folder)

    def test_a_meta_nested_200000_deep_is_a_defect(self, tmp_path):
        from uh_train.format.spec import MetaTooComplex, loads_meta

        with pytest.raises(MetaTooComplex, match="nested too deeply"):
            loads_meta(b"[" * 200_000 + b"]" * 200_000)
        assert loads_meta(b'{"a": "' + b"[" * 40 + b'"}') == {"a": "[" * 40}  # brackets in strings don't count


class TestManifestSchemaIsChecked:
    @pytest.mark.parametrize("bad", ["other-columns", "a-folder", "not-parquet"])
    def test_an_unusable_manifest_is_one_readable_line_everywhere(self, tmp_path, bad):
        import pyarrow as pa
        import pyarrow.parquet as pq
        from typer.testing import CliRunner

        from mst_pipeline.cli import app
        from uh_train.format.manifest import MANIFEST, ManifestError, read_manifest
        from uh_train.shard_reader import read_manifests

        folder = tmp_path / "f"
        with ShardWriter(folder, "src") as w:
            w.write(encode_sample("src", "a", random_image(16, 32, 0), sample_fields(16, 32, 0)))
        (folder / MANIFEST).unlink()
        if bad == "other-columns":
            pq.write_table(pa.table({"key": ["src/a"], "x": [1]}), folder / MANIFEST)
        elif bad == "a-folder":
            (folder / MANIFEST).mkdir()
        else:
            (folder / MANIFEST).write_bytes(b"PAR1 not really")
        with pytest.raises(ManifestError):
            read_manifest(folder)
        with pytest.raises(ValueError):
            read_manifests([folder])
        res = CliRunner().invoke(app, ["validate", str(folder)])
        assert res.exit_code == 1 and "manifest" in res.output and isinstance(res.exception, SystemExit)
        if bad != "a-folder":
            write_manifest(folder)  # the writer rebuilds one of another schema
            assert read_manifest(folder).num_rows == 1

    def test_a_shard_edited_in_place_at_the_same_size_is_read_again(self, tmp_path):
        import os

        from uh_train.format.manifest import read_manifest

        folder = tmp_path / "f"
        with ShardWriter(folder, "src") as w:
            w.write(encode_sample("src", "a", random_image(16, 32, 0), sample_fields(16, 32, 0)))
        (shard,) = complete_shards(folder)
        with tarfile.open(shard) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
        meta = json.loads(members[-1][1])
        meta["kind"] = "face"  # "full" -> "face": same length, same tar size
        data = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
        assert len(data) == len(members[-1][1])
        before = shard.stat().st_size
        write_raw_tar(shard, members[:-1] + [(members[-1][0], data)])
        os.utime(shard)
        assert shard.stat().st_size == before
        write_manifest(folder)
        assert read_manifest(folder).column("kind").to_pylist() == ["face"]
        assert validate_folder(folder).ok


class TestDeriveSrChecksItsInputs:
    def test_an_invalid_input_sample_is_rejected_not_laundered(self, tmp_path):
        from mst_pipeline.shards.rejects import read_rejects
        from mst_pipeline.synthesis.derive_sr import derive_sr

        from shard_helpers import raw_sample, valid_meta

        inp, out = tmp_path / "in", tmp_path / "out"
        inp.mkdir()
        meta = valid_meta("src/a", 32, 64)  # meta says 32x64 ...
        image = Image.new("RGB", (16, 16))  # ... the image is 16x16
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        good = raw_sample("src/b", valid_meta("src/b", 32, 64), w=32, h=64)
        write_raw_tar(inp / "src-000-000000.tar", raw_sample("src/a", meta, buf.getvalue()) + good)
        write_manifest(inp)
        summary = derive_sr(inp, out)
        assert (summary.written, summary.rejected) == (1, 1)
        (reject,) = read_rejects(out)
        assert reject["key"] == "src_sr/a" and "16x16" in reject["reason"]
        assert validate_folder(out).ok


class TestTheSpecStatesWhatTheCodeEnforces:
    def test_the_pixel_cap_in_the_readme_is_the_one_enforced(self):
        import re

        from uh_train.format.spec import MAX_IMAGE_PIXELS

        text = (Path(__file__).resolve().parents[1] / "shards" / "README.md").read_text()
        digits = "⁰¹²³⁴⁵⁶⁷⁸⁹"
        (power,) = re.findall(f"width·height ≤ 2([{digits}]+)", text)
        assert 2 ** int(power.translate(str.maketrans(digits, "0123456789"))) == MAX_IMAGE_PIXELS
