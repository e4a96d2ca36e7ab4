"""Fréchet Inception Distance between two sets of features (Heusel et al. 2017).

FID = |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), with the Gaussians fitted to the
Inception pool features of real and generated images. FID, pFID and kFID (paper §4.1) differ only
in which images are fed in; all three use these functions.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


class FeatureStats:
    """Running mean and covariance of features, accumulated batch by batch (float64 sums), so that
    50k x 2048 features never have to be held at once. `keep=True` also keeps the features (for
    precision/recall)."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.n = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None
        self._kept: list[np.ndarray] = []

    def add(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {list(x.shape)}")
        if self._sum is None:
            self._sum = np.zeros(x.shape[1])
            self._outer = np.zeros((x.shape[1], x.shape[1]))
        self.n += len(x)
        self._sum += x.sum(axis=0)
        self._outer += x.T @ x
        if self.keep:
            self._kept.append(x.astype(np.float32))

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and covariance [D, D] (unbiased, as numpy.cov)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self._sum / self.n
        cov = (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov

    def features(self) -> np.ndarray:
        if not self.keep:
            raise ValueError("features were not kept (FeatureStats(keep=True))")
        return np.concatenate(self._kept) if self._kept else np.zeros((0, 0), np.float32)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    covmean, _ = scipy.linalg.sqrtm(cov1 @ cov2, disp=False)
    if not np.all(np.isfinite(covmean)):
        # Near-singular product (few samples): regularise both covariances slightly, as is customary.
        eps = np.eye(len(cov1)) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = np.real(covmean)
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))
    return max(value, 0.0)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two feature arrays [N, D] (convenience for tests and small sets)."""
    a, b = FeatureStats(), FeatureStats()
    a.add(real)
    b.add(fake)
    return frechet_distance(*a.mean_cov(), *b.mean_cov())
