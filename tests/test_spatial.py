"""Full-body space geometry (docs/mst.md, "Geometry")."""

import numpy as np

from uh_train.format.geometry import (
    apply_homography,
    density,
    full_image_homography,
    image_region,
    patch_transform,
    warp_to_canvas,
)


def test_identity_patch_transform_is_the_whole_image():
    np.testing.assert_array_equal(patch_transform((0.5, 0.5), 1.0), np.eye(3))


def test_patch_transform_maps_patch_corners_to_the_square_of_side_one_over_s():
    T = patch_transform((0.3, 0.7), 4.0)
    corners = np.array([[-0.5, -0.5], [0.5, 0.5]])  # patch coordinates centred at 0
    mapped = apply_homography(T, corners) + 0.5  # back to [0,1] full-body coordinates
    np.testing.assert_allclose(mapped, [[0.3 - 0.125, 0.7 - 0.125], [0.3 + 0.125, 0.7 + 0.125]])


def test_shhq_portrait_lands_in_the_central_strip():
    H = full_image_homography(512, 1024)
    region = image_region(H, 512, 1024)
    np.testing.assert_allclose(region.min(axis=0), [0.25, 0.0])
    np.testing.assert_allclose(region.max(axis=0), [0.75, 1.0])
    assert np.isclose(density(H, 512, 1024), 1024)


def test_density_of_a_crop_scales_with_zoom():
    H = np.array([[1 / 2048, 0, 0.3], [0, 1 / 2048, 0.1], [0, 0, 1]])
    assert np.isclose(density(H, 300, 400), 2048)


def test_warp_to_canvas_reproduces_a_full_image():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.float32)
    canvas, alpha = warp_to_canvas(img, full_image_homography(32, 32), 32)
    np.testing.assert_allclose(canvas, img, atol=1e-3)
    assert alpha.min() == 1.0


def test_warp_to_canvas_marks_uncovered_area_transparent():
    img = np.full((16, 8, 3), 200, np.float32)
    _, alpha = warp_to_canvas(img, full_image_homography(8, 16), 32)
    assert alpha[:, :6].max() == 0 and alpha[:, 10:22].min() == 1 and alpha[:, 26:].max() == 0
