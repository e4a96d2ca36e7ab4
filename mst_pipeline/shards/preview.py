"""`mst preview`: a contact sheet of samples warped into the full-body canvas through their H."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mst_pipeline.shards.writer import ShardError, complete_shards, read_shard
from uh_train.format.atomic import atomic_path
from uh_train.format.geometry import warp_to_canvas

LABEL_HEIGHT = 14


def silhouette(size: int) -> np.ndarray:
    """A faint reference person in full-body space (float [size, size] in [0, 1]).

    Proportions of the built-in default space: head top near y=0.04, feet near y=0.96, body in the
    central strip.
    """
    ss = 2
    img = Image.new("L", (size * ss, size * ss), 0)
    d = ImageDraw.Draw(img)
    s = size * ss

    def cap(a, b, r):
        d.line([(a[0] * s, a[1] * s), (b[0] * s, b[1] * s)], fill=255, width=int(2 * r * s))
        for p in (a, b):
            d.ellipse([(p[0] - r) * s, (p[1] - r) * s, (p[0] + r) * s, (p[1] + r) * s], fill=255)

    d.ellipse([0.45 * s, 0.04 * s, 0.55 * s, 0.155 * s], fill=255)  # head
    cap((0.5, 0.15), (0.5, 0.2), 0.02)  # neck
    d.polygon([(0.39 * s, 0.2 * s), (0.61 * s, 0.2 * s), (0.58 * s, 0.53 * s), (0.42 * s, 0.53 * s)], fill=255)
    for sign in (-1, 1):
        sh, el, wr = (0.5 + sign * 0.11, 0.21), (0.5 + sign * 0.16, 0.36), (0.5 + sign * 0.19, 0.5)
        cap(sh, el, 0.025)
        cap(el, wr, 0.022)
        hip, kn, an = (0.5 + sign * 0.06, 0.53), (0.5 + sign * 0.07, 0.74), (0.5 + sign * 0.075, 0.94)
        cap(hip, kn, 0.033)
        cap(kn, an, 0.028)
    img = img.filter(ImageFilter.GaussianBlur(ss)).resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def pick_samples(folder: Path, n: int, seed: int) -> list[tuple[str, dict[str, bytes]]]:
    """Up to n samples spread evenly over sources (round-robin), reading shards in order."""
    by_source: dict[str, list[tuple[str, dict[str, bytes]]]] = defaultdict(list)
    per_source_cap = max(n, 1)
    shards = complete_shards(folder)
    if not shards:
        raise ShardError(f"no shards in {folder}")
    for shard in shards:
        source = shard.name.rsplit("-", 2)[0]
        if len(by_source[source]) >= per_source_cap:
            continue
        for key, fields in read_shard(shard):
            by_source[source].append((key, fields))
            if len(by_source[source]) >= per_source_cap:
                break
    rng = np.random.default_rng(seed)
    for items in by_source.values():
        rng.shuffle(items)
    picked: list[tuple[str, dict[str, bytes]]] = []
    sources = sorted(by_source)
    while len(picked) < n and any(by_source[s] for s in sources):
        for s in sources:
            if by_source[s] and len(picked) < n:
                picked.append(by_source[s].pop())
    return picked


def render_tile(fields: dict[str, bytes], tile: int, base: np.ndarray) -> np.ndarray:
    meta = json.loads(fields["meta.json"])
    image_field = "img.jpg" if "img.jpg" in fields else "img.png"
    image = np.asarray(Image.open(io.BytesIO(fields[image_field])).convert("RGB"))
    mask = np.asarray(Image.open(io.BytesIO(fields["mask.png"])).convert("L")) if "mask.png" in fields else None
    H = np.asarray(meta["H"], dtype=np.float64)
    # Prefilter strong minification (a 2048 px crop into a 192 px tile) so the sheet does not alias.
    scale = float(meta.get("density", tile)) / tile
    if scale > 2:
        factor = int(scale // 1.5)
        h, w = image.shape[:2]
        small = Image.fromarray(image).reduce(factor)
        image = np.asarray(small)
        H = H @ np.diag([w / small.width, h / small.height, 1.0])
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize(small.size, Image.Resampling.BOX))
    canvas, alpha = warp_to_canvas(image, H, tile, mask)
    out = base[..., None] * (1 - alpha[..., None]) + canvas * alpha[..., None]
    # outline the sample's region
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    region = np.asarray(meta["region"], dtype=np.float64) * tile
    d.polygon([tuple(p) for p in region], outline=(220, 60, 60))
    kp = (meta.get("keypoints") or {}).get("body")
    if kp is not None:
        for x, y, c in np.asarray(kp):
            if c > 0.3:
                d.ellipse([x * tile - 1.5, y * tile - 1.5, x * tile + 1.5, y * tile + 1.5], fill=(40, 90, 230))
    return np.asarray(img)


def make_contact_sheet(folder: str | Path, out: str | Path, n: int = 64, tile: int = 192, seed: int = 0) -> int:
    folder, out = Path(folder), Path(out)
    samples = pick_samples(folder, n, seed)
    sil = silhouette(tile)
    base = 245.0 - 50.0 * sil  # faint grey person on white
    cols = max(1, int(np.ceil(np.sqrt(len(samples)))))
    rows = max(1, int(np.ceil(len(samples) / cols)))
    sheet = Image.new("RGB", (cols * tile, rows * (tile + LABEL_HEIGHT)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (key, fields) in enumerate(samples):
        r, c = divmod(i, cols)
        x, y = c * tile, r * (tile + LABEL_HEIGHT)
        try:
            tile_img = render_tile(fields, tile, base)
        except Exception as e:  # a broken sample must not stop the sheet; show why instead
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=(200, 200, 200))
            draw.text((x + 4, y + tile // 2), f"unreadable: {type(e).__name__}", fill=(180, 0, 0))
        else:
            sheet.paste(Image.fromarray(tile_img), (x, y))
        draw.text((x + 2, y + tile), key[: tile // 6], fill=(0, 0, 0))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return len(samples)

