"""The evaluation of a generator against shard folders: FID, pFID, kFID and precision/recall.

    real images/patches (patches.py) --Inception--> statistics (cached, stats.py)
    fakes replaying the real T(v, s) (fakes.py) --Inception--> statistics --> metric values

* fid:  full images at `fid_res` (stitched from patches) vs real full-body images resized to match.
* pfid: patches at the real (v, s) of random real patches (paper §4.1, after AnyRes GAN).
* kfid: patches at s = 8 centred on keypoints, per Table 1 group, and their mean.
* pr:   improved precision/recall (k = 3) on the full-image features (shared with fid).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import fakes, patches
from .fid import FeatureStats, fid_between
from .inception import MetricsError
from .precision_recall import DEFAULT_K, precision_recall
from .stats import StatsCache, manifest_digest, stats_key

METRICS = ("fid", "pfid", "kfid", "pr")


class FeatureExtractor(Protocol):
    def __call__(self, images: torch.Tensor) -> np.ndarray: ...

    def describe(self) -> dict: ...


# on_task(description, total) -> advance(count); the CLI shows Rich progress bars through it.
TaskHook = Callable[[str, int], Callable[[int], None]]


def _no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda count: None


@dataclass
class EvalConfig:
    metrics: tuple[str, ...] = METRICS
    n: int = 500  # images per metric (per group for kFID); the paper uses 50k
    fid_res: int | None = None  # full-image resolution for FID and P&R; None: the patch resolution r
    seed: int = 0
    batch: int = 16
    scale_max: float = 8.0  # largest s of pFID patches
    kfid_scale: float = patches.KFID_SCALE
    kfid_min_density: float = 0.0
    k: int = DEFAULT_K

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise MetricsError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
        if self.n < 2:
            raise MetricsError(f"--n must be at least 2 (a covariance needs two samples), got {self.n}")


def _batched(items: Iterable[patches.RealPatch], batch: int) -> Iterable[list[patches.RealPatch]]:
    chunk: list[patches.RealPatch] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _real_full(folders, cfg: EvalConfig, size: int, features: FeatureExtractor, cache: StatsCache,
               manifests: str, hook: TaskHook) -> dict[str, np.ndarray]:
    config = {"set": "full", "n": cfg.n, "size": size, "seed": cfg.seed, "inception": features.describe()["sha256"]}
    key = stats_key(manifests, config)
    cached = cache.load("full", key)
    if cached is not None:
        return cached
    advance = hook(f"real full images ({size} px)", cfg.n)
    stats = FeatureStats(keep=True)
    upsampled = 0
    for chunk in _batched(patches.full_images(folders, size, cfg.n, cfg.seed), cfg.batch):
        stats.add(features(torch.from_numpy(np.stack([p.image for p in chunk]))))
        upsampled += sum(p.upsampled for p in chunk)
        advance(len(chunk))
    out = {"features": stats.features(), "upsampled": np.array(upsampled)}
    cache.save("full", key, out)
    return out


def _real_patch_stats(items: Iterable[patches.RealPatch], groups: int, cfg: EvalConfig,
                      features: FeatureExtractor, advance: Callable[[int], None]) -> dict[str, np.ndarray]:
    stats = [FeatureStats() for _ in range(groups)]
    transforms: list[list[np.ndarray]] = [[] for _ in range(groups)]
    upsampled = np.zeros(groups, dtype=np.int64)
    for chunk in _batched(items, cfg.batch):
        feats = features(torch.from_numpy(np.stack([p.image for p in chunk])))
        for p, f in zip(chunk, feats, strict=True):
            g = max(p.group, 0)
            stats[g].add(f[None])
            transforms[g].append(p.transform)
            upsampled[g] += p.upsampled
        advance(len(chunk))
    out: dict[str, np.ndarray] = {"counts": np.array([s.n for s in stats]), "upsampled": upsampled}
    for g, s in enumerate(stats):
        out[f"transforms_{g}"] = np.array(transforms[g], dtype=np.float64).reshape(-1, 3, 3)
        if s.n >= 2:
            out.update({f"{name}_{g}": value for name, value in s.arrays().items()})
    return out


def _group(real: dict[str, np.ndarray], g: int) -> dict[str, np.ndarray] | None:
    """Group g's statistics from `_real_patch_stats` arrays (None when it has fewer than 2 patches)."""
    suffix = f"_{g}"
    arrays = {k[: -len(suffix)]: v for k, v in real.items() if k.endswith(suffix) and not k.startswith("transforms")}
    return arrays or None


def _fake_stats(batches: Iterable[torch.Tensor], features: FeatureExtractor, advance, keep: bool = False):
    stats = FeatureStats(keep=keep)
    for images in batches:
        stats.add(features(images))
        advance(len(images))
    return stats


