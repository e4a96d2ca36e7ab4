"""Full-body image space of the MST (paper §3.1, Eq. 2; docs/mst.md, "Geometry"): pure geometry.

A sample's image is described by a weak-perspective camera α = (s, tx, ty) in its *normalised*
coordinates: the square of side L = max(width, height) centred on the image, mapped to [-1, 1]²
(so a 1024×512 portrait padded to a square is exactly the full-body training image). A model
point X lands at u = s · (X_xy + t).

The full-body dataset has an average camera ᾱ = (s̄, t̄x, t̄y). The same body seen through ᾱ lands
at u_full = (s̄/s) · u + s̄ · (t̄ − t), which is a scale + translation of the image: the homography
H(α, ᾱ) of Eq. 2, conjugated by the pixel ↔ normalised maps of both sides. Full-body space is the
unit square, x = (u_full + 1) / 2.

`FullBodySpace` is what `mst space` writes (ᾱ, the mean pitch ô of the global orientation with
its spread over the set, the fitted poses for `mst fit-prior`, the full-body set's density);
`default_space` is the built-in space of the SHHQ layout used when no space file is given.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uh_train.format.atomic import atomic_write, atomic_write_text
from uh_train.format.geometry import apply_homography, density, image_region, scale_translate

# SHHQ layout of the built-in space: head top and feet of the mean body, in full-body y.
DEFAULT_HEAD_TOP, DEFAULT_FEET = 0.04, 0.96
# A 1024×512 SHHQ portrait padded to a square: 1024 source pixels per full-body unit.
DEFAULT_DENSITY = 1024.0
SPACE_FORMAT = "unitedhuman-space/1"


# ---------------------------------------------------------------------------------------------
# Pure geometry


def normalisation(width: int | float, height: int | float) -> np.ndarray:
    """3×3 map from image pixels to the image's normalised coordinates.

    The square of side L = max(width, height) centred on the image becomes [-1, 1]²:
    u = (p − (w/2, h/2)) · 2/L. Pixel centres sit at integer + 0.5 (docs/mst.md, "Geometry").
    """
    L = float(max(width, height))
    return scale_translate(2.0 / L, 2.0 / L, -float(width) / L, -float(height) / L)


# Normalised full-body coordinates [-1, 1]² -> full-body space [0, 1]².
FULL_FROM_NORMALISED = scale_translate(0.5, 0.5, 0.5, 0.5)


def camera_transfer(cam: np.ndarray, cam_bar: np.ndarray) -> np.ndarray:
    """3×3 map u_full = (s̄/s) · u + s̄ · (t̄ − t) between normalised coordinates (Eq. 2).

    cam, cam_bar: [3] as (s, tx, ty).
    """
    s, tx, ty = (float(c) for c in np.asarray(cam, dtype=np.float64).reshape(3))
    sb, tbx, tby = (float(c) for c in np.asarray(cam_bar, dtype=np.float64).reshape(3))
    if not (s > 0 and sb > 0 and all(math.isfinite(v) for v in (tx, ty, tbx, tby))):
        raise ValueError(f"camera scales must be positive and finite (s={s}, s̄={sb})")
    return scale_translate(sb / s, sb / s, sb * (tbx - tx), sb * (tby - ty))


def homography(cam: np.ndarray, cam_bar: np.ndarray, width: int, height: int) -> np.ndarray:
    """H(α, ᾱ) of paper Eq. 2: image pixels of a width×height image -> full-body space. [3, 3]."""
    return FULL_FROM_NORMALISED @ camera_transfer(cam, cam_bar) @ normalisation(width, height)


def crop_camera(cam_bar: Any, x0: float, y0: float, side: float) -> list[float]:
    """Weak-perspective camera α of an image whose normalised square shows the square
    [x0, x0+side] x [y0, y0+side] of full-body space (the inverse of `homography` for such a crop).

    From Eq. 2's u_full = (s̄/s) u + s̄ (t̄ − t): here s̄/s = side and s̄ (t̄ − t) = 2 (x0, y0) + side − 1.
    """
    s_bar, tx_bar, ty_bar = (float(c) for c in cam_bar)
    return [s_bar / side, tx_bar + (1 - 2 * x0 - side) / s_bar, ty_bar + (1 - 2 * y0 - side) / s_bar]


def pixels_to_normalised(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Image pixels [..., 2] -> normalised coordinates [..., 2]."""
    return apply_homography(normalisation(width, height), points)


