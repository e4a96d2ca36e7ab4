"""`mst align` with hostile inputs: a bad image is one reject in any worker count, an error never
throws away finished samples, colliding names are rejected by name, two runs on one output refuse
to share a source and part."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from PIL import Image
from test_align import write_dataset
from typer.testing import CliRunner

import mst_pipeline.align.folder as align_module
import mst_pipeline.shards.writer as shards_module
from mst_pipeline.align.folder import align_folder
from mst_pipeline.align.settings import AlignSettings
from mst_pipeline.cli import app
from mst_pipeline.detect.images import Rejected, read_image, sample_stems
from mst_pipeline.fitting.smplify import SmplifyConfig
from mst_pipeline.shards.rejects import read_rejects
from mst_pipeline.shards.validate import validate_folder
from mst_pipeline.shards.writer import ShardWriter, WriterBusy, complete_shards, read_shard
from mst_pipeline.space import default_space

from shard_helpers import valid_sample, write_raw_tar

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG file whose header declares WIDTH x HEIGHT pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _keys(out: Path) -> list[str]:
    return sorted(k for s in complete_shards(out) for k, _ in read_shard(s))


def _portraits(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 64), (10 * i, 100, 50)).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


ALIGNED = AlignSettings(aligned=True, detector="none")


# ---------------------------------------------------------------------------------------------
# A bad image is a reject, never the end of the run


def test_a_decompression_bomb_is_rejected_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    with pytest.raises(Rejected, match="too large"):
        read_image(tmp_path / "bomb.png")
    (tmp_path / "big.png").write_bytes(bomb_png(12000, 12000))  # under Pillow's own error limit, over ours
    with pytest.raises(Rejected, match="too large"):
        read_image(tmp_path / "big.png")


def test_a_corrupt_exif_block_keeps_the_image_unrotated(tmp_path, monkeypatch):
    Image.new("RGB", (16, 32), (1, 2, 3)).save(tmp_path / "a.jpg")

    def broken_exif(image, **kwargs):
        raise struct.error("unpack requires a buffer of 12 bytes")

    monkeypatch.setattr("PIL.ImageOps.exif_transpose", broken_exif)
    assert read_image(tmp_path / "a.jpg").shape == (32, 16, 3)


def test_any_decoder_error_is_a_reject_with_its_reason(tmp_path, monkeypatch):
    Image.new("RGB", (16, 32)).save(tmp_path / "a.png")

    def explode(*args, **kwargs):
        raise SyntaxError("not a PNG file")

    monkeypatch.setattr("PIL.Image.open", explode)
    with pytest.raises(Rejected, match="unreadable image \\(SyntaxError: not a PNG file\\)"):
        read_image(tmp_path / "a.png")


def test_a_bomb_among_fitted_images_is_rejected_and_the_fitted_ones_are_kept(tmp_path, toy):
    space = default_space(toy)
    data = tmp_path / "data"
    truth = write_dataset(data, toy, space, n=1)
    (data / "crops" / "zz_bomb.png").write_bytes(bomb_png())
    out = tmp_path / "shards"
    settings = AlignSettings(detector="openpose-json", batch_size=8, smplify=SmplifyConfig(iterations=200))
    summary = align_folder(data, out, "synth", space, toy, settings)
    assert summary.written == len(truth) and summary.rejected == 1
    assert len(_keys(out)) == len(truth)
    (reject,) = read_rejects(out)
    assert reject["path"] == "crops/zz_bomb.png" and "too large" in reject["reason"]


def test_an_error_mid_run_keeps_every_sample_written_before_it(tmp_path):
    data = tmp_path / "data"
    _portraits(data, [f"p{i}.png" for i in range(5)])
    real = align_module.build_aligned_sample
    calls = []

    def fail_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    out = tmp_path / "shards"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(align_module, "build_aligned_sample", fail_on_fourth)
        with pytest.raises(RuntimeError, match="out of memory"):
            align_folder(data, out, "shhq", None, None, ALIGNED)
    assert _keys(out) == ["shhq/p0", "shhq/p1", "shhq/p2"] and validate_folder(out).ok
    summary = align_folder(data, out, "shhq", None, None, ALIGNED)  # the re-run does only the rest
    assert (summary.skipped, summary.written) == (3, 2) and len(_keys(out)) == 5


def test_a_sample_cut_off_mid_write_leaves_the_shard_readable(tmp_path, monkeypatch):
    real = shards_module._add_member

    def disk_full(tar, name, data, mtime):
        if name == "s/k2.meta.json":
            real(tar, name, data[: len(data) // 2], mtime)  # part of it reached the file
            raise OSError(28, "No space left on device")
        real(tar, name, data, mtime)

    monkeypatch.setattr(shards_module, "_add_member", disk_full)
    with pytest.raises(OSError, match="No space"), ShardWriter(tmp_path, "s", max_count=10) as w:
        for i in range(4):
            w.write(valid_sample("s", f"k{i}", seed=i))
    assert _keys(tmp_path) == ["s/k0", "s/k1"] and not list(tmp_path.glob("*.tmp"))
    assert validate_folder(tmp_path).ok


# ---------------------------------------------------------------------------------------------
# Names that map to one key


def test_colliding_names_get_distinct_keys_and_keep_their_paths(tmp_path):
    data = tmp_path / "data"
    names = ["dup.jpg", "dup.png", "a.b.png", "a-b.png", "sub/x.png", "sub_x.png", "solo.png"]
    _portraits(data, names)
    stems = {p.relative_to(data).as_posix(): s for p, s in sample_stems([data / n for n in names], data).items()}
    assert len(set(stems.values())) == len(names)
    assert {n: stems[n] for n in ("dup.jpg", "a-b.png", "sub/x.png", "solo.png")} == {
        "dup.jpg": "dup", "a-b.png": "a-b", "sub/x.png": "sub_x", "solo.png": "solo"}  # the first keeps its key
    assert stems["dup.png"].startswith("dup-") and len(stems["dup.png"]) == len("dup-") + 8
    out = tmp_path / "shards"
    res = CliRunner().invoke(app, ["align", str(data), "--out", str(out), "--aligned", "--detector", "none",
                                   "--source", "s"])
    assert res.exit_code == 0, res.output
    assert "7 aligned" in res.output and not read_rejects(out)
    assert len(_keys(out)) == 7 and validate_folder(out).ok
    paths = sorted(json.loads(f["meta.json"])["orig"]["path"] for s in complete_shards(out) for _, f in read_shard(s))
    assert paths == sorted(names)


def test_keys_are_the_same_in_every_part(tmp_path):
    data = tmp_path / "data"
    _portraits(data, [f"n{i}.png" for i in range(6)] + [f"n{i}.jpg" for i in range(6)])
    out = tmp_path / "shards"
    written = 0
    for k in range(3):
        written += align_folder(data, out, "s", None, None, AlignSettings(aligned=True, detector="none",
                                                                           part=(k, 3))).written
    assert written == 12 and len(_keys(out)) == 12 and validate_folder(out).ok
    again = sum(align_folder(data, out, "s", None, None, AlignSettings(aligned=True, detector="none",
                                                                         part=(k, 3))).skipped for k in range(3))
    assert again == 12  # a re-run finds every key, wherever a slice put it


BAD_NAMES = ["_.png", "\u00e9.png", "....png", "-.png", ("x" * 120) + ".png",
             "d" * 60 + "/" + "e" * 60 + "/" + "f" * 30 + ".png"]


@pytest.mark.parametrize("workers", [0, 2])  # the main process, a pool
@pytest.mark.parametrize("bad", BAD_NAMES, ids=["underscore", "accent", "dots", "dash", "long", "nested-long"])
def test_any_file_name_among_good_ones_is_aligned(tmp_path, workers, bad):
    data = tmp_path / "data"
    _portraits(data, [f"img{i:03d}.png" for i in range(100)] + [bad])
    out = tmp_path / "shards"
    summary = align_folder(data, out, "s", None, None, AlignSettings(aligned=True, detector="none",
                                                                      workers=workers))
    assert (summary.written, summary.rejected) == (101, 0)
    assert validate_folder(out).ok
    metas = {k: json.loads(f["meta.json"]) for s in complete_shards(out) for k, f in read_shard(s)}
    assert bad in {m["orig"]["path"] for m in metas.values()}  # the name itself is kept


@pytest.mark.parametrize("workers", [0, 2])  # the main process, a pool
def test_one_unwritable_file_is_a_reject_naming_it_and_the_run_goes_on(tmp_path, monkeypatch, workers):
    data = tmp_path / "data"
    _portraits(data, [f"img{i:03d}.png" for i in range(100)] + ["zz-bad.png"])
    real = shards_module._add_member

    def refuse(tar, name, data, mtime):
        if "zz-bad" in name:
            raise ValueError("name is too long")
        real(tar, name, data, mtime)

    monkeypatch.setattr(shards_module, "_add_member", refuse)
    out = tmp_path / "shards"
    summary = align_folder(data, out, "s", None, None, AlignSettings(aligned=True, detector="none",
                                                                      workers=workers))
    assert (summary.written, summary.rejected) == (100, 1)
    (reject,) = read_rejects(out)
    assert reject["path"] == "zz-bad.png" and "name is too long" in reject["reason"]
    assert validate_folder(out).ok


def test_a_first_sample_that_fails_leaves_no_empty_shard(tmp_path, monkeypatch):
    real = shards_module._add_member

    def refuse(tar, name, data, mtime):
        raise ValueError("name is too long")

    monkeypatch.setattr(shards_module, "_add_member", refuse)
    with pytest.raises(ValueError), ShardWriter(tmp_path, "s") as w:
        w.write(valid_sample("s", "k0"))
    monkeypatch.setattr(shards_module, "_add_member", real)
    assert not complete_shards(tmp_path) and not list(tmp_path.glob("*.tmp"))


def test_the_next_run_removes_an_empty_or_unreadable_shard_of_its_part(tmp_path):
    with ShardWriter(tmp_path, "s") as w:
        w.write(valid_sample("s", "k0"))
    write_raw_tar(tmp_path / "s-000-000001.tar", [])  # left by an older aborted run
    (tmp_path / "s-000-000002.tar").write_bytes(b"not a tar at all, cut short")
    write_raw_tar(tmp_path / "t-000-000000.tar", [])  # another source's: not this writer's to remove
    assert not validate_folder(tmp_path).ok
    with ShardWriter(tmp_path, "s") as w:
        w.write(valid_sample("s", "k1", seed=1))
    names = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert names == ["s-000-000000.tar", "s-000-000003.tar", "t-000-000000.tar"]


def test_validate_passes_after_an_interrupted_run_and_the_rerun_finishes(tmp_path):
    data = tmp_path / "data"
    _portraits(data, [f"img{i:03d}.png" for i in range(30)] + ["_.png"])
    out = tmp_path / "shards"

    def interrupt(done, total):
        if done == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        align_folder(data, out, "s", None, None, AlignSettings(aligned=True, detector="none", max_count=5),
                     progress=interrupt)
    assert validate_folder(out).ok and 0 < len(_keys(out)) < 31
    summary = align_folder(data, out, "s", None, None, AlignSettings(aligned=True, detector="none", max_count=5))
    assert summary.written + summary.skipped == 31 and len(_keys(out)) == 31 and validate_folder(out).ok


# ---------------------------------------------------------------------------------------------
# Two writers on one output

HOLD = textwrap.dedent("""
    import sys, time
    from mst_pipeline.shards.writer import ShardWriter
    w = ShardWriter(sys.argv[1], "s", part=0)
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_of_a_source_and_part_is_refused_while_the_first_lives(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "s-000-000000.tar.tmp").write_bytes(b"the live shard of the other run")
        with pytest.raises(WriterBusy, match=f"another run is writing source 's' part 0.*pid {holder.pid}"):
            ShardWriter(tmp_path, "s", part=0)
        assert (tmp_path / "s-000-000000.tar.tmp").exists()  # the other run's shard is untouched
        ShardWriter(tmp_path, "s", part=1).close()  # another part is fine
        data = tmp_path / "data"
        _portraits(data, ["p.png"])
        res = CliRunner().invoke(app, ["align", str(data), "--out", str(tmp_path), "--aligned", "--detector",
                                       "none", "--source", "s"])
        assert res.exit_code == 1 and "another run is writing" in res.output
        assert len(res.output.strip().splitlines()) <= 3
    finally:
        holder.kill()
        holder.wait()
    with ShardWriter(tmp_path, "s", part=0) as w:  # the lock went with the killed process
        w.write(valid_sample("s", "k"))
    assert _keys(tmp_path) == ["s/k"]


