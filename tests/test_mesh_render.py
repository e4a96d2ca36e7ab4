"""pyrender's visibility buffer (`mst_pipeline.synthesis.mesh_render`): which triangle each pixel centre sees."""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mst_pipeline.synthesis import mesh_render
from mst_pipeline.synthesis.mesh_render import RendererUnavailable, barycentrics, triangle_ids


def _square(lo, hi, z):
    return np.array([[lo, lo, z], [hi, lo, z], [hi, hi, z], [lo, hi, z]], dtype=np.float64)


def test_pixel_centres_inside_a_triangle_see_the_nearest_surface():
    # Two squares (two triangles each): the far one covers 0..8, the near one 2..6 (x and y).
    points = np.concatenate([_square(0, 8, 5.0), _square(2, 6, 1.0)])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    for order in (faces, faces[::-1]):  # drawing order does not matter: the depth test decides
        fid = triangle_ids(points, order, 10, 10)
        seen = np.where(fid >= 0, np.asarray([f[0] for f in order])[np.maximum(fid, 0)], -1)
        assert (fid[:8, :8] >= 0).all() and (fid[8:, :] == -1).all() and (fid[:, 8:] == -1).all()
        assert (seen[2:6, 2:6] == 4).all()  # the near square wins where both cover
        assert (seen[:2, :8] == 0).all() and (seen[6:8, :8] == 0).all()
    bary = barycentrics(points, faces, fid := triangle_ids(points, faces, 10, 10))
    np.testing.assert_allclose(bary.sum(-1)[fid >= 0], 1.0)
    assert (bary[fid < 0] == 0).all()
    # Barycentrics interpolate position: pixel centre (4.5, 3.5) is reproduced from the corners.
    np.testing.assert_allclose(bary[3, 4] @ points[faces[fid[3, 4]], :2], [4.5, 3.5])


def test_every_pixel_names_a_triangle_that_contains_its_centre():
    """A fine mesh of thin triangles: indices are exact at every edge (multisampling would blend the
    colours that encode them into indices of far-away triangles)."""
    rng = np.random.default_rng(3)
    n = 24
    g = np.stack(np.meshgrid(np.linspace(1.3, 61.7, n), np.linspace(2.1, 45.2, n)), -1).reshape(-1, 2)
    g += rng.uniform(-0.6, 0.6, g.shape)
    points = np.concatenate([g, rng.uniform(0, 1, (len(g), 1))], 1)
    i = np.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).reshape(-1)
    faces = np.concatenate([np.stack([a, a + 1, a + n + 1], 1), np.stack([a, a + n + 1, a + n], 1)])
    fid = triangle_ids(points, faces, 64, 48)
    assert (fid >= 0).mean() > 0.75 and fid.max() < len(faces)
    bary = barycentrics(points, faces, fid)
    ys, xs = np.nonzero(fid >= 0)
    t = points[faces[fid[ys, xs]], :2]
    # Unclipped weights of the pixel centre in its triangle: all within rounding of [0, 1].
    centre = np.stack([xs + 0.5, ys + 0.5], 1)
    np.testing.assert_allclose(np.einsum("nk,nkd->nd", bary[ys, xs], t), centre, atol=1e-3)


def test_images_larger_than_a_tile_are_drawn_in_tiles(monkeypatch):
    monkeypatch.setattr(mesh_render, "TILE", 16)
    points = np.array([[2.0, 3.0, 0.0], [37.0, 5.0, 0.0], [20.0, 30.0, 0.0]])
    tiled = triangle_ids(points, np.array([[0, 1, 2]]), 40, 33)
    monkeypatch.setattr(mesh_render, "TILE", 4096)
    whole = triangle_ids(points, np.array([[0, 1, 2]]), 40, 33)
    assert whole.shape == (33, 40) and 300 < (whole == 0).sum() < 500
    assert np.array_equal(tiled, whole)


@pytest.fixture
def fresh_choice(monkeypatch):
    """choose_platform as in a new worker process."""
    monkeypatch.setattr(mesh_render, "_platform", None)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    return monkeypatch


def test_egl_first_then_osmesa_else_an_error_naming_the_packages(fresh_choice):
    fresh_choice.setattr(mesh_render, "_egl_works", lambda: None)
    assert mesh_render.choose_platform() == "egl" and os.environ["PYOPENGL_PLATFORM"] == "egl"

    fresh_choice.setattr(mesh_render, "_platform", None)
    fresh_choice.delenv("PYOPENGL_PLATFORM")
    fresh_choice.setattr(mesh_render, "_egl_works", lambda: "EGL reports no device")
    fresh_choice.setattr(ctypes.util, "find_library", lambda name: "libOSMesa.so.8" if name == "OSMesa" else None)
    assert mesh_render.choose_platform() == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"

    fresh_choice.setattr(mesh_render, "_platform", None)
    fresh_choice.delenv("PYOPENGL_PLATFORM")
    fresh_choice.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(RendererUnavailable, match="libegl1 \\+ libegl-mesa0.*libosmesa6.*EGL reports no device"):
        mesh_render.choose_platform()


def test_a_platform_set_by_the_user_is_kept_and_checked(fresh_choice):
    fresh_choice.setattr(mesh_render, "_egl_works", lambda: pytest.fail("no probe when the user chose"))
    fresh_choice.setenv("PYOPENGL_PLATFORM", "osmesa")
    assert mesh_render.choose_platform() == "osmesa"
    fresh_choice.setattr(mesh_render, "_platform", None)
    fresh_choice.setenv("PYOPENGL_PLATFORM", "glx")
    with pytest.raises(RendererUnavailable, match="'glx'.*egl or osmesa"):
        mesh_render.choose_platform()



def test_a_missing_platform_reaches_the_caller_as_a_clear_error(monkeypatch):
    monkeypatch.setattr(mesh_render, "_worker", None)  # a fresh worker, started with this environment
    monkeypatch.setenv("PYOPENGL_PLATFORM", "glx")
    points = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    try:
        with pytest.raises(RendererUnavailable, match="'glx'.*egl or osmesa"):
            triangle_ids(points, np.array([[0, 1, 2]]), 8, 8)
    finally:
        mesh_render._worker.close()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_rendering_leaves_the_process_free_to_load_triton():
    """OpenGL stays in the worker: Mesa's LLVM in this process would crash triton's import (torch)."""
    code = ("import numpy as np; from mst_pipeline.synthesis.mesh_render import triangle_ids; "
            "print(triangle_ids(np.array([[0, 0, 0], [5, 0, 0], [0, 5, 0.]]), np.array([[0, 1, 2]]), 8, 8).max()); "
            "import triton; print('imported')")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["0", "imported"], run.stderr[-2000:]