def normalised_to_pixels(u: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised coordinates [..., 2] -> image pixels [..., 2]."""
    return apply_homography(np.linalg.inv(normalisation(width, height)), u)


def region_and_density(H: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """(polygon [4, 2] the image covers in full-body space, source pixels per full-body unit)."""
    return image_region(H, width, height), density(H, width, height)


def pitch_of_rotation(R: Any) -> Any:
    """Pitch o of a global orientation (paper Eq. 1's regulariser term), in radians; 0 for an
    upright person.

    R: [..., 3, 3] rotation model -> camera (numpy or torch). The camera frame has x right, y down
    (image rows) and z away from the camera (depth); the model's up axis is +Y, so an upright body
    has up = R[:, 1] = (0, −1, 0). o = atan2(up_z, −up_y): positive when the head is further from
    the camera than the feet, as a camera below the person's centre looking up sees them; negative
    when the head leans towards the camera, as a camera above looking down sees them. For a body
    turned by rot_x(π − o) (upright, facing the camera, then leaned), this returns o.
    """
    up_y, up_z = R[..., 1, 1], R[..., 2, 1]
    if isinstance(R, np.ndarray):
        return np.arctan2(up_z, -up_y)
    import torch

    return torch.atan2(up_z, -up_y)


def upright_orientation(facing: str = "front") -> np.ndarray:
    """Axis-angle [3] of an upright body facing the camera ("front") or turned away ("back")."""
    if facing == "front":
        return np.array([math.pi, 0.0, 0.0])
    if facing == "back":
        return np.array([0.0, 0.0, math.pi])  # rot_z(π) = rot_x(π) · rot_y(π)
    raise ValueError(f"facing must be 'front' or 'back', not {facing!r}")


# ---------------------------------------------------------------------------------------------
# The full-body space record


@dataclass
class FullBodySpace:
    """ᾱ = (s̄, t̄x, t̄y), the mean pitch ô (radians), the full-body set's density (source pixels per
    full-body unit) and optionally its fitted poses [N, 72] and betas [N, K] for `mst fit-prior`."""

    cam_bar: tuple[float, float, float]
    pitch: float = 0.0
    density: float = DEFAULT_DENSITY
    poses: np.ndarray | None = None
    betas: np.ndarray | None = None
    count: int = 0
    source: str = "default"
    # How ô was measured: {"from": "feet" | "pare" | ..., "count", "std", "p5" .. "p95"} (radians).
    pitch_spread: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def homography(self, cam: np.ndarray, width: int, height: int) -> np.ndarray:
        return homography(cam, np.asarray(self.cam_bar), width, height)

    def digest(self) -> str:
        """The space's identity in samples' meta (`aligned_with`): ᾱ, ô and density."""
        import hashlib

        text = json.dumps([[round(float(c), 10) for c in self.cam_bar], round(float(self.pitch), 10),
                           round(float(self.density), 6)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_full_body(self, points: np.ndarray) -> np.ndarray:
        """[..., 3] model points (after the global orientation) -> [..., 3]: full-body x, y and depth
        z, all in full-body units: p = (s̄ · (X_xy + t̄) + 1) / 2."""
        s, tx, ty = self.cam_bar
        p = np.asarray(points, dtype=np.float64)
        x = (s * (p[..., 0] + tx) + 1.0) / 2.0
        y = (s * (p[..., 1] + ty) + 1.0) / 2.0
        return np.stack([x, y, s * p[..., 2] / 2.0], axis=-1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (JSON) and, when poses are known, `path` with suffix .npz (pose, betas)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "format": SPACE_FORMAT, "cam_bar": [float(c) for c in self.cam_bar], "pitch": float(self.pitch),
            "density": float(self.density), "count": int(self.count), "source": self.source, **self.extra,
        }
        if self.pitch_spread is not None:
            record["pitch_spread"] = self.pitch_spread
        if self.poses is not None:
            poses_path = path.with_suffix(".npz")
            arrays = {"pose": np.asarray(self.poses, dtype=np.float32)}
            if self.betas is not None:
                arrays["betas"] = np.asarray(self.betas, dtype=np.float32)
            atomic_write(poses_path, lambda f: np.savez(f, **arrays))
            record["poses"] = poses_path.name
        atomic_write_text(path, json.dumps(record, indent=2))
        return path


def load_space(path: str | os.PathLike | None, model: Any = None) -> FullBodySpace:
    """Read `mst space`'s JSON (and its pose .npz when present), or an .npz with `cam_bar` and
    `pitch`; PATH None: the built-in `default_space` of MODEL."""
    if path is None:
        if model is None:
            raise ValueError("the built-in full-body space needs a body model")
        return default_space(model)
    path = Path(path)
    if path.suffix == ".npz":
        return _load_space_npz(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read full-body space {path}: {e}") from None
    if not isinstance(data, dict) or "cam_bar" not in data:
        raise ValueError(f"{path} has no 'cam_bar' (the full-body set's average camera s, tx, ty)")
    cam = np.asarray(data["cam_bar"], dtype=np.float64).reshape(3)
    if not (np.all(np.isfinite(cam)) and cam[0] > 0):
        raise ValueError(f"{path}: cam_bar {cam.tolist()} is not a valid camera (s > 0)")
    poses = betas = None
    if data.get("poses"):
        with np.load(path.parent / data["poses"], allow_pickle=False) as z:
            poses = z["pose"].astype(np.float64)
            betas = z["betas"].astype(np.float64) if "betas" in z.files else None
    known = {"format", "cam_bar", "pitch", "density", "count", "source", "poses", "pitch_spread"}
    spread = data.get("pitch_spread")  # absent in files written before ô was measured
    return FullBodySpace(
        cam_bar=(float(cam[0]), float(cam[1]), float(cam[2])), pitch=float(data.get("pitch", 0.0)),
        density=float(data.get("density", DEFAULT_DENSITY)), poses=poses, betas=betas,
        count=int(data.get("count", 0)), source=str(data.get("source", path.name)),
        pitch_spread=spread if isinstance(spread, dict) else None,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _load_space_npz(path: Path) -> FullBodySpace:
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if "cam_bar" not in data:
        raise ValueError(f"{path} has no 'cam_bar' (the full-body set's average camera s, tx, ty)")
    cam = [float(c) for c in np.asarray(data["cam_bar"], dtype=np.float64).reshape(3)]
    return FullBodySpace(cam_bar=(cam[0], cam[1], cam[2]), pitch=float(np.asarray(data.get("pitch", 0.0))))


def default_space(model: Any) -> FullBodySpace:
    """The built-in full-body space (SHHQ layout): the model's mean body, upright, facing the camera
    and at rest, centred horizontally with its head top at y = 0.04 and its feet at y = 0.96."""
    import torch

    with torch.no_grad():
        out = model(global_orient=torch.as_tensor(upright_orientation("front")[None], dtype=torch.float32))
    v = out.vertices[0].cpu().numpy().astype(np.float64)
    top, bottom = float(v[:, 1].min()), float(v[:, 1].max())
    s = 2 * (DEFAULT_FEET - DEFAULT_HEAD_TOP) / (bottom - top)
    tx = -0.5 * (float(v[:, 0].min()) + float(v[:, 0].max()))
    ty = (2 * DEFAULT_HEAD_TOP - 1) / s - top
    return FullBodySpace(cam_bar=(s, tx, ty), pitch=0.0, density=DEFAULT_DENSITY, source="default")
