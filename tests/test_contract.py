"""The contract between the two packages: mst_pipeline writes, uh_train reads, nothing else shared."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from mst_pipeline.cli import app
from mst_pipeline.shards.preview import make_contact_sheet
from mst_pipeline.synthesis.synthetic import random_figure, render, views, write_synthetic
from uh_train.format.geometry import apply_homography, warp_to_canvas
from uh_train.shard_reader import read_manifests, shard_pipeline


def test_shards_written_by_mst_are_read_by_the_trainer(tmp_path):
    counts = write_synthetic(tmp_path, n=4, res=64, seed=1)
    assert counts == {"synth_full": 4, "synth_upper": 4, "synth_face": 4}
    records = list(shard_pipeline([tmp_path], shuffle_buffer=8, seed=0, split=False))
    assert len(records) == 12 and len({r.key for r in records}) == 12
    manifest = read_manifests([tmp_path]).to_pylist()
    by_key = {row["key"]: row for row in manifest}
    for r in records:
        row = by_key[r.key]
        assert (row["width"], row["height"]) == (r.image.shape[1], r.image.shape[0])
        np.testing.assert_allclose(np.asarray(row["H"]).reshape(3, 3), r.H)
        assert row["kind"] == r.kind and row["source"] == r.source
    # partial sources are denser than the full-body source
    dens = {r.source: r.density for r in records}
    assert dens["synth_full"] < dens["synth_upper"] < dens["synth_face"]


def test_uh_train_never_imports_mst_pipeline():
    code = ("import sys, uh_train.shard_reader, uh_train.format.geometry, uh_train.format.spec; "
            "sys.exit(1 if any(m.startswith('mst_pipeline') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_trainer_reader_splits_shards_across_ranks_without_overlap(tmp_path, monkeypatch):
    write_synthetic(tmp_path, n=6, res=64, max_count=2)  # 3 sources x 3 shards
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({r.key for r in shard_pipeline([tmp_path], shuffle_buffer=0)})
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    assert len(seen[0] | seen[1]) == 18


def test_trainer_reader_splits_across_dataloader_workers(tmp_path):
    write_synthetic(tmp_path, n=4, res=64, max_count=2)
    loader = torch.utils.data.DataLoader(shard_pipeline([tmp_path], shuffle_buffer=0), batch_size=None,
                                         num_workers=2, collate_fn=lambda r: r.key)
    keys = list(loader)
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 12


def test_synthetic_views_agree_in_full_body_space():
    """The face crop warped through its H lands on the full-body image's head (exact H)."""
    rng = np.random.default_rng(5)
    fig = random_figure(rng)
    (s_full, _, H_full, wf, hf), _, (s_face, _, H_face, wc, hc) = views(fig, 128, rng)
    full = render(fig, H_full, wf, hf).astype(np.float32)
    face = np.asarray(Image.fromarray(render(fig, H_face, wc, hc)).resize((wc // 4, hc // 4), Image.BOX))
    H_face_small = H_face @ np.diag([4.0, 4.0, 1.0])
    a, alpha_a = warp_to_canvas(full, H_full, 256)
    b, alpha_b = warp_to_canvas(face.astype(np.float32), H_face_small, 256)
    both = (alpha_a > 0) & (alpha_b > 0)
    assert both.sum() > 200
    err_exact = np.abs(a - b)[both].mean()
    shifted = H_face_small.copy()
    shifted[0, 2] += 0.02
    c, alpha_c = warp_to_canvas(face.astype(np.float32), shifted, 256)
    both_c = (alpha_a > 0) & (alpha_c > 0)
    err_shifted = np.abs(a - c)[both_c].mean()
    assert err_exact < 0.6 * err_shifted, (err_exact, err_shifted)
    # the nose keypoint maps into the face image
    nose = apply_homography(np.linalg.inv(H_face), fig.joints["nose"][None])[0]
    assert 0 < nose[0] < wc and 0 < nose[1] < hc


def test_synthetic_is_deterministic_and_resumable(tmp_path):
    write_synthetic(tmp_path / "a", n=3, res=64, seed=7)
    write_synthetic(tmp_path / "b", n=2, res=64, seed=7)
    write_synthetic(tmp_path / "b", n=3, res=64, seed=7)  # resumes: only figure 2 is new
    def images(folder):
        return {r.key: r.image for r in shard_pipeline([folder], shuffle_buffer=0, split=False)}
    a, b = images(tmp_path / "a"), images(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 9
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_preview_writes_a_labelled_grid_of_tiles(tmp_path):
    write_synthetic(tmp_path / "s", n=2, res=64)
    out = tmp_path / "preview.png"
    assert make_contact_sheet(tmp_path / "s", out, n=6, tile=96) == 6
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[1] == 3 * 96 and sheet.shape[0] == 2 * (96 + 14)
    result = CliRunner().invoke(app, ["preview", str(tmp_path / "s"), "--out", str(tmp_path / "p2.png"), "--n", "3"])
    assert result.exit_code == 0 and (tmp_path / "p2.png").exists()
