"""Inception features: the offline default file, NVIDIA's calling convention, and FID's response
to noise and blur on real Inception features (few small images: Inception on a CPU is slow)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from metrics_helpers import save_nvidia_like
from PIL import Image, ImageFilter

from uh_train.metrics.fid import fid_from_features
from uh_train.metrics.inception import FEATURE_DIM, InceptionFeatures, MetricsError, default_inception_path


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures(batch=16)


@pytest.fixture(scope="module")
def figures() -> np.ndarray:
    """Five synthetic full-body figures at 64 px, uint8 [5, 64, 64, 3]."""
    from mst_pipeline.synthesis.synthetic import random_figure, render
    from uh_train.format.geometry import scale_translate

    H = scale_translate(1 / 64, 1 / 64, 0, 0)
    return np.stack([render(random_figure(np.random.default_rng([7, i])), H, 64, 64) for i in range(5)])


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def test_default_file_is_named_by_its_hash_and_gives_2048_features(inception, figures):
    path = default_inception_path()
    assert inception.describe() == {"network": "inception", "file": path.name,
                                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "kind": "tf-range"}
    feats = inception(_nchw(figures[:2]))
    assert feats.shape == (2, FEATURE_DIM) and feats.dtype == np.float64
    assert np.all(feats >= 0) and np.abs(feats[0] - feats[1]).max() > 1e-3  # pool features after ReLU


def test_fid_rises_monotonically_with_noise_and_blur(inception, figures):
    rng = np.random.default_rng(0)
    base = inception(_nchw(figures))
    assert fid_from_features(base, base) == pytest.approx(0.0, abs=1e-6)

    def noisy(sigma):
        return np.clip(figures + rng.normal(0, sigma, figures.shape), 0, 255).astype(np.uint8)

    def blurred(radius):
        return np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(radius))) for f in figures])

    noise = [fid_from_features(base, inception(_nchw(noisy(s)))) for s in (12, 48)]
    blur = [fid_from_features(base, inception(_nchw(blurred(r)))) for r in (0.8, 2.5)]
    assert 0 < noise[0] < noise[1]
    assert 0 < blur[0] < blur[1]


def test_nvidia_style_file_gets_uint8_images_and_is_detected(tmp_path):
    path = save_nvidia_like(tmp_path / "inception-like.pt")
    features = InceptionFeatures(path)
    assert features.kind == "nvidia" and features.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    expected = features.net(images, return_features=True).double().numpy()
    np.testing.assert_allclose(features(images), expected)


@pytest.mark.parametrize("content", [b"", b"not a torchscript archive", b"PK\x03\x04broken zip"])
def test_unreadable_inception_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "inception.pt"
    path.write_bytes(content)
    with pytest.raises(MetricsError) as info:
        InceptionFeatures(path)
    assert "inception.pt" in str(info.value) and "\n" not in str(info.value)


def test_missing_inception_file_is_an_error(tmp_path):
    with pytest.raises(MetricsError, match="does not exist"):
        InceptionFeatures(tmp_path / "nothing.pt")


def test_images_must_be_uint8_nchw(inception):
    with pytest.raises(ValueError, match="uint8"):
        inception(torch.zeros(1, 3, 8, 8))
