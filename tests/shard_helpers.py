"""Builders for shard tests: valid samples with known values, and raw tars for corrupt variants."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.shards.writer import encode_image, encode_sample, write_manifest
from uh_train.format.geometry import density, full_image_homography, image_region
from uh_train.format.spec import FORMAT, KEYPOINT_GROUPS


def sample_fields(w: int = 16, h: int = 32, seed: int = 0, kind: str = "full") -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    H = full_image_homography(w, h)
    kp = {g: np.concatenate([rng.uniform(0, 1, (n, 2)), rng.uniform(0, 1, (n, 1))], axis=1)
          for g, n in KEYPOINT_GROUPS.items()}
    return {
        "kind": kind, "tier": "LR", "H": H, "region": image_region(H, w, h), "density": density(H, w, h),
        "keypoints": kp,
        "smpl": {"betas": rng.normal(size=10), "pose": rng.normal(size=72) * 0.1,
                 "cam": [0.9, 0.01, 0.2], "cam_bar": [0.9, 0.0, 0.2]},
        "fit": {"losses": {"visible": 0.01, "invisible": 0.002, "pitch": 0.0}, "visible": 12, "iterations": 40},
        "orig": {"path": f"people/{seed}.png", "sha256": hashlib.sha256(str(seed).encode()).hexdigest(),
                 "width": w, "height": h},
    }


def random_image(w: int = 16, h: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def valid_sample(source: str = "src", stem: str = "a", seed: int = 0, mask: bool = False):
    w, h = 16, 32
    m = (np.arange(w * h).reshape(h, w) % 2 * 255).astype(np.uint8) if mask else None
    return encode_sample(source, stem, random_image(w, h, seed), sample_fields(w, h, seed), mask=m, ext="png")


def valid_meta(key: str = "src/a", w: int = 16, h: int = 32) -> dict[str, Any]:
    meta = json.loads(json.dumps(sample_fields(w, h), default=lambda x: x.tolist()))
    meta.update(format=FORMAT, key=key, source=key.split("/")[0], image="png", width=w, height=h, has_mask=False)
    return meta


def write_raw_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar with exactly these members (names and bytes), bypassing the writer's checks."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def raw_sample(key: str = "src/a", meta: dict[str, Any] | None = None, image: bytes | None = None,
               w: int = 16, h: int = 32) -> list[tuple[str, bytes]]:
    meta = valid_meta(key, w, h) if meta is None else meta
    image = encode_image(random_image(w, h), "png") if image is None else image
    return [(f"{key}.img.png", image), (f"{key}.meta.json", json.dumps(meta).encode())]


def raw_folder(folder: Path, shards: dict[str, list[tuple[str, bytes]]], manifest: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, members in shards.items():
        write_raw_tar(folder / name, members)
    if manifest:
        write_manifest(folder)
    return folder