def test_a_closed_writer_releases_its_lock(tmp_path):
    with ShardWriter(tmp_path, "s") as w:
        w.write(valid_sample("s", "a"))
    with ShardWriter(tmp_path, "s") as w:
        w.write(valid_sample("s", "b", seed=1))
    assert _keys(tmp_path) == ["s/a", "s/b"]



def test_overlapping_part_slices_are_refused_and_disjoint_ones_run_together(tmp_path):
    from mst_pipeline.shards.writer import slices_overlap

    assert slices_overlap((0, 1), (1, 2)) and slices_overlap((1, 2), (1, 4)) and slices_overlap((1, 2), (0, 3))
    assert not any(slices_overlap(a, b) for a, b in (((0, 2), (1, 2)), ((1, 4), (2, 4)), ((0, 2), (3, 4))))
    first, second = ShardWriter(tmp_path, "s", part=0, parts=2), ShardWriter(tmp_path, "s", part=1, parts=2)
    try:
        for k, n in ((0, 1), (1, 4), (2, 4), (0, 3)):
            with pytest.raises(WriterBusy, match="overlaps"):
                ShardWriter(tmp_path, "s", part=k, parts=n)
        ShardWriter(tmp_path, "t", part=0, parts=1).close()  # another source is fine
    finally:
        first.close()
    ShardWriter(tmp_path, "s", part=2, parts=4).close()  # 0/2 is gone; 2/4 only overlaps it
    second.close()


def test_an_align_of_an_overlapping_part_stops_at_once_naming_the_other_run(tmp_path):
    hold = HOLD.replace('part=0)', 'part=1, parts=2)')
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        data = tmp_path / "data"
        _portraits(data, [f"p{i}.png" for i in range(4)])
        res = CliRunner().invoke(app, ["align", str(data), "--out", str(tmp_path / "out"), "--aligned",
                                       "--detector", "none", "--source", "s", "--part", "0/1"])
        assert res.exit_code == 1 and "overlaps" in res.output and f"pid {holder.pid}" in res.output
        assert not complete_shards(tmp_path / "out")
    finally:
        holder.kill()
        holder.wait()
