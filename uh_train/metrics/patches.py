"""Real images and patches for the metrics, with the T(v, s) each was taken at (paper §4.1).

* `full_images`: full-body images (kind "full") resampled into the whole of full-body space at the
  FID resolution (T = identity), padding included, as the generator's full image covers it.
* `random_patches` (pFID): r x r patches at (v, s) drawn by the trainer's patch sampler
  (`uh_train.data.patches.sample_view`) from every source, the centre moved (if needed) so that the patch
  lies inside what the source shows; each is resampled from its source through H^-1
  with antialiasing (`uh_train.data.patches.resample_patch`) and its T(v, s) is kept so the generated
  patches replay exactly the same transforms.
* `uniform_patches` (pFID of the `paper` protocol): patches at one s with uniform centres over the
  full-body images at least `min_density` dense (the HR full-body set).
* `keypoint_patches` (kFID): patches at s = 8 centred on BODY_25 keypoints, per group of Table 1.

With `native=True` (the `paper` protocol) a real patch is never magnified: where its source has
fewer pixels across the patch than r, it is taken at that pixel count (`protocol.native_size`) and
the generated patch replaying it is downsampled to the same size.

Only patches whose content the source knows are used: at least MIN_COVERAGE of the patch must lie
inside the source image (and its mask); for an aligned full-body image the padding of the unit
square counts as known (it is part of the picture; `uh_train.format.spec.aligned_full_body` decides
which records those are, for the trainer and the metrics alike).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uh_train import shard_reader
from uh_train.data.patches import PatchConfig, resample_patch, sample_view
from uh_train.format.geometry import SCALE_MAX, PatchView
from uh_train.format.spec import ShardRecord, aligned_full_body

from .inception import MetricsError
from .protocol import native_size

MIN_COVERAGE = 0.95
KFID_SCALE = 8.0  # s of keypoint-centred patches (paper Table 1)
MIN_CONFIDENCE = 0.3
# kFID groups of Table 1 -> BODY_25 indices (OpenPose order).
KFID_GROUPS: dict[str, tuple[int, ...]] = {
    "face": (0,),  # nose
    "neck": (1,),
    "shoulder": (2, 5),
    "elbow": (3, 6),
    "hand": (4, 7),  # wrists
    "hip": (9, 12),
    "knee": (10, 13),
}
SHUFFLE_BUFFER = 256


@dataclass
class RealPatch:
    image: np.ndarray  # uint8 [3, r, r]
    transform: np.ndarray  # float64 [3, 3], T(v, s)
    key: str
    group: int = -1  # index into KFID_GROUPS for keypoint patches
    upsampled: bool = False  # the source's density is below r * s (the patch is magnified)

    @property
    def size(self) -> int:
        return int(self.image.shape[-1])


def _records(folders: Sequence[str | Path], seed: int) -> Iterator[ShardRecord]:
    return iter(shard_reader.shard_pipeline(folders, shuffle_buffer=SHUFFLE_BUFFER, seed=seed, split=False))


def known_box(record: ShardRecord) -> np.ndarray:
    """(x0, y0, x1, y1) of full-body space whose content the record shows: the unit square for an
    aligned full-body image (padding included: `aligned_full_body`, as the trainer decides it), else
    its region's bounding box within the unit square."""
    if aligned_full_body(record):
        return np.array([0.0, 0.0, 1.0, 1.0])
    return region_box(record)


def region_box(record: ShardRecord) -> np.ndarray:
    """(x0, y0, x1, y1): the bounding box of the record's region within the unit square."""
    lo = np.maximum(record.region.min(axis=0), 0.0)
    hi = np.minimum(record.region.max(axis=0), 1.0)
    return np.concatenate([lo, hi])


def take_patch(record: ShardRecord, v: np.ndarray, s: float, res: int) -> tuple[np.ndarray, float]:
    """The patch T(v, s) of a record as uint8 [3, res, res] and the fraction of it the source knows."""
    rgb, mask = resample_patch(record, np.asarray(v, np.float64), s, res)
    if aligned_full_body(record):  # its padding is part of the picture
        coverage = PatchView(v, s).fraction_inside((0.0, 0.0, 1.0, 1.0))
    else:
        coverage = float(mask.mean())
    image = np.round(rgb * 255).clip(0, 255).astype(np.uint8).transpose(2, 0, 1)
    return np.ascontiguousarray(image), coverage


def dense_enough(record: ShardRecord, min_density: float) -> bool:
    # A relative tolerance: a 1024 px image covering the unit square has density 1024 up to rounding.
    return record.density >= min_density * (1 - 1e-6)


def full_images(folders: Sequence[str | Path], size: int, n: int, seed: int = 0,
                min_density: float = 0.0) -> Iterator[RealPatch]:
    """Up to n full-body images at least `min_density` dense, at size x size (fewer when the shards
    hold fewer)."""
    found = 0
    for record in _records(folders, seed):
        if found >= n:
            return
        if record.kind != "full" or not dense_enough(record, min_density):
            continue
        image, _ = take_patch(record, np.array([0.5, 0.5]), 1.0, size)
        found += 1
        yield RealPatch(image, PatchView((0.5, 0.5), 1.0).transform(), record.key,
                        upsampled=not dense_enough(record, size))
    if found == 0:
        dense = f" at least {min_density:g} px dense (the HR full-body set)" if min_density > 0 else ""
        raise MetricsError(f"no full-body images (kind 'full'){dense} in the shards; FID and precision/recall "
                           "need them")


