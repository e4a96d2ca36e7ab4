"""The one atomic-write helper: a failed write leaves the old file and no temporary behind."""

from __future__ import annotations

import pytest

from uh_train.format.atomic import atomic_path, atomic_write, atomic_write_text


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file.json"
    atomic_write_text(target, "old")

    def half_then_crash(f):
        f.write(b"new but incomplete")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_atomic_path_replaces_only_when_the_block_completes(tmp_path):
    target = tmp_path / "grid.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"png")
        assert not target.exists()
    assert target.read_bytes() == b"png" and not tmp.exists()