def evaluate(gen: fakes.PatchGenerator, folders: Sequence[str | Path], cfg: EvalConfig,
             features: FeatureExtractor, cache: StatsCache | None = None,
             on_task: TaskHook = _no_progress) -> dict[str, Any]:
    """Compute the requested metrics; returns the result record that `report` writes."""
    cache = cache or StatsCache(None)
    manifests = manifest_digest(folders)
    r = gen.img_resolution
    fid_res = cfg.fid_res or r
    result: dict[str, Any] = {"config": {**asdict(cfg), "fid_res": fid_res, "metrics": list(cfg.metrics)},
                              "manifest_sha256": manifests, "inception": features.describe(),
                              "resolution": r, "seconds": {}}

    if "fid" in cfg.metrics or "pr" in cfg.metrics:
        start = time.perf_counter()
        real = _real_full(folders, cfg, fid_res, features, cache, manifests, on_task)
        real_feats = real["features"].astype(np.float64)
        if len(real_feats) < 2:
            raise MetricsError(f"only {len(real_feats)} full-body image in the shards; FID needs at least 2")
        if "pr" in cfg.metrics and min(len(real_feats), cfg.n) <= cfg.k:
            raise MetricsError(
                f"precision/recall with k={cfg.k} needs more than {cfg.k} real and generated full-body images "
                f"(have {len(real_feats)} real, --n {cfg.n}); add images, raise --n or leave pr out of --metrics")
        advance = on_task(f"generated full images ({fid_res} px)", cfg.n)
        fake = _fake_stats(fakes.full_image_batches(gen, cfg.n, fid_res, cfg.seed, cfg.batch), features, advance,
                           keep="pr" in cfg.metrics)
        if "fid" in cfg.metrics:
            result["fid"] = {"value": fid_between({"features": real_feats}, fake),
                             "resolution": fid_res, "n_real": len(real_feats), "n_fake": fake.n,
                             "real_upsampled": int(real["upsampled"])}
        if "pr" in cfg.metrics:
            precision, recall = precision_recall(real_feats, fake.features(), k=cfg.k)
            result["pr"] = {"precision": precision, "recall": recall, "k": cfg.k, "resolution": fid_res,
                            "n_real": len(real_feats), "n_fake": fake.n}
        result["seconds"]["fid+pr"] = time.perf_counter() - start

    if "pfid" in cfg.metrics:
        start = time.perf_counter()
        config = {"set": "pfid", "n": cfg.n, "res": r, "scale_max": cfg.scale_max, "seed": cfg.seed,
                  "min_coverage": patches.MIN_COVERAGE, "inception": features.describe()["sha256"]}
        key = stats_key(manifests, config)
        real = cache.load("pfid", key)
        if real is None:
            items = patches.random_patches(folders, r, cfg.n, cfg.seed, cfg.scale_max)
            real = _real_patch_stats(items, 1, cfg, features, on_task("real patches", cfg.n))
            cache.save("pfid", key, real)
        transforms = real["transforms_0"]
        fake = _fake_stats(fakes.patch_batches(gen, transforms, cfg.seed + 1, cfg.batch), features,
                           on_task("generated patches (real T(v,s))", len(transforms)))
        scales = 1.0 / transforms[:, 0, 0]
        result["pfid"] = {"value": fid_between(_group(real, 0), fake),
                          "n": int(real["counts"][0]), "scale_min": float(scales.min()),
                          "scale_max": float(scales.max()), "real_upsampled": int(real["upsampled"][0])}
        result["seconds"]["pfid"] = time.perf_counter() - start

    if "kfid" in cfg.metrics:
        start = time.perf_counter()
        groups = list(patches.KFID_GROUPS)
        config = {"set": "kfid", "n": cfg.n, "res": r, "scale": cfg.kfid_scale, "seed": cfg.seed,
                  "min_density": cfg.kfid_min_density, "groups": patches.KFID_GROUPS,
                  "min_coverage": patches.MIN_COVERAGE, "inception": features.describe()["sha256"]}
        key = stats_key(manifests, config)
        real = cache.load("kfid", key)
        if real is None:
            items = patches.keypoint_patches(folders, r, cfg.n, cfg.seed, cfg.kfid_scale, cfg.kfid_min_density)
            real = _real_patch_stats(items, len(groups), cfg, features,
                                     on_task(f"real keypoint patches (s={cfg.kfid_scale:g})", cfg.n * len(groups)))
            cache.save("kfid", key, real)
        per_group: dict[str, dict[str, Any]] = {}
        for g, name in enumerate(groups):
            transforms = real[f"transforms_{g}"]
            entry: dict[str, Any] = {"value": None, "n": int(real["counts"][g]),
                                     "real_upsampled": int(real["upsampled"][g])}
            group = _group(real, g)
            if group is not None:
                fake = _fake_stats(fakes.patch_batches(gen, transforms, cfg.seed + 2 + g, cfg.batch), features,
                                   on_task(f"generated {name} patches", len(transforms)))
                entry["value"] = fid_between(group, fake)
            per_group[name] = entry
        values = [e["value"] for e in per_group.values() if e["value"] is not None]
        result["kfid"] = {"groups": per_group, "mean": float(np.mean(values)) if values else None,
                          "scale": cfg.kfid_scale}
        result["seconds"]["kfid"] = time.perf_counter() - start
    return result
