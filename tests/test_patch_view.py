"""`PatchView(v, s)`: the one window type of full-body space, and what it owns: T(v,s) (Eq. 4), its
inverse, its square, a pixel grid's homography and the tiles of a larger render."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uh_train.format.geometry import PatchView, apply_homography, image_region, patch_transform, scale_of

VIEWS = [PatchView((0.5, 0.5), 1.0), PatchView((0.31, 0.12), 4.0), PatchView((0.9, 0.7), 2.5)]


@pytest.mark.parametrize("view", VIEWS)
def test_transform_is_eq_4_and_decodes_back_to_the_view(view):
    T = view.transform()
    assert np.array_equal(T, patch_transform(view.v, view.s))
    back = PatchView.of(T)
    assert back.v == pytest.approx(view.v) and back.s == pytest.approx(view.s)
    assert scale_of(T) == pytest.approx(view.s)
    assert np.allclose(view.inverse() @ T, np.eye(3))


def test_patch_corners_land_on_the_square_v_plus_minus_half_over_s():
    view = PatchView((0.31, 0.12), 4.0)
    corners = np.array([[-0.5, -0.5], [0.5, 0.5]])  # patch coordinates centred at 0, unit side
    full = apply_homography(view.transform(), corners) + 0.5  # full-body coordinates, centred at 0 -> [0,1]
    assert np.allclose(full.ravel(), view.square()[[0, 1, 2, 3]])
    assert np.allclose(view.square(), [0.31 - 0.125, 0.12 - 0.125, 0.31 + 0.125, 0.12 + 0.125])


def test_homography_of_a_pixel_grid_covers_exactly_the_square():
    view = PatchView((0.31, 0.12), 4.0)
    region = image_region(view.homography(64), 64, 64)
    x0, y0, x1, y1 = view.square()
    assert np.allclose(region, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def test_scale_of_reads_a_batch_of_numpy_or_torch_transforms():
    T = np.stack([v.transform() for v in VIEWS])
    assert np.allclose(scale_of(T), [v.s for v in VIEWS])
    assert torch.allclose(scale_of(torch.as_tensor(T)), torch.tensor([v.s for v in VIEWS], dtype=torch.float64))


def test_inside_fraction_and_moving_inside_a_box():
    view = PatchView((0.95, 0.5), 4.0)  # square x 0.825..1.075: a tenth of its width outside the unit square
    assert not view.inside()
    assert view.fraction_inside((0.0, 0.0, 1.0, 1.0)) == pytest.approx(0.7)
    moved = view.moved_inside(np.array([0.0, 0.0, 1.0, 1.0]))
    assert moved.inside(tol=1e-12) and moved.v == pytest.approx((0.875, 0.5)) and moved.s == view.s
    narrow = PatchView((0.3, 0.5), 2.0).moved_inside(np.array([0.4, 0.0, 0.6, 1.0]))  # box narrower than the square
    assert narrow.v == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("block", [1, 2, 4])
def test_tiles_cover_the_square_without_gap_or_overlap(block):
    view = PatchView((0.4, 0.6), 2.0)
    k = 4
    tiles = view.tiles(k, block=block)
    n = k // block
    assert [(bi, bj) for bi, bj, _ in tiles] == [(i, j) for i in range(n) for j in range(n)]  # row-major
    side = 1 / (k * view.s) * block  # each block's square: block tiles of side 1/(k s)
    x0, y0, x1, y1 = view.square()
    for bi, bj, tile in tiles:
        assert tile.s == k * view.s
        assert tile.v == pytest.approx((x0 + (bj + 0.5) * side, y0 + (bi + 0.5) * side))
    centres = np.array([tile.v for _, _, tile in tiles])
    assert np.allclose(centres.min(axis=0) - side / 2, [x0, y0])
    assert np.allclose(centres.max(axis=0) + side / 2, [x1, y1])


def test_one_tile_is_the_view_itself():
    view = PatchView((0.4, 0.6), 2.0)
    [(bi, bj, tile)] = view.tiles(1)
    assert (bi, bj) == (0, 0) and tile.v == pytest.approx(view.v) and tile.s == view.s
