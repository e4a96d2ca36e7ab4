"""The evaluation of a generator against shard folders: FID, pFID, kFID and precision/recall.

    real images/patches (patches.py) --Inception--> statistics (cached, stats.py)
    fakes replaying the real T(v, s) (fakes.py) --Inception--> statistics --> metric values

Two protocols (protocol.py). `quick`, for small runs:

* fid:  full images at `fid_res` (stitched from patches) vs real full-body images resized to match.
* pfid: patches at the real (v, s) of random real patches (after AnyRes GAN).
* kfid: patches at s = 8 centred on keypoints, per Table 1 group, and their mean.
* pr:   improved precision/recall (k = 3) on the full-image features (shared with fid).
* consistency: the whole image rendered at r and, in one pass, at k·r (k = 2, 4, 8), the dense
        render reduced to r (Lanczos) and compared with the render at r: PSNR per k (consistency.py).
        It needs no real data and is the same in both protocols.

`paper` (§4.1; sizes relative to the patch resolution r, the paper's r being 256):

* fid:  full images rendered in one pass at 8r, downsampled (antialiased) to 4r, vs the HR
        full-body set (full-body images at least 4r dense) at 4r.
* pfid: s = 8 patches with uniform centres over the HR full-body set; fakes replay each T.
* kfid: s = 8 patches on the keypoints of the HR full-body set (full-body images at least 4r
        dense; the quick protocol uses every source). A real patch is never magnified: where its
        source has fewer than r pixels across it, the fake is downsampled to the real's size.
* pr:   k = 3 on the fid images, with VGG16 features when a VGG16 file is given, else Inception.

In both, a `pr_features` extractor (VGG16) replaces Inception for precision/recall when given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from uh_train.format.geometry import SCALE_MAX, scale_of

from . import fakes, patches
from .consistency import FACTORS, scale_consistency
from .fid import FeatureStats, fid_between
from .inception import MetricsError
from .precision_recall import DEFAULT_K, precision_recall
from .protocol import PROTOCOLS, paper_sizes
from .stats import StatsCache, manifest_digest, stats_key

METRICS = ("fid", "pfid", "kfid", "pr", "consistency")


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
    fid_res: int | None = None  # quick: full-image resolution for FID and P&R; None: the patch resolution r
    seed: int = 0
    batch: int = 16
    scale_max: float = SCALE_MAX  # largest s of quick pFID patches: the trainer's
    kfid_scale: float = patches.KFID_SCALE
    kfid_min_density: float = 0.0
    kfid_groups: tuple[str, ...] | None = None  # kFID only for these groups (None: all of Table 1's)
    k: int = DEFAULT_K
    protocol: str = "quick"  # or "paper" (protocol.py)
    consistency_n: int = 16  # latents for the scale-consistency metric
    consistency_factors: tuple[int, ...] = FACTORS

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise MetricsError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
        bad_groups = [g for g in self.kfid_groups or () if g not in patches.KFID_GROUPS]
        if bad_groups or self.kfid_groups == ():
            raise MetricsError(f"unknown kFID group(s) {', '.join(bad_groups) or '(none)'}; choose from "
                               f"{', '.join(patches.KFID_GROUPS)}")
        if self.n < 2:
            raise MetricsError(f"--n must be at least 2 (a covariance needs two samples), got {self.n}")
        if self.protocol not in PROTOCOLS:
            raise MetricsError(f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}")
        if self.protocol == "paper":
            fixed = [name for name, value, default in (("--fid-size", self.fid_res, None),
                                                       ("--kfid-min-density", self.kfid_min_density, 0.0),
                                                       ("kfid_scale", self.kfid_scale, patches.KFID_SCALE))
                     if value != default]
            if fixed:
                raise MetricsError(f"{', '.join(fixed)} cannot be set with --protocol paper, which fixes the sizes "
                                   "(FID at 4r, patches at s = 8); use --protocol quick to choose them")


def _batched(items: Iterable[patches.RealPatch], batch: int) -> Iterable[list[patches.RealPatch]]:
    chunk: list[patches.RealPatch] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _features_of(features: FeatureExtractor, images: Sequence[np.ndarray]) -> np.ndarray:
    """Features of uint8 [3, h, w] images of possibly different sizes, in order (one call per size)."""
    shapes = [image.shape for image in images]
    out: list[np.ndarray] = [np.empty(0)] * len(images)
    for shape in dict.fromkeys(shapes):
        idx = [i for i, s in enumerate(shapes) if s == shape]
        for i, f in zip(idx, features(torch.from_numpy(np.stack([images[i] for i in idx]))), strict=True):
            out[i] = f
    return np.stack(out)


def _real_full(folders, cfg: EvalConfig, size: int, min_density: float, extractors: dict[str, FeatureExtractor],
               cache: StatsCache, manifests: str, hook: TaskHook) -> dict[str, np.ndarray]:
    """Features of the real full-body images under each extractor ("fid", "pr"), cached together."""
    config = {"set": "full", "n": cfg.n, "size": size, "seed": cfg.seed, "min_density": min_density,
              "features": {name: fx.describe()["sha256"] for name, fx in extractors.items()}}
    key = stats_key(manifests, config)
    cached = cache.load("full", key)
    if cached is not None:
        return cached
    advance = hook(f"real full images ({size} px)", cfg.n)
    stats = {name: FeatureStats(keep=True) for name in extractors}
    upsampled = 0
    for chunk in _batched(patches.full_images(folders, size, cfg.n, cfg.seed, min_density), cfg.batch):
        images = torch.from_numpy(np.stack([p.image for p in chunk]))
        for name, fx in extractors.items():
            stats[name].add(fx(images))
        upsampled += sum(p.upsampled for p in chunk)
        advance(len(chunk))
    out = {f"features_{name}": s.features() for name, s in stats.items()}
    out["upsampled"] = np.array(upsampled)
    cache.save("full", key, out)
    return out


def _real_patch_stats(items: Iterable[patches.RealPatch], groups: int, cfg: EvalConfig,
                      features: FeatureExtractor, advance: Callable[[int], None]) -> dict[str, np.ndarray]:
    stats = [FeatureStats() for _ in range(groups)]
    transforms: list[list[np.ndarray]] = [[] for _ in range(groups)]
    sizes: list[list[int]] = [[] for _ in range(groups)]
    upsampled = np.zeros(groups, dtype=np.int64)
    for chunk in _batched(items, cfg.batch):
        feats = _features_of(features, [p.image for p in chunk])
        for p, f in zip(chunk, feats, strict=True):
            g = max(p.group, 0)
            stats[g].add(f[None])
            transforms[g].append(p.transform)
            sizes[g].append(p.size)
            upsampled[g] += p.upsampled
        advance(len(chunk))
    out: dict[str, np.ndarray] = {"counts": np.array([s.n for s in stats]), "upsampled": upsampled}
    for g, s in enumerate(stats):
        out[f"transforms_{g}"] = np.array(transforms[g], dtype=np.float64).reshape(-1, 3, 3)
        out[f"sizes_{g}"] = np.array(sizes[g], dtype=np.int64)
        if s.n >= 2:
            out.update({f"{name}_{g}": value for name, value in s.arrays().items()})
    return out


def _group(real: dict[str, np.ndarray], g: int) -> dict[str, np.ndarray] | None:
    """Group g's statistics from `_real_patch_stats` arrays (None when it has fewer than 2 patches)."""
    suffix = f"_{g}"
    arrays = {k[: -len(suffix)]: v for k, v in real.items()
              if k.endswith(suffix) and not k.startswith(("transforms", "sizes"))}
    return arrays or None


