"""Fréchet Inception Distance between two sets of features (Heusel et al. 2017).

FID = |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), with the Gaussians fitted to the
Inception pool features of real and generated images. FID, pFID and kFID (paper §4.1) differ only
in which images are fed in; all three use these functions.
"""

from __future__ import annotations

import numpy as np


class FeatureStats:
    """Running mean and covariance of features, accumulated batch by batch (float64 sums), so that
    50k x 2048 features never have to be held at once. The features themselves are kept with
    `keep=True` (precision/recall), and anyway while there are fewer of them than dimensions: FID
    of small sets is then computed in sample space (`fid_from_features`), which is exact and fast."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.n = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None
        self._kept: list[np.ndarray] | None = []

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
        if self._kept is not None:
            self._kept.append(x.astype(np.float32))
            if not self.keep and self.n >= x.shape[1]:
                self._kept = None

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and covariance [D, D] (unbiased, as numpy.cov)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self._sum / self.n
        cov = (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov

    def features(self) -> np.ndarray | None:
        """All features [N, D] float32 if kept (keep=True, or fewer than D of them), else None."""
        if self._kept is None:
            return None
        return np.concatenate(self._kept) if self._kept else np.zeros((0, 0), np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """What a cache needs to rebuild the statistics: the features when kept, else mean and covariance."""
        feats = self.features()
        if feats is not None:
            return {"features": feats}
        mu, cov = self.mean_cov()
        return {"mu": mu, "cov": cov, "n": np.array(self.n)}


def fid_between(real: dict[str, np.ndarray] | FeatureStats, fake: FeatureStats) -> float:
    """FID of cached real statistics (`FeatureStats.arrays()`) or a FeatureStats against fakes."""
    if isinstance(real, FeatureStats):
        real = real.arrays()
    fake_feats = fake.features()
    if "features" in real and fake_feats is not None:
        return fid_from_features(real["features"], fake_feats)
    if "features" in real:
        stats = FeatureStats()
        stats.add(real["features"])
        mu, cov = stats.mean_cov()
    else:
        mu, cov = real["mu"], real["cov"]
    return frechet_distance(mu, cov, *fake.mean_cov())


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """Tr((cov1 cov2)^(1/2)) for covariance (symmetric PSD) matrices.

    cov1 cov2 is similar to the PSD matrix S cov2 S with S = cov1^(1/2), so its square root's trace
    is the sum of the square roots of that matrix's eigenvalues. Two symmetric eigendecompositions
    are about ten times faster than a general matrix square root at 2048 x 2048 and stay exact for
    the rank-deficient covariances of small sample sets.
    """
    w, V = np.linalg.eigh(cov1)
    root = (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T
    m = root @ cov2 @ root
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2))
    return max(value, 0.0)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two feature arrays [N, D]. With fewer samples than dimensions it uses the samples
    directly: for C1 = A^T A and C2 = B^T B (centred, scaled features), Tr((C1 C2)^(1/2)) is the
    nuclear norm of A B^T, an N1 x N2 matrix -- exact and much cheaper than two D x D
    decompositions."""
    a, b = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {list(a.shape)} and {list(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least 2 feature vectors per set")
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    A, B = (a - mu1) / np.sqrt(len(a) - 1), (b - mu2) / np.sqrt(len(b) - 1)
    if max(len(a), len(b)) < a.shape[1]:
        cross = np.linalg.svd(A @ B.T, compute_uv=False).sum()
        value = float(np.sum((mu1 - mu2) ** 2) + np.sum(A * A) + np.sum(B * B) - 2 * cross)
        return max(value, 0.0)
    return frechet_distance(mu1, A.T @ A, mu2, B.T @ B)
