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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_allows_not_the_temporary_files(tmp_path, umask, mode):
    import os
    import stat

    from uh_train.format.atomic import atomic_path, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_files_the_clis_write_are_readable_by_others_under_umask_022(tmp_path):
    """A checkpoint and a sample grid written by the trainer's helpers, as a lab-mate would read them."""
    import os
    import stat

    import torch

    from uh_train.checkpoint import save_checkpoint
    from uh_train.generate import write_png
    from uh_train.networks import Generator, get_preset

    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "g.safetensors", {"G_ema": Generator(get_preset("tiny").generator)})
        write_png(tmp_path / "grid.png", torch.zeros(8, 8, 3, dtype=torch.uint8).numpy())
    finally:
        os.umask(old)
    for name in ("g.safetensors", "grid.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
