"""Improved precision and recall (Kynkäänniemi et al. 2019), k = 3.

Each set's manifold is the union of balls around its points, each ball's radius being the distance
to the point's k-th nearest neighbour within its own set. Precision: fraction of generated points
inside the real manifold (are fakes realistic?). Recall: fraction of real points inside the
generated manifold (is the real variety covered?).

The original metric uses VGG16 features: `uh-eval --vgg16 FILE` supplies them (metrics/vgg.py);
without a VGG16 file it feeds Inception pool features (docs/metrics.md). The function itself takes
any features.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_K = 3


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(points: torch.Tensor, k: int, batch: int = 1024) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(points) <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, have {len(points)}")
    out = []
    for i in range(0, len(points), batch):
        d = _pairwise(points[i : i + batch], points)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself (0)
    return torch.cat(out)


def manifold_coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor,
                      batch: int = 1024) -> float:
    """Fraction of `queries` inside at least one ball (centre in `manifold`, radius in `radii`)."""
    inside = []
    for i in range(0, len(queries), batch):
        d = _pairwise(queries[i : i + batch], manifold)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K) -> tuple[float, float]:
    """(precision, recall) of generated features `fake` [N, D] against real features `real` [M, D]."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {list(r.shape)} and {list(f.shape)}")
    precision = manifold_coverage(r, knn_radii(r, k), f)
    recall = manifold_coverage(f, knn_radii(f, k), r)
    return precision, recall
