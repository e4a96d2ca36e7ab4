"""Opening a sample's image (or mask) file within the spec's bounds: the size in the file header is
checked against `meta.json` and `spec.MAX_IMAGE_PIXELS` before any pixel is decoded, so a huge image
declared small costs nothing. The trainer's reader and `mst validate` both open images this way."""

from __future__ import annotations

import io
import warnings
from typing import Any

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