def _fake_stats(batches: Iterable[torch.Tensor], features: FeatureExtractor, advance, keep: bool = False):
    stats = FeatureStats(keep=keep)
    for images in batches:
        stats.add(features(images))
        advance(len(images))
    return stats


def _size_summary(sizes: np.ndarray, r: int) -> dict[str, Any]:
    """Pixel sizes of real patches (and so of the fakes compared with them)."""
    if len(sizes) == 0:
        return {"size_min": None, "size_max": None, "fake_downsampled": 0}
    return {"size_min": int(sizes.min()), "size_max": int(sizes.max()), "fake_downsampled": int((sizes < r).sum())}


def evaluate(gen: fakes.PatchGenerator, folders: Sequence[str | Path], cfg: EvalConfig,
             features: FeatureExtractor, cache: StatsCache | None = None,
             on_task: TaskHook = _no_progress, pr_features: FeatureExtractor | None = None,
             lpips_fn: Callable | None = None) -> dict[str, Any]:
    """Compute the requested metrics; returns the result record that `report` writes. `pr_features`
    (VGG16) replaces `features` (Inception) for precision/recall when given."""
    cache = cache or StatsCache(None)
    manifests = manifest_digest(folders)
    r = gen.img_resolution
    paper = paper_sizes(r) if cfg.protocol == "paper" else None
    fid_res = paper.fid_size if paper else (cfg.fid_res or r)
    protocol = paper.describe() if paper else {
        "name": "quick", "r": r, "render": "stitched", "fid_size": fid_res, "pfid_scale_max": cfg.scale_max,
        "kfid_scale": cfg.kfid_scale, "kfid_min_density": cfg.kfid_min_density}
    pr_fx = pr_features or features
    result: dict[str, Any] = {"protocol": protocol,
                              "config": {**asdict(cfg), "fid_res": fid_res, "metrics": list(cfg.metrics)},
                              "manifest_sha256": manifests, "inception": features.describe(),
                              "resolution": r, "seconds": {}, "fewer_than_n": []}
    short = result["fewer_than_n"]  # what had fewer real samples than --n: computed from those, said here

    if "fid" in cfg.metrics or "pr" in cfg.metrics:
        start = time.perf_counter()
        extractors: dict[str, FeatureExtractor] = {}
        if "fid" in cfg.metrics:
            extractors["fid"] = features
        if "pr" in cfg.metrics:
            extractors["pr"] = pr_fx
        real = _real_full(folders, cfg, fid_res, paper.hr_min_density if paper else 0.0, extractors, cache,
                          manifests, on_task)
        n_real = len(real[f"features_{next(iter(extractors))}"])
        if n_real < 2:
            raise MetricsError(f"only {n_real} full-body image in the shards; FID needs at least 2")
        if "pr" in cfg.metrics and min(n_real, cfg.n) <= cfg.k:
            raise MetricsError(
                f"precision/recall with k={cfg.k} needs more than {cfg.k} real and generated full-body images "
                f"(have {n_real} real, --n {cfg.n}); add images, raise --n or leave pr out of --metrics")
        render = f"rendered at {paper.render_size} px, " if paper else ""
        advance = on_task(f"generated full images ({render}{fid_res} px)", cfg.n)
        fake = {name: FeatureStats(keep=name == "pr") for name in extractors}
        for images in fakes.full_image_batches(gen, cfg.n, fid_res, cfg.seed, cfg.batch,
                                               render_size=paper.render_size if paper else None):
            for name, fx in extractors.items():
                fake[name].add(fx(images))
            advance(len(images))
        if "fid" in cfg.metrics:
            result["fid"] = {"value": fid_between({"features": real["features_fid"].astype(np.float64)}, fake["fid"]),
                             "resolution": fid_res, "render_size": paper.render_size if paper else fid_res,
                             "n_real": n_real, "n_fake": fake["fid"].n, "real_upsampled": int(real["upsampled"])}
        if "pr" in cfg.metrics:
            precision, recall = precision_recall(real["features_pr"].astype(np.float64), fake["pr"].features(),
                                                 k=cfg.k)
            result["pr"] = {"precision": precision, "recall": recall, "k": cfg.k, "resolution": fid_res,
                            "features": {"network": "inception", **pr_fx.describe()},
                            "n_real": n_real, "n_fake": fake["pr"].n}
        if n_real < cfg.n:
            names = " and ".join({"fid": "FID", "pr": "P&R"}[m] for m in extractors)
            short.append(f"{names}: {n_real} real full-body images (--n {cfg.n}), against {cfg.n} generated")
        result["seconds"]["fid+pr"] = time.perf_counter() - start

    if "pfid" in cfg.metrics:
        start = time.perf_counter()
        config = {"set": "pfid", "protocol": cfg.protocol, "n": cfg.n, "res": r, "seed": cfg.seed,
                  "min_coverage": patches.MIN_COVERAGE, "inception": features.describe()["sha256"]}
        config.update({"scale": paper.patch_scale, "min_density": paper.hr_min_density} if paper
                      else {"scale_max": cfg.scale_max})
        key = stats_key(manifests, config)
        real = cache.load("pfid", key)
        if real is None:
            if paper:
                items = patches.uniform_patches(folders, r, cfg.n, cfg.seed, paper.patch_scale, paper.hr_min_density)
            else:
                items = patches.random_patches(folders, r, cfg.n, cfg.seed, cfg.scale_max)
            real = _real_patch_stats(items, 1, cfg, features, on_task("real patches", cfg.n))
            cache.save("pfid", key, real)
        transforms, sizes = real["transforms_0"], real["sizes_0"]
        fake = _fake_stats(fakes.patch_batches(gen, transforms, cfg.seed + 1, cfg.batch, sizes), features,
                           on_task("generated patches (real T(v,s))", len(transforms)))
        scales = scale_of(transforms)
        result["pfid"] = {"value": fid_between(_group(real, 0), fake),
                          "n": int(real["counts"][0]), "scale_min": float(scales.min()),
                          "scale_max": float(scales.max()), "real_upsampled": int(real["upsampled"][0]),
                          **_size_summary(sizes, r)}
        if result["pfid"]["n"] < cfg.n:
            short.append(f"pFID: {result['pfid']['n']} real patches (--n {cfg.n})")
        result["seconds"]["pfid"] = time.perf_counter() - start

    if "kfid" in cfg.metrics:
        start = time.perf_counter()
        groups = list(patches.KFID_GROUPS)
        config = {"set": "kfid", "protocol": cfg.protocol, "n": cfg.n, "res": r, "scale": cfg.kfid_scale,
                  "seed": cfg.seed, "groups": patches.KFID_GROUPS,
                  "min_density": paper.hr_min_density if paper else cfg.kfid_min_density,
                  "kinds": ["full"] if paper else None,
                  "min_coverage": patches.MIN_COVERAGE, "inception": features.describe()["sha256"]}
        key = stats_key(manifests, config)
        real = cache.load("kfid", key)
        if real is None:
            if paper:  # the paper's real set: keypoints of the HR full-body set
                items = patches.keypoint_patches(folders, r, cfg.n, cfg.seed, paper.patch_scale, paper.hr_min_density,
                                                 native=True, kinds=("full",))
            else:
                items = patches.keypoint_patches(folders, r, cfg.n, cfg.seed, cfg.kfid_scale, cfg.kfid_min_density)
            real = _real_patch_stats(items, len(groups), cfg, features,
                                     on_task(f"real keypoint patches (s={cfg.kfid_scale:g})", cfg.n * len(groups)))
            cache.save("kfid", key, real)
        per_group: dict[str, dict[str, Any]] = {}
        for g, name in enumerate(groups):
            transforms, sizes = real[f"transforms_{g}"], real[f"sizes_{g}"]
            entry: dict[str, Any] = {"value": None, "n": int(real["counts"][g]),
                                     "real_upsampled": int(real["upsampled"][g]), **_size_summary(sizes, r)}
            group = _group(real, g)
            if cfg.kfid_groups is not None and name not in cfg.kfid_groups:
                continue  # not asked for: no generated patches, no entry
            if group is not None:
                fake = _fake_stats(fakes.patch_batches(gen, transforms, cfg.seed + 2 + g, cfg.batch, sizes),
                                   features, on_task(f"generated {name} patches", len(transforms)))
                entry["value"] = fid_between(group, fake)
            per_group[name] = entry
        values = [e["value"] for e in per_group.values() if e["value"] is not None]
        result["kfid"] = {"groups": per_group, "mean": float(np.mean(values)) if values else None,
                          "scale": cfg.kfid_scale}
        few = [f"{name} {e['n']}" for name, e in per_group.items() if e["n"] < cfg.n]
        if few:
            short.append(f"kFID: real patches per group {', '.join(few)} (--n {cfg.n})")
        result["seconds"]["kfid"] = time.perf_counter() - start

    if "consistency" in cfg.metrics:
        start = time.perf_counter()
        advance = on_task(f"scale consistency ({cfg.consistency_n} latents, k = "
                          f"{', '.join(map(str, cfg.consistency_factors))})", 1)
        result["consistency"] = scale_consistency(gen, cfg.consistency_n, cfg.seed, cfg.consistency_factors,
                                                  cfg.batch, lpips_fn)
        advance(1)
        result["seconds"]["consistency"] = time.perf_counter() - start
    return result
