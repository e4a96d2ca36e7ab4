"""`uh-generate`: rendering from an untrained preset and from checkpoints, both modes, zoomed patches."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from uh_train.checkpoint import save_checkpoint
from uh_train.generate import app, parse_seeds
from uh_train.networks import Generator, get_preset

runner = CliRunner()


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


def _psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12))


def test_random_init_renders_both_modes_that_agree(tmp_path):
    common = ["--init", "random", "--preset", "tiny", "--size", "128", "--seeds", "0-2", "--truncation", "0.8"]
    for mode in ("stitched", "single"):
        result = runner.invoke(app, [*common, "--mode", mode, "--out", str(tmp_path / mode)])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in (tmp_path / mode).iterdir()) == [
            "grid.png", "seed0000.png", "seed0001.png", "seed0002.png"]
    for seed in range(3):
        a, b = _png(tmp_path / "stitched" / f"seed{seed:04d}.png"), _png(tmp_path / "single" / f"seed{seed:04d}.png")
        assert a.shape == (128, 128, 3) and a.std() > 1
        assert _psnr_uint8(a, b) >= 40
    assert _png(tmp_path / "single" / "grid.png").shape == (256, 256, 3)  # 2 x 2 cells of 128 px
    assert _psnr_uint8(_png(tmp_path / "single" / "seed0000.png"), _png(tmp_path / "single" / "seed0001.png")) < 30


def test_patch_option_renders_the_zoomed_region_of_the_big_image(tmp_path):
    torch.manual_seed(0)
    G = Generator(get_preset("tiny").generator)
    ckpt = save_checkpoint(tmp_path / "G.safetensors", {"G_ema": G})
    big = runner.invoke(app, ["--ckpt", str(ckpt), "--size", "128", "--seeds", "5", "--mode", "single",
                              "--out", str(tmp_path / "big")])
    assert big.exit_code == 0, big.output
    # The square of side 1/4 around (0.375, 0.625) at the 128 px scale is pixels [64:96, 32:64].
    zoom = runner.invoke(app, ["--ckpt", str(ckpt), "--patch", "0.375,0.625", "--scale", "4", "--seeds", "5",
                               "--out", str(tmp_path / "zoom")])
    assert zoom.exit_code == 0, zoom.output
    patch, image = _png(tmp_path / "zoom" / "seed0005.png"), _png(tmp_path / "big" / "seed0005.png")
    assert patch.shape == (32, 32, 3)
    assert _psnr_uint8(patch, image[64:96, 32:64]) >= 40


def test_import_snapshot_command_and_rendering_from_a_snapshot(tmp_path):
    from test_checkpoint import _anyres_pair, write_snapshot

    G, G_ema = _anyres_pair()
    pkl = write_snapshot(tmp_path / "network-snapshot-000200.pkl", G, G_ema)
    result = runner.invoke(app, ["import-snapshot", str(pkl), str(tmp_path / "G.safetensors")])
    assert result.exit_code == 0, result.output
    assert "anyres-positive" in result.output
    for ckpt in (pkl, tmp_path / "G.safetensors"):
        out = tmp_path / ckpt.suffix.strip(".")
        result = runner.invoke(app, ["--ckpt", str(ckpt), "--size", "64", "--seeds", "1", "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert _png(tmp_path / "pkl" / "seed0001.png").tolist() == _png(tmp_path / "safetensors" / "seed0001.png").tolist()


def test_cli_errors_say_what_to_do(tmp_path):
    result = runner.invoke(app, ["--init", "random", "--preset", "tiny", "--size", "40", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "multiple" in result.output
    result = runner.invoke(app, ["--ckpt", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--init random" in result.output
    with pytest.raises(Exception, match="seed range"):
        parse_seeds("3-x")
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]


def test_a_size_beyond_memory_is_refused_with_the_largest_that_fits(tmp_path, monkeypatch):
    import uh_train.render as render

    G = Generator(get_preset("tiny").generator)
    budget = render.seed_bytes(G, 256) + 1000  # room for 256 px, not for 288
    assert render.largest_size(G, budget) == 256 and render.seed_bytes(G, 288) > budget
    monkeypatch.setattr(render, "available_bytes", lambda device: budget)
    common = ["--init", "random", "--preset", "tiny", "--seeds", "0"]
    refused = runner.invoke(app, [*common, "--size", "288", "--out", str(tmp_path / "big")])
    assert refused.exit_code == 2 and "use --size 256 or less" in " ".join(refused.output.replace("│", " ").split())
    assert not (tmp_path / "big").exists()
    fits = runner.invoke(app, [*common, "--size", "64", "--out", str(tmp_path / "fits")])
    assert fits.exit_code == 0, fits.output


def test_seed_lists_are_bounded_in_count_and_range():
    assert parse_seeds("4294967295") == [4294967295] and len(parse_seeds("0-9999")) == 10000
    for text, words in (("0-10000", "10001 seeds"), ("0-4000000000", "at most 10000"), ("4294967296", "2^32")):
        with pytest.raises(Exception, match=re.escape(words)):
            parse_seeds(text)


def test_a_run_folder_stands_for_its_latest_network_wherever_a_checkpoint_is_asked(tmp_path):
    import json

    from uh_train.checkpoint import CheckpointError, resolve_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    G = Generator(get_preset("tiny").generator)
    save_checkpoint(run / "network-000000k-004.safetensors", {"G_ema": G})
    with pytest.raises(CheckpointError, match="without a run's network"):
        resolve_checkpoint(run)
    save_checkpoint(run / "network-latest.safetensors", {"G_ema": G})
    assert resolve_checkpoint(run) == run / "network-latest.safetensors"
    (run / "latest.json").write_text(json.dumps({"state": "training-state-000000k-004.safetensors",
                                                 "network": "network-000000k-004.safetensors"}))
    assert resolve_checkpoint(run) == run / "network-000000k-004.safetensors"
    result = CliRunner().invoke(app, ["--ckpt", str(run), "--seeds", "0", "--size", "32",
                                      "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "out").glob("*.png"))
