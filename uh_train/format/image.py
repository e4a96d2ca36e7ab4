"""Opening a sample's image (or mask) file within the spec's bounds: the size in the file header is
checked against `meta.json` and `spec.MAX_IMAGE_PIXELS` before any pixel is decoded, so a huge image
declared small costs nothing. The trainer's reader and `mst validate` both open images this way.

`image_pixels` is the one conversion of a decoded image of any mode to 8-bit RGB (and its alpha):
the shard reader uses it on samples, `mst` on input photos."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image

from uh_train.format.spec import MAX_IMAGE_PIXELS


class SampleDefect(ValueError):
    """A sample the trainer cannot use; `reasons` are the defects, without the key."""

    def __init__(self, key: Any, reasons: list[str]) -> None:
        super().__init__(f"{key}: " + "; ".join(reasons))
        self.key, self.reasons = key, reasons


def open_image(data: bytes, what: str, width: Any, height: Any) -> Image.Image:
    """Open an image file's header and check its size against the declared one (and the spec's
    pixel bound) before any pixel is decoded, so a huge image declared small costs nothing."""
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types for corrupt data
        raise SampleDefect("-", [f"{what} does not decode ({type(e).__name__}: {e})"]) from None
    w, h = img.size
    if (w, h) != (width, height):
        raise SampleDefect("-", [f"{what} is {w}x{h}, meta records {width}x{height}"])
    if w * h > MAX_IMAGE_PIXELS:
        raise SampleDefect("-", [f"{what} has {w * h} pixels, more than {MAX_IMAGE_PIXELS}"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except Exception as e:
        raise SampleDefect("-", [f"{what} does not decode ({type(e).__name__}: {e})"]) from None
    return img


GREY16_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def grey8(img: Image.Image) -> np.ndarray:
    """uint8 [h, w] of a grey image of any bit depth (16-bit grey rescaled, not clipped to white)."""
    if img.mode in GREY16_MODES:
        arr = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    return np.asarray(img.convert("L"))


def image_pixels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 RGB [h, w, 3], uint8 alpha [h, w] or None) of an image in any mode a JPEG or PNG can
    hold: grey of 1, 8 or 16 bits, palette (with transparency), CMYK, with or without alpha.
    Transparent pixels are composited over the padding white; the alpha is returned so that they
    do not count as real."""
    alpha = None
    if img.mode in GREY16_MODES:
        return np.repeat(grey8(img)[..., None], 3, axis=2), None
    if "transparency" in img.info and img.mode in ("1", "L", "RGB", "P") or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(img.getchannel("A"))
    rgb = np.asarray(img.convert("RGB"))
    if alpha is None or alpha.min() == 255:
        return rgb, None
    a = alpha[..., None].astype(np.float32) / 255.0
    rgb = np.round(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return rgb, alpha
