"""FID and improved precision/recall on features with known answers (no Inception needed)."""

from __future__ import annotations

import numpy as np
import pytest

from uh_train.metrics.fid import FeatureStats, fid_from_features, frechet_distance, trace_sqrt_product
from uh_train.metrics.precision_recall import knn_radii, precision_recall


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    # For commuting covariances FID = |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-9)


def test_trace_sqrt_product_matches_a_general_matrix_square_root():
    import scipy.linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(30, 12)) @ rng.normal(size=(12, 12))
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert trace_sqrt_product(c1, c2) == pytest.approx(np.trace(scipy.linalg.sqrtm(c1 @ c2)).real, rel=1e-8)


def test_low_rank_fid_equals_the_covariance_formula():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(7, 20)), rng.normal(size=(9, 20)) * 1.5 + 0.3  # fewer samples than dims
    direct = frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    assert fid_from_features(real, fake) == pytest.approx(direct, rel=1e-7)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    x = np.random.default_rng(3).normal(size=(500, 8))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    values = [fid_from_features(x, x + shift) for shift in (0.1, 0.5, 1.0)]
    assert values == sorted(values) and values[0] > 0
    assert values[2] == pytest.approx(8 * 1.0**2, rel=1e-6)  # a pure mean shift: |d|^2 = D * shift^2


def test_streamed_statistics_equal_numpy():
    x = np.random.default_rng(4).normal(size=(37, 5))
    stats = FeatureStats(keep=True)
    for i in range(0, 37, 10):
        stats.add(x[i : i + 10])
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), atol=1e-12)
    np.testing.assert_allclose(stats.features(), x.astype(np.float32))


def test_knn_radius_is_the_kth_neighbour_excluding_the_point_itself():
    pts = np.array([[0.0], [1.0], [3.0], [7.0]])
    import torch

    np.testing.assert_allclose(knn_radii(torch.tensor(pts), k=1).numpy(), [1, 1, 2, 4])
    np.testing.assert_allclose(knn_radii(torch.tensor(pts), k=2).numpy(), [3, 2, 3, 6])


def test_precision_recall_by_hand_in_one_dimension():
    real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])  # k=1 radii 1, 1, 1, 1, 7
    fake = np.array([[2.5], [5.0], [20.0]])  # 2.5 and 5 (within 7 of 10) inside, 20 outside
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(1.0)  # fake radii 2.5, 2.5, 15 cover every real point


def _cloud(rng, n, centre):
    return rng.normal(size=(n, 2)) + np.asarray(centre, dtype=np.float64)


@pytest.mark.parametrize("case", ["dropped mode", "spurious mode", "disjoint", "identical"])
def test_precision_recall_on_gaussian_clouds_against_the_known_answer(case):
    """Two modes 40 sigma apart: a generator that drops one mode keeps precision 1 but recall 1/2;
    one that adds a spurious mode keeps recall but halves precision (k = 3, 2-D clouds)."""
    rng = np.random.default_rng(5)
    a, b, far = (0.0, 0.0), (40.0, 0.0), (0.0, 80.0)
    real = np.concatenate([_cloud(rng, 1000, a), _cloud(rng, 1000, b)])
    fake, expected = {
        "dropped mode": (_cloud(rng, 2000, a), (1.0, 0.5)),
        "spurious mode": (np.concatenate([_cloud(rng, 1000, a), _cloud(rng, 1000, b), _cloud(rng, 2000, far)]),
                          (0.5, 1.0)),
        "disjoint": (_cloud(rng, 2000, far), (0.0, 0.0)),
        "identical": (np.concatenate([_cloud(rng, 1000, a), _cloud(rng, 1000, b)]), (1.0, 1.0)),
    }[case]
    precision, recall = precision_recall(real, fake, k=3)
    # Tails of a cloud lie outside the other set's k-NN balls: a few percent below the ideal value.
    assert precision == pytest.approx(expected[0], abs=0.04)
    assert recall == pytest.approx(expected[1], abs=0.04)


def test_precision_recall_rejects_mismatched_features():
    with pytest.raises(ValueError, match="equal D"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))


def test_stats_cache_round_trip_is_atomic_and_ignores_damaged_files(tmp_path):
    from uh_train.metrics.stats import StatsCache, stats_key

    cache = StatsCache(tmp_path)
    key = stats_key("manifests", {"set": "pfid", "n": 4})
    assert key != stats_key("manifests", {"set": "pfid", "n": 5}) != stats_key("other", {"set": "pfid", "n": 4})
    arrays = {"mu": np.arange(3.0), "transforms_0": np.eye(3)[None].repeat(2, 0)}
    path = cache.save("pfid", key, arrays)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    loaded = cache.load("pfid", key)
    np.testing.assert_array_equal(loaded["mu"], arrays["mu"])
    np.testing.assert_array_equal(loaded["transforms_0"], arrays["transforms_0"])
    path.write_bytes(path.read_bytes()[:40])  # truncated by a crash of another program
    assert cache.load("pfid", key) is None
    assert StatsCache(None).load("pfid", key) is None and StatsCache(None).save("pfid", key, arrays) is None
