"""Pure patch geometry of the trainer's input: where a patch of a sample lies (its `PatchView`
(v, s), sampled per source), and its pixels, resampled from the source through H^-1 with its
coverage mask. No I/O, no torch: a shard record in, a `Patch` out.

Stage 1 feeds whole full-body images (T = identity). Stage 2 samples (v, s) per real sample:
keypoint-based centres mixed with uniform centres, s limited by the source's density so a patch is
never upsampled beyond the source's own resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from uh_train import resample
from uh_train.format.geometry import (
    SCALE_MAX,
    PatchView,
    apply_homography,
    bilinear_sample,
)
from uh_train.format.spec import ShardRecord, aligned_full_body

# Padding colour of full-body space outside a source image (SHHQ portraits are padded with white).
PAD_VALUE = 1.0


SCALE_DISTRIBUTIONS = ("log-uniform", "uniform-size")


# Bounds of a view's settings: no source is denser than the spec's 1e6 pixels per full-body unit, so
# no patch of any resolution r >= 8 can use s beyond this; a jitter past a few patch sides is no
# longer near the keypoint.
VIEW_SCALE_LIMIT = 1e6 / 8
VIEW_JITTER_LIMIT = 4.0


@dataclass(frozen=True)
class ViewSettings:
    """How stage 2 chooses (v, s) for one source (docs/training.md, "Patch sampling").

    scale: "log-uniform" draws log s uniformly; "uniform-size" draws the patch side 1/s uniformly
    (AnyRes GAN's crop sampler), which favours large patches. s lies in [s_min, s_max], where
    s_max is further capped by the source's density limit (never upsample) and the run's scale_max.
    keypoint_prob: probability of a keypoint-based centre (else uniform over the source's region);
    jitter: keypoint jitter in patch sides (1/s); whole_prob: probability of the whole square at
    T = identity for a full-body sample (None: the run's `PatchConfig.whole_prob`).
    """

    scale: str = "log-uniform"
    s_min: float = 1.0
    s_max: float | None = None
    keypoint_prob: float = 0.5
    jitter: float = 0.25
    whole_prob: float | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALE_DISTRIBUTIONS:
            raise ValueError(f"unknown scale distribution {self.scale!r} ({', '.join(SCALE_DISTRIBUTIONS)})")
        if not (1.0 <= self.s_min <= VIEW_SCALE_LIMIT):
            raise ValueError(f"s_min must be a number from 1 to {VIEW_SCALE_LIMIT:g}, got {self.s_min}")
        if self.s_max is not None and not (self.s_min <= self.s_max <= VIEW_SCALE_LIMIT):
            raise ValueError(f"s_max ({self.s_max}) must lie from s_min ({self.s_min}) to {VIEW_SCALE_LIMIT:g}")
        if not 0.0 <= self.keypoint_prob <= 1.0:
            raise ValueError(f"keypoint probability must lie in [0, 1], got {self.keypoint_prob}")
        if not 0.0 <= self.jitter <= VIEW_JITTER_LIMIT:
            raise ValueError(f"jitter must lie in [0, {VIEW_JITTER_LIMIT:g}] patch sides, got {self.jitter}")
        if self.whole_prob is not None and not 0.0 <= self.whole_prob <= 1.0:
            raise ValueError(f"whole-image probability must lie in [0, 1], got {self.whole_prob}")


VIEW_KEYS = {"scale": str, "s_min": float, "s_max": float, "keypoints": float, "jitter": float, "whole": float}


def parse_view(text: str, base: ViewSettings | None = None) -> tuple[str, ViewSettings]:
    """`SOURCE:key=value,key=value` (keys: scale, s_min, s_max, keypoints, jitter, whole) -> (source, settings)."""
    source, sep, body = text.partition(":")
    if not sep or not source:
        raise ValueError(f"expected SOURCE:key=value[,key=value...], got {text!r}")
    fields = {}
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in VIEW_KEYS:
            raise ValueError(f"{text!r}: unknown setting {key!r} (keys: {', '.join(VIEW_KEYS)})")
        try:
            fields[{"keypoints": "keypoint_prob", "whole": "whole_prob"}.get(key, key)] = VIEW_KEYS[key](value)
        except ValueError:
            raise ValueError(f"{text!r}: {key} expects a {VIEW_KEYS[key].__name__}, got {value!r}") from None
    return source, replace(base or ViewSettings(), **fields)


@dataclass
class PatchConfig:
    res: int = 64  # r: patch size in pixels
    stage: int = 2
    scale_max: float = SCALE_MAX  # largest s
    keypoint_prob: float = 0.5  # default probability of a keypoint-based centre (else uniform)
    jitter: float = 0.25  # default keypoint jitter, in patch sides (1/s)
    # Stage 2: probability that a full-body sample is seen whole, at T = identity, as in stage 1 (AnyRes
    # GAN trains half its stage-2 batches on whole images). It keeps the render at s = 1 the teacher's.
    whole_prob: float = 0.5
    min_confidence: float = 0.3
    mirror: bool = False  # x-flip half of the samples (image, mask, keypoints, H), as StyleGAN3's --mirror
    views: dict[str, ViewSettings] = field(default_factory=dict)  # per-source overrides

    def view(self, source: str) -> ViewSettings:
        return self.views.get(source) or ViewSettings(keypoint_prob=self.keypoint_prob, jitter=self.jitter)


@dataclass
class Patch:
    image: np.ndarray  # float32 [3, r, r] in [-1, 1]
    mask: np.ndarray  # float32 [1, r, r], 1 where the source has pixels
    transform: np.ndarray  # float32 [3, 3], T(v, s)
    source: str
    key: str
    whole: bool  # a whole real image for D's global head (see `make_patch`)


def scale_limits(record: ShardRecord, cfg: PatchConfig) -> tuple[float, float]:
    """[s_min, s_max] of a source's patches: from 1 (the whole square, the uncovered part completed by
    CutMix) up to the source's density limit, density / r, so that a patch is never upsampled."""
    view = cfg.view(record.source)
    s_max = max(1.0, min(cfg.scale_max, view.s_max or math.inf, record.density / cfg.res))
    return min(view.s_min, s_max), s_max


def sample_scale(view: ViewSettings, s_min: float, s_max: float, rng: np.random.Generator) -> float:
    if s_max <= s_min:
        return s_min
    if view.scale == "uniform-size":
        return 1.0 / rng.uniform(1.0 / s_max, 1.0 / s_min)
    return float(math.exp(rng.uniform(math.log(s_min), math.log(s_max))))


def sample_view(record: ShardRecord, cfg: PatchConfig, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Choose (v, s) for a real sample. Returns (v [2], s).

    Every source is seen at every scale its pixels allow (paper §3.2: partial data reaches the
    discriminator at all scales), so a face crop also appears in patches much larger than the face,
    its uncovered part filled by CutMix. The centre is a (jittered) visible keypoint or a uniform
    point of the source's region, so the patch always contains part of the source.
    """
    if cfg.stage == 1:
        return np.array([0.5, 0.5]), 1.0
    view = cfg.view(record.source)
    whole_prob = cfg.whole_prob if view.whole_prob is None else view.whole_prob
    if record.kind == "full" and whole_prob > 0 and rng.uniform() < whole_prob:
        return np.array([0.5, 0.5]), 1.0
    x0, y0 = record.region.min(axis=0)
    x1, y1 = record.region.max(axis=0)
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0)
    s = sample_scale(view, *scale_limits(record, cfg), rng)
    centres = []
    if record.keypoints is not None:
        body = record.keypoints["body"]
        ok = (body[:, 2] >= cfg.min_confidence) & (body[:, 0] >= x0) & (body[:, 0] <= x1) \
            & (body[:, 1] >= y0) & (body[:, 1] <= y1)
        centres = body[ok, :2]
    if len(centres) and rng.uniform() < view.keypoint_prob:
        v = centres[rng.integers(len(centres))] + rng.normal(0.0, view.jitter / s, size=2)
    else:
        v = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    # The centre inside the source's region, then the patch within a quarter side of the square (this
    # moves the centre only so far that the patch still contains the region point it came from).
    half = PatchView(v, s).half
    v = np.clip(np.clip(v, [x0, y0], [x1, y1]), half - 0.25, 1.25 - half)
    if s == 1.0:
        v = np.array([0.5, 0.5])
    return v, s


# OpenPose BODY_25 left/right pairs; the 70 face points (68 + 2 pupils) mirror by this permutation.
BODY_MIRROR = np.array([0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21])
FACE_MIRROR = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # eyebrows
    + [27, 28, 29, 30] + [35, 34, 33, 32, 31]  # nose bridge, nostrils
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
    + [69, 68]  # pupils
)


def mirror_record(record: ShardRecord) -> ShardRecord:
    """The record x-flipped in full-body space (x -> 1 - x): image and mask flipped, H conjugated by
    both flips, region and keypoints mirrored with left and right swapped."""
    w = record.image.shape[1]
    flip_image = np.array([[-1.0, 0.0, w], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # pixel coords, centres at +0.5
    flip_space = np.array([[-1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    H = flip_space @ record.H @ flip_image
    region = record.region.copy()
    region[:, 0] = 1.0 - region[:, 0]
    keypoints = None
    if record.keypoints is not None:
        def flip(points: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
            out = points.copy() if order is None else points[order].copy()
            out[:, 0] = np.where(out[:, 2] > 0, 1.0 - out[:, 0], out[:, 0])
            return out

        kp = record.keypoints
        keypoints = {"body": flip(kp["body"], BODY_MIRROR), "lhand": flip(kp["rhand"]), "rhand": flip(kp["lhand"]),
                     "face": flip(kp["face"], FACE_MIRROR)}
    return replace(record, image=np.ascontiguousarray(record.image[:, ::-1]),
                   mask=None if record.mask is None else np.ascontiguousarray(record.mask[:, ::-1]),
                   H=H, region=region, keypoints=keypoints)


def bilinear_sample_uint8(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """`bilinear_sample(img / 255, sx, sy)` for a uint8 img [h, w, C], without converting the whole
    image to float: only the four neighbours of each sample point are read (flat indices), and
    converted, so the cost follows the patch size, not the source's. Returns float32 [..., C]."""
    h, w, c = img.shape
    flat = img.reshape(h * w, c)

    def read(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return np.take(flat, yy * w + xx, axis=0).astype(np.float32) / 255.0

    return bilinear_sample(img, sx, sy, read)


def resample_patch(record: ShardRecord, v: np.ndarray, s: float, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Read the r x r patch T(v, s) from the source through H^-1 with the project's one resampler.

    Where the map from patch pixels to source pixels is a scale and a shift per axis (every H the
    MST writes: a weak-perspective camera), the patch is read separably with Lanczos-3 stretched by
    the footprint (`uh_train.resample`): the exact antialiased reduction of that region, at its
    sub-pixel position, whatever s is; pixels on the source's own grid are copied as they are.
    Any other H (rotation, perspective) is read from a Lanczos reduction of the source to about one
    source pixel per patch pixel, sampled bilinearly. Returns (rgb float32 [r, r, 3] in [0, 1] with
    PAD_VALUE outside the source, mask float32 [r, r]: 1 where the source, and its own mask, has
    pixels)."""
    T = PatchView(v, s).transform()
    centres = (np.arange(res, dtype=np.float64) + 0.5) / res - 0.5
    gx, gy = np.meshgrid(centres, centres)
    # patch coords -> full-body space (T, then +0.5) -> source pixel centres (H^-1, then -0.5), as one map
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    to_source = np.linalg.inv(shift) @ np.linalg.inv(record.H) @ shift @ T
    src = apply_homography(to_source, np.stack([gx, gy], axis=-1))
    h, w = record.image.shape[:2]
    sx, sy = src[..., 0], src[..., 1]
    inside = ((sx > -0.5) & (sx < w - 0.5) & (sy > -0.5) & (sy < h - 0.5)).astype(np.float32)
    if separable(to_source):
        rgb, m = read_separable(record.image, record.mask, sx[0] + 0.5, sy[:, 0] + 0.5)
    else:
        rgb, m = read_warped(record, sx, sy)
    m = inside * m
    rgb = np.clip(rgb, 0.0, 1.0) * m[..., None] + PAD_VALUE * (1 - m[..., None])
    return rgb.astype(np.float32), m.astype(np.float32)


def separable(to_source: np.ndarray, tol: float = 1e-9) -> bool:
    """Whether a patch-to-source map is a scale and a shift per axis (no rotation, shear, perspective)."""
    t = to_source / to_source[2, 2]
    scale = max(abs(t[0, 0]), abs(t[1, 1]), 1e-12)
    return abs(t[0, 1]) < tol * scale and abs(t[1, 0]) < tol * scale and abs(t[2, 0]) < tol and abs(t[2, 1]) < tol


def read_separable(image: np.ndarray, mask: np.ndarray | None, xs: np.ndarray,
                   ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image [h, w, C] uint8 read at the sample centres xs [r] (columns) and ys [r] (rows), in source
    pixel units (pixel j spans [j, j + 1)), each axis with Lanczos-3 stretched by its footprint. Only
    the window the kernels reach is converted to float. Returns (rgb [r, r, C] float, mask [r, r])."""
    h, w = image.shape[:2]
    out = []
    for centres, n in ((ys, h), (xs, w)):
        footprint = abs(float(centres[-1] - centres[0])) / max(len(centres) - 1, 1)
        reach = int(np.ceil(resample.LOBES * max(footprint, 1.0))) + 1
        lo = max(int(np.floor(centres.min())) - reach, 0)
        hi = min(int(np.ceil(centres.max())) + reach, n)
        lo = min(lo, max(hi - 1, 0))
        weights, _ = resample.axis_weights(hi - lo, (centres - lo)[None], np.array([footprint]))
        out.append((slice(lo, hi), weights[0].astype(np.float32)))
    (rows, wy), (cols, wx) = out
    window = image[rows, cols].astype(np.float32) / 255.0
    rgb = np.einsum("ih,hwc,jw->ijc", wy, window, wx, optimize=True)
    if mask is None:
        return rgb, np.ones(rgb.shape[:2], np.float32)
    m = wy @ (mask[rows, cols].astype(np.float32) / 255.0) @ wx.T
    return rgb, np.clip(m, 0.0, 1.0)


def read_warped(record: ShardRecord, sx: np.ndarray, sy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch through a map that is not separable: the source reduced (Lanczos) to about one pixel
    per patch pixel, then sampled bilinearly. Returns (rgb [r, r, 3], mask [r, r])."""
    image, mask = record.image, record.mask
    h, w = image.shape[:2]
    # source pixels per patch pixel, at the patch's centre
    c = sx.shape[0] // 2
    factor = float(np.sqrt(abs((sx[c, c + 1] - sx[c, c]) * (sy[c + 1, c] - sy[c, c])
                               - (sx[c + 1, c] - sx[c, c]) * (sy[c, c + 1] - sy[c, c]))))
    if factor > 1.0 + 1e-6:
        small = (max(1, round(w / factor)), max(1, round(h / factor)))
        sx = (sx + 0.5) * small[0] / w - 0.5
        sy = (sy + 0.5) * small[1] / h - 0.5
        image = np.asarray(Image.fromarray(image).resize(small, Image.Resampling.LANCZOS))
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize(small, Image.Resampling.LANCZOS))
    rgb = bilinear_sample_uint8(image, sx, sy)
    m = np.ones(sx.shape, np.float32) if mask is None else bilinear_sample_uint8(mask[..., None], sx, sy)[..., 0]
    return rgb, m


def make_patch(record: ShardRecord, cfg: PatchConfig, rng: np.random.Generator) -> Patch:
    """A real patch. Its mask is the source's true coverage: wherever the sample has no pixels
    (outside the image, outside its own mask) no pixel counts as real, whatever its kind.

    `whole` marks the patches D's global head may call real: those their source covers entirely,
    and views of a full-body sample that stay inside the square, seen as the full-body set presents
    them (padded with white where the image ends: the aligned full-body set defines the space)."""
    if cfg.mirror and rng.uniform() < 0.5:
        record = mirror_record(record)
    v, s = sample_view(record, cfg, rng)
    view = PatchView(v, s)
    rgb, m = resample_patch(record, v, s, cfg.res)
    whole = bool(m.mean() > 0.999) or (aligned_full_body(record) and view.inside(tol=1e-9))
    return Patch(
        image=np.ascontiguousarray((rgb * 2 - 1).transpose(2, 0, 1), dtype=np.float32),
        mask=m[None].astype(np.float32),
        transform=view.transform().astype(np.float32),
        source=record.source,
        key=record.key,
        whole=whole,
    )
