"""The trainer's reader on hostile data: every image mode decodes to the right pixels, sizes are
checked against meta before decoding, bad samples are skipped and counted (never ending a run), and
a source without usable samples stops the run at start-up, or within a bounded number of draws."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mst_pipeline.shards.writer import ShardWriter, encode_image, encode_sample
from uh_train import shard_reader
from uh_train.data.patches import PatchConfig
from uh_train.data.streams import PatchBatches, source_stream
from uh_train.format.image import SampleDefect
from uh_train.shard_reader import SkipLog, decode_sample
from uh_train.training import cli

from shard_helpers import random_image, raw_folder, raw_sample, sample_fields, valid_meta, valid_sample


def sample_dict(image: bytes, meta: dict | None = None, mask: bytes | None = None) -> dict:
    d = {"__key__": "src/a", "img.png": image, "meta.json": json.dumps(meta or valid_meta()).encode()}
    if mask is not None:
        d["mask.png"] = mask
    return d


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_sixteen_bit_grey_keeps_its_levels():
    levels = (np.arange(32 * 16).reshape(32, 16) * 128).astype(np.uint16)  # 0 .. 65408
    record = decode_sample(sample_dict(encode_image(levels, "png")))
    assert record.image.shape == (32, 16, 3)
    expected = np.round(levels / 257.0)
    assert np.abs(record.image[..., 0].astype(float) - expected).max() <= 1
    assert (record.image[..., 0] == record.image[..., 2]).all() and record.image.min() == 0


def test_grey_palette_and_cmyk_decode_to_their_colours():
    rgb = random_image()
    grey = decode_sample(sample_dict(encode_image(rgb[..., 0], "png"))).image
    assert (grey == rgb[..., :1]).all()
    pal = Image.fromarray(rgb).quantize(16)
    assert (decode_sample(sample_dict(png(pal))).image == np.asarray(pal.convert("RGB"))).all()
    flat = np.zeros((32, 16, 3), np.uint8) + np.array([200, 40, 90], np.uint8)
    buf = io.BytesIO()
    Image.fromarray(flat).convert("CMYK").save(buf, format="JPEG", quality=100)
    meta = {**valid_meta(), "image": "jpg"}
    cmyk = decode_sample({"__key__": "src/a", "img.jpg": buf.getvalue(), "meta.json": json.dumps(meta).encode()})
    assert np.abs(cmyk.image.astype(int) - flat).max() <= 8


def test_alpha_is_composited_on_white_and_masks_the_transparent_pixels():
    rgba = np.zeros((32, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :8, 3] = 255  # left half opaque red, right half transparent
    record = decode_sample(sample_dict(png(Image.fromarray(rgba))))
    assert (record.image[:, :8] == [255, 0, 0]).all() and (record.image[:, 8:] == 255).all()
    assert (record.mask[:, :8] == 255).all() and (record.mask[:, 8:] == 0).all()
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert decode_sample(sample_dict(png(Image.fromarray(opaque)))).mask is None


def test_mask_of_the_wrong_size_is_a_defect_not_applied_misaligned():
    meta = {**valid_meta(), "has_mask": True}
    with pytest.raises(SampleDefect, match="mask.png is 8x8, meta records 16x32"):
        decode_sample(sample_dict(encode_image(random_image(), "png"), meta, encode_image(np.zeros((8, 8), np.uint8),
                                                                                            "png")))


def test_image_far_larger_than_declared_is_rejected_before_decoding():
    big = encode_image(np.zeros((6000, 6000), np.uint8), "png")[:200]  # a header and no pixels
    with pytest.raises(SampleDefect, match="image is 6000x6000, meta records 16x32"):
        decode_sample(sample_dict(big))


@pytest.mark.parametrize("meta_json,expected", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (json.dumps({**valid_meta(), "H": [["1", "0", "0"], ["0", "1", "0"], ["0", "0", "1"]]}).encode(), "non-numeric"),
    (json.dumps({**valid_meta(), "density": 1e300}).encode(), "plausible range"),
    (json.dumps({**valid_meta(), "region": [[2, 0], [3, 0], [3, 1], [2, 1]]}).encode(), "not H applied"),
])
def test_reader_applies_the_spec_checks(meta_json, expected):
    with pytest.raises(SampleDefect, match=expected):
        decode_sample({"__key__": "src/a", "img.png": encode_image(random_image(), "png"), "meta.json": meta_json})


def test_repeated_warnings_are_rate_limited_and_counted(caplog):
    log = SkipLog()
    with caplog.at_level(logging.WARNING, logger="uh_train.shard_reader"):
        for i in range(1000):
            log.record(f"sample src/k{i}", f"density is {i + 2e6}, outside the plausible range")
    assert log.total == 1000 and len(log.counts) == 1
    assert len(caplog.records) == 6  # the 1st, 2nd, 3rd, 10th, 100th and 1000th
    assert "1000 times so far" in caplog.records[-1].getMessage()


def bad_members(key: str) -> list[tuple[str, bytes]]:
    return raw_sample(key, meta={**valid_meta(key), "H": [["x"] * 3] * 3})


def mixed_folder(tmp_path, extra: dict[str, list]) -> str:
    folder = tmp_path / "shards"
    with ShardWriter(folder, "good") as w:
        for i in range(4):
            w.write(valid_sample("good", f"k{i}", seed=i))
    raw_folder(folder, extra, manifest=False)
    return str(folder)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,members", [
    ("empty", []),
    ("zero", None),
    ("bad", [m for i in range(5) for m in bad_members(f"bad/k{i}")]),
])
def test_training_on_a_source_without_usable_samples_stops_at_start_up(tmp_path, name, members):
    extra = {f"{name}-000-000000.tar": members or []}
    folder = mixed_folder(tmp_path, extra)
    if members is None:  # a 0-byte file where a tar should be
        (tmp_path / "shards" / f"{name}-000-000000.tar").write_bytes(b"")
    result = CliRunner().invoke(cli.app, ["run", "--shards", folder, "--out", str(tmp_path / "out"), "--stage", "2",
                                         "--preset", "tiny", "--kimg", "0.008", "--batch", "4", "--lpips", "off",
                                         "--no-teacher"])
    assert result.exit_code == 1, result.output
    assert f"source '{name}' has no usable sample" in result.output and "Traceback" not in result.output


@pytest.mark.timeout(60)
def test_bad_samples_are_skipped_and_counted_never_trained_on(tmp_path):
    members = [m for i in range(3) for m in bad_members(f"good/bad{i}")]
    folder = mixed_folder(tmp_path, {"good-001-000000.tar": members})
    data = PatchBatches([folder], batch=4, cfg=PatchConfig(res=16, stage=2), seed=0, shuffle_buffer=4)
    batches = [b for _, b in zip(range(6), data, strict=False)]
    assert sum(b["skipped"] for b in batches) > 0
    assert all(k.startswith("good/k") for b in batches for k in b["key"])


@pytest.mark.timeout(60)
def test_a_stream_that_stops_yielding_fails_within_a_bounded_number_of_draws(tmp_path):
    folder = tmp_path / "shards"
    members = [m for i in range(60) for m in bad_members(f"flaky/k{i:02d}")]
    raw_folder(folder, {"flaky-000-000000.tar": raw_sample("flaky/a0") + members}, manifest=False)
    data = PatchBatches([folder], batch=4, cfg=PatchConfig(res=16, stage=2), seed=0, shuffle_buffer=4,
                        max_unusable=30)
    with pytest.raises(RuntimeError, match=r"source 'flaky' yielded no usable sample in 30 draws.*flaky/k"):
        for _ in data:
            pass


@pytest.mark.timeout(30)
def test_empty_shards_end_the_stream_instead_of_being_relisted_forever(tmp_path):
    raw_folder(tmp_path, {"e-000-000000.tar": [], "e-000-000001.tar": []}, manifest=False)
    stream = source_stream([str(tmp_path / "e-000-000000.tar"), str(tmp_path / "e-000-000001.tar")], 0, 0, 4)
    with pytest.raises(shard_reader.NoSamples, match="2 shard"):
        next(stream)


def test_writer_refuses_what_the_reader_would_skip():
    fields = {**sample_fields(), "density": 1e300}
    with pytest.raises(ValueError, match="plausible range"):
        encode_sample("src", "a", random_image(), fields)


def test_a_compressed_tar_is_skipped_by_the_trainer_naming_it_as_validate_refuses_it(tmp_path, caplog):
    import gzip

    from mst_pipeline.cli import app as mst

    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample("src/a")})
    raw_folder(tmp_path / "g", {"src-000-000000.tar": raw_sample("src/b")}, manifest=False)
    packed = folder / "src-000-000001.tar"
    packed.write_bytes(gzip.compress((tmp_path / "g" / "src-000-000000.tar").read_bytes()))
    with caplog.at_level(logging.WARNING, logger="uh_train.shard_reader"):
        keys = [r.key for r in shard_reader.shard_pipeline([folder], shuffle_buffer=0, split=False)]
    assert keys == ["src/a"]  # the gzip tar's sample src/b is not read
    assert "skipping shard src-000-000001.tar: src-000-000001.tar is a gzip-compressed tar" in caplog.text
    result = CliRunner().invoke(mst, ["validate", str(folder)])
    assert result.exit_code == 1 and "gzip-compressed tar" in " ".join(result.output.split())
    from uh_train.data.streams import probe_source

    with pytest.raises(ValueError, match="gzip-compressed"):
        probe_source("src", [str(packed)], lambda record: True)
