"""Full-body image space geometry, numpy only (the shard format's geometry: `shards/README.md`).

Full-body space is the unit square [0,1]^2, x right, y down. A homography H maps a sample's image
pixel coordinates (pixel centres at integer + 0.5) to full-body space. A window of full-body space
is a `PatchView(v, s)`: the square of side 1/s around v, whose transform is the paper's T(v,s)
(Eq. 4, `patch_transform`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Largest patch scale s of T(v,s): a patch shows at least 1/8 of full-body space's side. The trainer's
# patch sampler, the generator's scale normalisation and the patch metrics all take it from here.
SCALE_MAX = 8.0


def patch_transform(v: tuple[float, float] | np.ndarray, s: float) -> np.ndarray:
    """T(v,s) of paper Eq. 4: maps patch coordinates centred at 0 (unit side) to full-body space
    coordinates centred at 0. The patch covers the square of side 1/s around v."""
    vx, vy = float(v[0]), float(v[1])
    return np.array([[1.0 / s, 0.0, vx - 0.5], [0.0, 1.0 / s, vy - 0.5], [0.0, 0.0, 1.0]])


def scale_of(transform):
    """The scale s of T(v,s) (Eq. 4), decoded from one transform [3, 3] or a batch [..., 3, 3]
    (numpy or torch): s = 1 / T[0, 0]."""
    return 1.0 / transform[..., 0, 0]


@dataclass(frozen=True)
class PatchView:
    """A window of full-body space: the square of side 1/s around the centre v = (vx, vy); s = 1
    with v = (0.5, 0.5) is the whole square. The one place that turns (v, s) into a transform, a
    square, a pixel grid's homography or the tiles of a larger render."""

    v: tuple[float, float]
    s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "v", (float(self.v[0]), float(self.v[1])))
        object.__setattr__(self, "s", float(self.s))

    @classmethod
    def of(cls, transform: np.ndarray) -> PatchView:
        """The view whose T(v,s) is `transform` [3, 3]."""
        T = np.asarray(transform, dtype=np.float64)
        return cls((T[0, 2] + 0.5, T[1, 2] + 0.5), scale_of(T))

    @property
    def half(self) -> float:
        """Half the square's side, 0.5 / s."""
        return 0.5 / self.s

    @property
    def centre(self) -> np.ndarray:
        return np.array(self.v)

    def transform(self) -> np.ndarray:
        """T(v,s) of Eq. 4 [3, 3] float64."""
        return patch_transform(self.v, self.s)

    def inverse(self) -> np.ndarray:
        """T(v,s)^-1: full-body coordinates centred at 0 -> patch coordinates centred at 0."""
        vx, vy = self.v
        return np.array([[self.s, 0.0, -self.s * (vx - 0.5)], [0.0, self.s, -self.s * (vy - 0.5)],
                         [0.0, 0.0, 1.0]])

    def square(self) -> np.ndarray:
        """(x0, y0, x1, y1): the square v -+ 0.5/s in full-body space."""
        half = self.half
        return np.array([self.v[0] - half, self.v[1] - half, self.v[0] + half, self.v[1] + half])

    def inside(self, box=(0.0, 0.0, 1.0, 1.0), tol: float = 0.0) -> bool:
        """Whether the square lies inside box (x0, y0, x1, y1), up to tol."""
        x0, y0, x1, y1 = self.square()
        return bool(x0 >= box[0] - tol and y0 >= box[1] - tol and x1 <= box[2] + tol and y1 <= box[3] + tol)

    def fraction_inside(self, box) -> float:
        """The fraction of the square's area that lies inside box (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = self.square()
        w = min(box[2], x1) - max(box[0], x0)
        h = min(box[3], y1) - max(box[1], y0)
        return max(w, 0.0) * max(h, 0.0) * self.s * self.s

    def moved_inside(self, box) -> PatchView:
        """The view moved the least so that its square lies inside box (x0, y0, x1, y1); centred
        on the box along an axis where the box is smaller than the square."""
        box = np.asarray(box, dtype=np.float64)
        half = self.half
        lo, hi = box[:2] + half, box[2:] - half
        return PatchView(np.where(lo <= hi, np.clip(self.centre, lo, hi), (box[:2] + box[2:]) / 2), self.s)

    def homography(self, size: int) -> np.ndarray:
        """H of a size x size pixel grid that covers the square (pixel centres at integer + 0.5)."""
        x0, y0, _, _ = self.square()
        return square_homography(x0, y0, 2 * self.half, size)

    def tiles(self, k: int, block: int = 1) -> list[tuple[int, int, PatchView]]:
        """The k x k tiles that cover the square, each rendered at r px (scale k * s), grouped into
        block x block blocks: (block row, block column, view), row-major. The view has the block's
        centre and the tiles' scale k * s (a generator renders it on a canvas of block x block tiles).
        Block centres lie on multiples of 1/(k s) from the square's corner, so every block's pixel
        grid is a sub-grid of the one-pass grid of the whole square."""
        tile_scale = k * self.s
        x0, y0 = self.v[0] - self.half, self.v[1] - self.half
        n = k // block
        return [(bi, bj, PatchView((x0 + (bj + 0.5) * block / tile_scale, y0 + (bi + 0.5) * block / tile_scale),
                                   tile_scale))
                for bi in range(n) for bj in range(n)]


def square_homography(x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """H of a size x size pixel image that covers the square of full-body space with corner (x0, y0)
    and the given side (a `PatchView`'s homography, for squares chosen by their corner)."""
    return scale_translate(side / size, side / size, x0, y0)


def apply_homography(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points [..., 2] through the 3x3 homography H."""
    pts = np.asarray(points, dtype=np.float64)
    homog = pts @ H[:, :2].T + H[:, 2]
    return homog[..., :2] / homog[..., 2:3]


def scale_translate(sx: float, sy: float, tx: float, ty: float) -> np.ndarray:
    """The homography x' = sx*x + tx, y' = sy*y + ty."""
    return np.array([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]])


def full_image_homography(width: int, height: int) -> np.ndarray:
    """H of a full-body image: the image, padded left/right (or top/bottom) to a square, covers the
    unit square with the person centred (a 1024x512 SHHQ portrait lands in x in [0.25, 0.75])."""
    side = float(max(width, height))
    return scale_translate(1 / side, 1 / side, (side - width) / (2 * side), (side - height) / (2 * side))


def image_region(H: np.ndarray, width: int, height: int) -> np.ndarray:
    """Polygon [4, 2] in full-body space covered by an image of the given size (its outer corners)."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    return apply_homography(H, corners)


def density(H: np.ndarray, width: int, height: int) -> float:
    """Source pixels per full-body unit length, measured at the image centre (geometric mean of the
    local scale along x and y). A 256 px full-body image has density 256."""
    c = np.array([width / 2.0, height / 2.0])
    jac = _jacobian(H, c)
    area_scale = abs(float(np.linalg.det(jac)))  # full-body area per source pixel
    return float(1.0 / np.sqrt(area_scale))


def _jacobian(H: np.ndarray, p: np.ndarray) -> np.ndarray:
    x, y = float(p[0]), float(p[1])
    num = H[:2, :2] * 1.0
    w = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    u = H[:2, 0] * x + H[:2, 1] * y + H[:2, 2]
    return (num * w - np.outer(u, H[2, :2])) / (w * w)


def warp_to_canvas(
    image: np.ndarray, H: np.ndarray, size: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Resample `image` [h, w, C] into a size x size view of full-body space through H.

    Returns (canvas float32 [size, size, C], alpha float32 [size, size]) where alpha is 1 where the
    image (and its mask) has pixels. Bilinear sampling; the caller prefilters when minifying strongly.
    """
    h, w = image.shape[:2]
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    gx, gy = np.meshgrid(centres, centres)
    src = apply_homography(np.linalg.inv(H), np.stack([gx, gy], axis=-1))
    # Pixel-centre convention: continuous coordinate c samples pixel index c - 0.5.
    sx, sy = src[..., 0] - 0.5, src[..., 1] - 0.5
    inside = (sx > -0.5) & (sx < w - 0.5) & (sy > -0.5) & (sy < h - 0.5)
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    canvas = bilinear_sample(img, sx, sy)
    alpha = inside.astype(np.float32)
    if mask is not None:
        alpha *= bilinear_sample(mask.astype(np.float32)[..., None] / 255.0, sx, sy)[..., 0]
    return canvas, alpha


def bilinear_sample(img: np.ndarray, sx: np.ndarray, sy: np.ndarray, read=None) -> np.ndarray:
    """Sample img [h, w, C] at pixel-index coordinates (sx, sy) (clamped at the border).
    `read(y, x)` returns the pixels at integer indices (default: `img[y, x]`); a caller can convert
    only the pixels it reads instead of the whole image."""
    h, w = img.shape[:2]
    if read is None:
        def read(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
            return img[yy, xx]
    sx = np.clip(sx, 0, w - 1)
    sy = np.clip(sy, 0, h - 1)
    x0 = np.floor(sx).astype(np.intp)
    y0 = np.floor(sy).astype(np.intp)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (sx - x0)[..., None].astype(np.float32)
    fy = (sy - y0)[..., None].astype(np.float32)
    top = read(y0, x0) * (1 - fx) + read(y0, x1) * fx
    bottom = read(y1, x0) * (1 - fx) + read(y1, x1) * fx
    return top * (1 - fy) + bottom * fy
