"""Shard writer: round trip, rollover, atomic completion and resume after a kill."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import ShardWriter, complete_shards, encode_sample, read_shard, write_manifest
from uh_train.shard_reader import decode_sample, shard_pipeline

from shard_helpers import random_image, sample_fields, valid_sample


def test_round_trip_preserves_pixels_and_metadata_exactly(tmp_path):
    image = random_image(16, 32, seed=3)
    mask = (np.arange(16 * 32).reshape(32, 16) % 3 * 100).astype(np.uint8)
    fields = sample_fields(16, 32, seed=3)
    with ShardWriter(tmp_path, "people") as w:
        assert w.write(encode_sample("people", "img-001", image, fields, mask=mask, ext="png"))
    records = list(shard_pipeline([tmp_path], shuffle_buffer=0, split=False))
    assert len(records) == 1
    r = records[0]
    assert r.key == "people/img-001" and r.source == "people" and r.kind == "full" and r.tier == "LR"
    np.testing.assert_array_equal(r.image, image)
    np.testing.assert_array_equal(r.mask, mask)
    np.testing.assert_array_equal(r.H, fields["H"])
    np.testing.assert_array_equal(r.region, fields["region"])
    assert r.density == fields["density"]
    for group, arr in fields["keypoints"].items():
        np.testing.assert_allclose(r.keypoints[group], arr, rtol=1e-6)
    assert r.meta["smpl"]["betas"] == list(fields["smpl"]["betas"])
    assert r.meta["fit"]["iterations"] == 40


def test_jpeg_samples_decode_to_recorded_size(tmp_path):
    with ShardWriter(tmp_path, "jp") as w:
        w.write(encode_sample("jp", "x", random_image(16, 32), sample_fields(16, 32), ext="jpg"))
    (key, fields), = list(read_shard(complete_shards(tmp_path)[0]))
    assert set(fields) == {"img.jpg", "meta.json"}
    assert Image.open(io.BytesIO(fields["img.jpg"])).size == (16, 32)


def test_writer_rejects_invalid_metadata_before_writing(tmp_path):
    fields = sample_fields()
    fields["H"] = np.diag([1.0, -1.0, 1.0])  # a mirror: negative determinant
    with pytest.raises(ValueError, match="negative determinant"):
        encode_sample("src", "a", random_image(), fields)


def test_rollover_by_count_and_by_size(tmp_path):
    with ShardWriter(tmp_path / "count", "s", max_count=3) as w:
        for i in range(7):
            w.write(valid_sample("s", f"k{i}", seed=i))
    names = [p.name for p in complete_shards(tmp_path / "count")]
    assert names == ["s-000-000000.tar", "s-000-000001.tar", "s-000-000002.tar"]
    assert [len(list(read_shard(tmp_path / "count" / n))) for n in names] == [3, 3, 1]

    with ShardWriter(tmp_path / "size", "s", max_bytes=4000) as w:
        for i in range(5):
            w.write(valid_sample("s", f"k{i}", seed=i))
    shards = complete_shards(tmp_path / "size")
    assert len(shards) >= 3
    assert sum(len(list(read_shard(s))) for s in shards) == 5


def test_manifest_lists_every_sample_and_is_rebuilt_when_shards_change(tmp_path):
    with ShardWriter(tmp_path, "a", max_count=2) as w:
        for i in range(3):
            w.write(valid_sample("a", f"k{i}", seed=i))
    table = pq.read_table(tmp_path / "manifest.parquet")
    assert sorted(table.column("key").to_pylist()) == ["a/k0", "a/k1", "a/k2"]
    assert set(table.column("shard").to_pylist()) == {"a-000-000000.tar", "a-000-000001.tar"}
    (tmp_path / "a-000-000001.tar").unlink()
    write_manifest(tmp_path)
    assert sorted(pq.read_table(tmp_path / "manifest.parquet").column("key").to_pylist()) == ["a/k0", "a/k1"]


def test_rerun_skips_keys_in_complete_shards(tmp_path):
    with ShardWriter(tmp_path, "s", max_count=2) as w:
        for i in range(4):
            w.write(valid_sample("s", f"k{i}", seed=i))
    with ShardWriter(tmp_path, "s", max_count=2) as w:
        results = [w.write(valid_sample("s", f"k{i}", seed=i)) for i in range(6)]
    assert results == [False] * 4 + [True] * 2
    assert w.skipped == 4 and w.written == 2
    keys = [k for s in complete_shards(tmp_path) for k, _ in read_shard(s)]
    assert sorted(keys) == [f"s/k{i}" for i in range(6)]
    assert validate_folder(tmp_path).ok


KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from mst_pipeline.shards.writer import ShardWriter
    from shard_helpers import valid_sample
    w = ShardWriter({folder!r}, "s", max_count=3)
    for i in range({n}):
        w.write(valid_sample("s", f"k{{i}}", seed=i))
    os._exit(9)  # killed: no close, no manifest, the open shard is half-written
""")


def test_resume_after_kill_mid_shard_discards_partial_shard_and_redoes_its_samples(tmp_path):
    folder = tmp_path / "out"
    script = KILL_SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent), folder=str(folder), n=5)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == 9
    # One complete shard (k0..k2) and one half-written temporary shard (k3, k4).
    assert [p.name for p in complete_shards(folder)] == ["s-000-000000.tar"]
    assert len(list(folder.glob("*.tar.tmp"))) == 1
    report = validate_folder(folder)
    assert not report.ok and any("interrupted run" in d.problem for d in report.defects)

    with ShardWriter(folder, "s", max_count=3) as w:
        done = [w.write(valid_sample("s", f"k{i}", seed=i)) for i in range(6)]
    assert done == [False, False, False, True, True, True]
    assert not list(folder.glob("*.tar.tmp"))
    keys = [k for s in complete_shards(folder) for k, _ in read_shard(s)]
    assert sorted(keys) == [f"s/k{i}" for i in range(6)]
    assert validate_folder(folder).ok


def test_exception_inside_writer_keeps_every_sample_written_before_it(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "s", max_count=2) as w:
            for i in range(3):
                w.write(valid_sample("s", f"k{i}", seed=i))
            raise RuntimeError("boom")
    assert [p.name for p in complete_shards(tmp_path)] == ["s-000-000000.tar", "s-000-000001.tar"]
    assert [k for s in complete_shards(tmp_path) for k, _ in read_shard(s)] == ["s/k0", "s/k1", "s/k2"]
    assert not list(tmp_path.glob("*.tmp"))
    assert validate_folder(tmp_path).ok


def test_decode_sample_rejects_schema_violations():
    sample = {"__key__": "s/a", "img.png": b"", "meta.json": json.dumps({"format": "other"}).encode()}
    with pytest.raises(ValueError, match="format"):
        decode_sample(sample)


def test_two_writers_of_different_parts_share_a_folder(tmp_path):
    with ShardWriter(tmp_path, "s", part=0) as a, ShardWriter(tmp_path, "s", part=1) as b:
        a.write(valid_sample("s", "k0"))
        b.write(valid_sample("s", "k1", seed=1))
    assert [p.name for p in complete_shards(tmp_path)] == ["s-000-000000.tar", "s-001-000000.tar"]
    assert validate_folder(tmp_path).ok
