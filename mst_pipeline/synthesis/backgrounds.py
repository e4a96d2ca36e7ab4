"""What a synthetic hand is composited onto (paper App. A): real photo or shard patches, or fabric.

`find_backgrounds` collects a folder's aligned upper-body shard samples, else its photos;
`Backgrounds.patch` cuts a patch at the hand's scale; without a folder `fabric_background`
generates one. `composite` lays the straight-alpha render over it and says which pixels are real.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mst_pipeline.detect.images import list_images

PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_photos(folder: str | os.PathLike | None) -> list[Path]:
    """The images under FOLDER (none without a folder); an error for a missing or empty folder."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = list_images(folder, exts=PHOTO_EXTS)
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(PHOTO_EXTS)})")
    return files


def fabric_background(res: int, rng: np.random.Generator) -> np.ndarray:
    """A fabric-like patch: a woven two-colour pattern (stripes or checks) with thread noise and
    soft folds, uint8 [res, res, 3]."""
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float64) / res
    base = rng.uniform(30, 230, 3)
    accent = np.clip(base + rng.normal(0, 60, 3), 0, 255)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    period = rng.uniform(0.03, 0.25)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        pattern = (np.sin(2 * np.pi * u / period) > rng.uniform(-0.5, 0.5)).astype(np.float64)
    elif kind == 1:  # checks
        pattern = 0.5 * ((np.sin(2 * np.pi * u / period) > 0) + (np.sin(2 * np.pi * v / period) > 0))
    else:  # plain
        pattern = np.zeros_like(u)
    threads = res / rng.uniform(3, 6, 2)  # thread spacing of a few pixels
    weave = 0.5 + 0.5 * np.sin(2 * np.pi * u * threads[0]) * np.sin(2 * np.pi * v * threads[1])
    folds = np.zeros_like(u)
    for _ in range(3):
        k = rng.normal(0, 4, 2)
        folds += np.sin(2 * np.pi * (k[0] * xx + k[1] * yy) + rng.uniform(0, 2 * np.pi))
    img = base + (accent - base) * pattern[..., None]
    img = img * (0.92 + 0.08 * weave[..., None]) * (1.0 + 0.06 * folds[..., None])
    img += rng.normal(0, 4, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# A photo's background patch spans this fraction of the photo's height: about what the hand's
# crop (1.15-1.6 hand lengths) covers in a half-body photo, where a hand is ~0.2 of the height.
PHOTO_PATCH_FRACTION = (0.2, 0.4)
BACKGROUND_KINDS = ("upper",)  # aligned shard samples used as backgrounds (DeepFashion-like)


def crop_square(image: Image.Image, side_px: int, res: int, rng: np.random.Generator,
                mask: Image.Image | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random square of SIDE_PX pixels (clamped to the image) resized to RES: (rgb, valid)."""
    w, h = image.size
    side = int(np.clip(side_px, 1, min(w, h)))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    box = (x0, y0, x0 + side, y0 + side)
    rgb = np.asarray(image.crop(box).resize((res, res), Image.Resampling.LANCZOS), dtype=np.uint8)
    if mask is None:
        return rgb, np.full((res, res), 255, np.uint8)
    return rgb, np.asarray(mask.crop(box).resize((res, res), Image.Resampling.BILINEAR), dtype=np.uint8)


@dataclass
class ShardBackground:
    """An aligned shard sample to take background patches from."""

    shard: Path
    image: tuple[int, int]  # (offset, size) of the image member's bytes in the tar
    mask: tuple[int, int] | None
    density: float  # its pixels per full-body unit

    def read(self, member: tuple[int, int]) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(member[0])
            return f.read(member[1])


@dataclass
class Backgrounds:
    """Real image patches to composite hands onto (paper App. A: DeepFashion-HR patches).

    items: photo paths, or "SHARD#KEY" for the samples in `shards`. A photo's patch is a random
    square of `PHOTO_PATCH_FRACTION` of its height; a shard sample's patch has the hand crop's
    own full-body size at the sample's density, so the background is at the hand's scale, and
    keeps the sample's mask (its padding is not real).
    """

    items: list[str]
    shards: dict[str, ShardBackground] = field(default_factory=dict)

    def patch(self, item: str, side: float, res: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [res, res, 3], valid uint8 [res, res]: 255 where the patch is real)."""
        if item not in self.shards:
            with Image.open(item) as im:
                im = im.convert("RGB")
                return crop_square(im, int(im.size[1] * rng.uniform(*PHOTO_PATCH_FRACTION)), res, rng)
        s = self.shards[item]
        image = Image.open(io.BytesIO(s.read(s.image))).convert("RGB")
        mask = Image.open(io.BytesIO(s.read(s.mask))).convert("L") if s.mask else None
        return crop_square(image, int(round(side * s.density)), res, rng, mask)


def find_backgrounds(folder: str | os.PathLike | None) -> Backgrounds | None:
    """Backgrounds from FOLDER: its aligned shards' upper-body samples when it holds shards, else
    its photos. None without a folder (the procedural fabric is used)."""
    if folder is None:
        return None
    import tarfile

    from mst_pipeline.shards.writer import complete_shards

    folder = Path(folder)
    if folder.is_dir() and complete_shards(folder):
        shards: dict[str, ShardBackground] = {}
        kinds: set[str] = set()
        for shard in complete_shards(folder):
            # One pass over the tar: every member's place, and the samples' meta records.
            members: dict[str, tuple[int, int]] = {}
            metas: list[tuple[str, dict[str, Any]]] = []
            try:
                with tarfile.open(shard, "r:") as tar:
                    for m in tar:
                        if not m.isfile():
                            continue
                        members[m.name] = (m.offset_data, m.size)
                        if m.name.endswith(".meta.json"):
                            metas.append((m.name[: -len(".meta.json")], json.loads(tar.extractfile(m).read())))
            except (tarfile.TarError, OSError, ValueError) as e:
                raise ValueError(f"{shard}: unreadable shard ({e})") from None
            for key, meta in metas:
                kinds.add(str(meta.get("kind")))
                image = members.get(f"{key}.img.{meta.get('image')}")
                if meta.get("kind") in BACKGROUND_KINDS and image is not None:
                    mask = members.get(f"{key}.mask.png") if meta.get("has_mask") else None
                    shards[f"{shard}#{key}"] = ShardBackground(shard, image, mask, float(meta["density"]))
        if not shards:
            raise ValueError(f"the shards of {folder} hold no {'/'.join(BACKGROUND_KINDS)} samples to use as "
                             f"backgrounds (kinds found: {', '.join(sorted(kinds)) or 'none'})")
        return Backgrounds(sorted(shards), shards)
    return Backgrounds([str(p) for p in list_photos(folder)])


def composite(rgba: np.ndarray, background: np.ndarray,
              real: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Straight-alpha RGBA uint8 over an RGB uint8 background -> (image uint8 [h,w,3], mask uint8).

    The mask marks the pixels that count as real training data: the hand, and where REAL (uint8,
    255 = a real photo's pixel) is given, the background too. Without REAL (a generated
    background) the mask is the hand's alpha.
    """
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    out = rgba[..., :3].astype(np.float64) * alpha + background.astype(np.float64) * (1 - alpha)
    mask = rgba[..., 3].copy() if real is None else np.maximum(rgba[..., 3], real)
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


def background_name(item: str | None) -> str:
    """How the meta names a background item: "fabric", a photo's file name or a shard sample's key."""
    if not item:
        return "fabric"
    shard, _, key = item.partition("#")
    return key if key else Path(shard).name
