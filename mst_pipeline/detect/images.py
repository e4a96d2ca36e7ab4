"""Input images of the MST steps: finding them, reading them, and why one is rejected.

`list_images` is the one lister (`mst align`, `mst space`, `mst derive-sr`, and the photo folders
of `mst render-hands`), `sample_stems` the one naming of their samples, `read_image_and_alpha` the
one decoder (every mode kept: `uh_train.format.image.image_pixels`); a file that cannot be used
raises `Rejected` with the reason that goes to rejects.jsonl (`mst_pipeline.shards.rejects`).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from uh_train.format.spec import file_stem

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
MAX_PIXELS = 1 << 27  # 134 M pixels (16384 x 8192): larger "images" are decompression bombs, not photos


class Rejected(Exception):
    """An input image that cannot be used; the message is the reason written to rejects.jsonl."""


def list_images(root: Path, part: tuple[int, int] = (0, 1), exts: tuple[str, ...] = IMAGE_EXTS) -> list[Path]:
    """Images under ROOT (files with a suffix in EXTS, sorted), the k-th of n disjoint slices by a
    stable hash of their relative paths."""
    k, n = part
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"part must be k/n with 0 <= k < n, got {k}/{n}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    return [p for p in files if zlib.crc32(p.relative_to(root).as_posix().encode()) % n == k]


def stem_of(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def sample_stems(files: list[Path], root: Path) -> dict[Path, str]:
    """The sample key stem of each file under ROOT (`uh_train.format.spec.file_stem`): any name gives
    one. Where several files map to one stem (`dup.jpg`/`dup.png`, `a.b.png`/`a-b.png`,
    `sub/x.png`/`sub_x.png`), the first in sorted order keeps it and the others get their path's hash
    suffix. FILES must be the whole folder, not one --part slice, so every slice names alike."""
    taken: set[str] = set()
    out = {}
    for path in sorted(files):
        stem = file_stem(stem_of(path, root))
        if stem in taken:
            stem = file_stem(stem_of(path, root), distinct=True)
        taken.add(stem)
        out[path] = stem
    return out


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [h, w, 3] of `read_image_and_alpha`, transparent pixels composited over white."""
    return read_image_and_alpha(path)[0]


def read_image_and_alpha(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 [h, w, 3], alpha uint8 [h, w] or None) with EXIF orientation applied; Rejected for
    any file that cannot be read. Every mode keeps its information: 16-bit grey is rescaled, not
    clipped; palette and CMYK are converted exactly; transparency is composited over white and
    returned as the alpha (None when every pixel is opaque), which becomes the sample's mask.

    The size is checked from the header before any pixel is decoded; a corrupt EXIF block (which
    Pillow may fail on with any exception type) only loses the rotation, never the image.
    """
    import warnings

    from PIL import Image, ImageOps

    from uh_train.format.image import image_pixels

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below applies
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise Rejected(f"image too large ({w}x{h} pixels, at most {MAX_PIXELS} pixels)")
                try:
                    upright = ImageOps.exif_transpose(im)
                except Exception:  # noqa: BLE001 - a corrupt EXIF block: keep the image as stored
                    upright = im
                upright.load()
                arr, alpha = image_pixels(upright)
    except Rejected:
        raise
    except Image.DecompressionBombError as e:
        raise Rejected(f"image too large ({e})") from None
    except Exception as e:  # noqa: BLE001 - any failure to decode one file is that file's reject reason
        raise Rejected(f"unreadable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if arr.ndim != 3 or arr.shape[0] < 8 or arr.shape[1] < 8:
        raise Rejected(f"image too small ({arr.shape[1]}x{arr.shape[0]})")
    return arr, alpha


def aligned_shape_defect(width: int, height: int) -> str | None:
    """Why an image of this size cannot be an aligned full-body image, or None.

    The padded-identity H maps the longer side onto full-body space's [0, 1]. For a portrait or
    square image that is the height, so head to feet span y in [0, 1] as in the space; a landscape
    image would be shrunk into a horizontal band.
    """
    if width > height:
        return (f"landscape image ({width}x{height}) in an aligned full-body set: its height would not span "
                "full-body space; crop it to a portrait or align it without --aligned (SMPLify-P)")
    return None