def uniform_patches(folders: Sequence[str | Path], res: int, n: int, seed: int = 0, scale: float = KFID_SCALE,
                    min_density: float = 0.0) -> Iterator[RealPatch]:
    """n patches at s = `scale` with centres uniform over each image's region (the patch inside it,
    so an aligned 1:2 portrait never gives a patch of pure padding), from full-body images at least
    `min_density` dense, each at its native size (at most r px); cycles through the shards (new
    centres each pass) until n patches are found."""
    half = PatchView((0.5, 0.5), scale).half
    found = 0
    for epoch in itertools.count():
        before = found
        for i, record in enumerate(_records(folders, seed + epoch)):
            if found >= n:
                return
            if record.kind != "full" or not dense_enough(record, min_density):
                continue
            box = region_box(record)
            view = PatchView(np.random.default_rng([seed, epoch, i]).uniform(box[:2] + half, box[2:] - half),
                             scale).moved_inside(box)
            size = native_size(record.density, scale, res)
            image, _ = take_patch(record, view.centre, scale, size)
            found += 1
            yield RealPatch(image, view.transform(), record.key,
                            upsampled=size == res and record.density < res * scale)
        if found == before:
            raise MetricsError(f"no full-body images (kind 'full') at least {min_density:g} px dense (the HR "
                               "full-body set) in the shards; pFID of the paper protocol needs them")


def random_patches(folders: Sequence[str | Path], res: int, n: int, seed: int = 0,
                   scale_max: float = SCALE_MAX) -> Iterator[RealPatch]:
    """n patches at (v, s) from the trainer's sampler over all sources; cycles through the shards
    (new (v, s) each pass) until n patches are found."""
    cfg = PatchConfig(res=res, stage=2, scale_max=scale_max, whole_prob=0.0)
    found = 0
    for epoch in itertools.count():
        before = found
        for i, record in enumerate(_records(folders, seed + epoch)):
            if found >= n:
                return
            rng = np.random.default_rng([seed, epoch, i])
            v, s = sample_view(record, cfg, rng)
            view = PatchView(v, s).moved_inside(known_box(record))
            image, coverage = take_patch(record, view.centre, s, res)
            if coverage < MIN_COVERAGE:
                continue
            found += 1
            yield RealPatch(image, view.transform(), record.key, upsampled=record.density < res * s)
        if found == before:
            raise MetricsError("no usable real patches in the shards (every sampled patch fell outside its source)")


def keypoint_candidates(record: ShardRecord, scale: float = KFID_SCALE) -> list[tuple[int, np.ndarray]]:
    """(group index, centre) of each confident BODY_25 keypoint of a kFID group in the record."""
    if record.keypoints is None or "body" not in record.keypoints:
        return []
    body = record.keypoints["body"]
    out = []
    for g, indices in enumerate(KFID_GROUPS.values()):
        for j in indices:
            if body[j, 2] >= MIN_CONFIDENCE:
                out.append((g, body[j, :2].astype(np.float64)))
    return out


def keypoint_patches(folders: Sequence[str | Path], res: int, n: int, seed: int = 0, scale: float = KFID_SCALE,
                     min_density: float = 0.0, native: bool = False,
                     kinds: Sequence[str] | None = None) -> Iterator[RealPatch]:
    """Up to n patches per kFID group, at s = `scale` centred on the group's keypoints, from sources
    at least `min_density` dense (and of the given kinds, when given); r px each, or (native=True)
    at most r px, never magnified. One pass over the shards: a group gets fewer than n when the
    shards hold fewer such keypoints."""
    counts = [0] * len(KFID_GROUPS)
    any_keypoints = False
    for record in _records(folders, seed):
        if min(counts) >= n:
            return
        if record.keypoints is not None:
            any_keypoints = True
        if not dense_enough(record, min_density) or (kinds is not None and record.kind not in kinds):
            continue
        for g, v in keypoint_candidates(record, scale):
            if counts[g] >= n:
                continue
            size = native_size(record.density, scale, res) if native else res
            image, coverage = take_patch(record, v, scale, size)
            if coverage < MIN_COVERAGE:
                continue
            counts[g] += 1
            yield RealPatch(image, PatchView(v, scale).transform(), record.key, group=g,
                            upsampled=size == res and record.density < res * scale)
    if not any_keypoints:
        raise MetricsError("the shards carry no keypoints (meta.json 'keypoints' is null); kFID needs BODY_25 "
                           "keypoints in full-body space")
    if sum(counts) == 0:
        raise MetricsError(f"no keypoint patch at s={scale:g} lies inside its source (min density {min_density:g})")
