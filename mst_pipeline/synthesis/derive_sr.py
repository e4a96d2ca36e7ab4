"""`mst derive-sr`: the super-resolved lower-body source of paper Tab. 2 (SHHQ^SR).

The paper supplements the lower body with the lower halves of its HR full-body images, up-sampled
2×. Each full-body sample's lower half (rows h//2 .. h of its image) is up-sampled by 2 and
written as a `lower`, tier `SR` sample whose H is exact, no fitting: the HR sample's H composed
with the crop and the up-sampling (`lower_half_sr`). Its density is twice the HR sample's.

Input is either
* a shard folder (e.g. the output of `mst align shhq/ --aligned --tier HR`): every `full` sample
  (of the sources named with `sources`), with its H, keypoints and origin; or
* a folder of aligned full-body images (as for `mst align --aligned`): H is the padded identity,
  no keypoints are stored.

Samples of input source NAME go to source NAME_sr. Resumable (done keys are skipped before any
image is decoded), atomic (`ShardWriter`), failures go to OUT/rejects.jsonl.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mst_pipeline.detect.images import Rejected, aligned_shape_defect, list_images, read_image_and_alpha, sample_stems
from mst_pipeline.shards.rejects import reject_file
from mst_pipeline.shards.validate import check_sample
from mst_pipeline.shards.writer import (
    ShardError,
    ShardWriter,
    complete_shards,
    encode_sample,
    read_shard,
    write_manifest,
)
from uh_train.format.geometry import density, full_image_homography, image_region, scale_translate
from uh_train.format.manifest import read_manifest
from uh_train.format.spec import loads_meta, make_key, region_bbox, sanitise_part, sha256_file

SR_FACTOR = 2  # paper Tab. 2: lower halves up-sampled 2×
RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}
SR_SUFFIX = "_sr"


def lower_half_sr(image: np.ndarray, H: np.ndarray, factor: int = SR_FACTOR, resample: str = "lanczos",
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The lower half of IMAGE [h, w, 3] (rows h//2 .. h) up-sampled FACTOR×, and its exact H.

    An SR pixel coordinate p is the crop coordinate p / factor (the resize keeps the image's outer
    edges), i.e. the source coordinate (x / factor, y / factor + h//2); so H_sr = H · translate(0, h//2) ·
    scale(1/factor). Returns (image [factor·(h − h//2), factor·w, 3], H_sr [3, 3], mask or None;
    the mask is resized by nearest neighbour).
    """
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, not {resample!r}")
    h, w = image.shape[:2]
    top = h // 2
    size = (w * factor, (h - top) * factor)
    sr = np.asarray(Image.fromarray(np.ascontiguousarray(image[top:])).resize(size, RESAMPLE[resample]))
    H_sr = np.asarray(H, dtype=np.float64) @ scale_translate(1.0 / factor, 1.0 / factor, 0.0, float(top))
    sr_mask = None
    if mask is not None:
        sr_mask = np.asarray(Image.fromarray(np.ascontiguousarray(mask[top:])).resize(size, Image.Resampling.NEAREST))
    return sr, H_sr, sr_mask


def keypoints_inside(keypoints: dict[str, Any] | None, region: np.ndarray) -> dict[str, Any] | None:
    """Keypoints (full-body space) with the points outside REGION's box set to (0, 0, 0), as points
    an image does not show are stored."""
    if keypoints is None:
        return None
    x0, y0, x1, y1 = region_bbox(region)
    out = {}
    for group, rows in keypoints.items():
        arr = np.asarray(rows, dtype=np.float64).copy()
        outside = (arr[:, 0] < x0) | (arr[:, 0] > x1) | (arr[:, 1] < y0) | (arr[:, 1] > y1)
        arr[outside] = 0.0
        out[group] = arr
    return out


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _HRSample:
    source: str  # the input source
    stem: str
    ref: str  # the input's key (shards) or relative path (image folder)
    # (image, mask, orig, H or None for the padded identity of an aligned image, keypoints); may raise Rejected
    load: Callable[[], tuple[np.ndarray, np.ndarray | None, dict[str, Any], np.ndarray | None, dict | None]]


def _decode(data: bytes, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB") if what == "image" else im)
    except (OSError, ValueError) as e:
        raise Rejected(f"unreadable {what} in the shard ({type(e).__name__}: {e})") from None


def _shard_inputs(folder: Path, sources: set[str] | None) -> Iterator[_HRSample]:
    """The `full` samples of a shard folder, in shard order; unreadable shards are passed over
    (`mst validate` reports them). A sample is checked as `mst validate` checks it when it is
    loaded: an invalid one is a reject with its defects, never the start of a sample that validates."""
    for shard in complete_shards(folder):
        try:
            for key, fields in read_shard(shard):
                try:
                    meta = loads_meta(fields["meta.json"])
                except (KeyError, ValueError):
                    meta = None
                if not isinstance(meta, dict) or meta.get("kind") != "full" or (
                        sources is not None and meta.get("source") not in sources):
                    continue
                source = meta.get("source") if isinstance(meta.get("source"), str) else key.split("/")[0]

                def load(key=key, fields=fields):
                    checked, defects = check_sample(key, fields)
                    if defects:
                        raise Rejected("invalid input sample (" + "; ".join(defects) + ")")
                    assert checked is not None
                    img, mask = fields.get("img.png") or fields.get("img.jpg"), fields.get("mask.png")
                    return _decode(img, "image"), (_decode(mask, "mask") if mask is not None else None), \
                        checked["orig"], np.asarray(checked["H"], dtype=np.float64), checked.get("keypoints")

                yield _HRSample(source, key.split("/", 1)[-1], key, load)
        except ShardError:
            continue


def _folder_inputs(folder: Path, source: str) -> Iterator[_HRSample]:
    """The images of an aligned full-body folder, in file order, named as `mst align` names them."""
    files = list_images(folder)
    stems = sample_stems(files, folder)
    for path in files:
        rel = path.relative_to(folder).as_posix()

        def load(path=path, rel=rel):
            image, alpha = read_image_and_alpha(path)
            h, w = image.shape[:2]
            if (defect := aligned_shape_defect(w, h)) is not None:
                raise Rejected(defect)
            return image, alpha, {"path": rel, "sha256": sha256_file(path), "width": w, "height": h}, None, None

        yield _HRSample(source, stems[path], rel, load)


def _count_inputs(folder: Path, sources: set[str] | None) -> int | None:
    """How many full-body samples the shard folder's manifest lists (None without a manifest)."""
    try:
        table = read_manifest(folder)
    except Exception:  # noqa: BLE001 - a damaged manifest only costs the progress total
        return None
    if table is None:
        return None
    return sum(1 for row in table.select(["kind", "source"]).to_pylist()
               if row["kind"] == "full" and (sources is None or row["source"] in sources))


# ---------------------------------------------------------------------------------------------
# The command


@dataclass
class DeriveSummary:
    written: int = 0
    skipped: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)  # written per output source
    seconds: float = 0.0


def derive_sr(inp: str | os.PathLike, out: str | os.PathLike, *, sources: list[str] | None = None,
              source: str | None = None, limit: int | None = None, resample: str = "lanczos",
              image_format: str = "png", max_count: int = 1000,
              progress: Callable[[int, int | None], None] | None = None) -> DeriveSummary:
    """Write the SR lower halves of INP's full-body samples into shards in OUT (module docstring).

    sources: input sources to use (shard input); source: the input's source name (image-folder
    input; default the folder's name); limit: use only the first N full-body inputs (in shard or
    file order), e.g. 5K of 10K as in the paper.
    """
    inp, out = Path(inp), Path(out)
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, not {resample!r}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image format must be png or jpg, not {image_format!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if not inp.is_dir():
        raise ValueError(f"{inp} is not a folder (give HR full-body shards or a folder of aligned images)")
    wanted = set(sources) if sources else None
    if complete_shards(inp):
        if source is not None:
            raise ValueError("--source names an image folder's source; shards carry their own (use --from)")
        inputs, total = _shard_inputs(inp, wanted), _count_inputs(inp, wanted)
    elif list_images(inp):
        if wanted is not None:
            raise ValueError("--from selects sources of a shard folder; an image folder is one source (use --source)")
        inputs, total = _folder_inputs(inp, sanitise_part(source or inp.resolve().name)), len(list_images(inp))
    else:
        raise ValueError(f"{inp} holds neither shards (*.tar) nor images: nothing to derive from")
    if limit is not None and total is not None:
        total = min(total, limit)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = DeriveSummary()
    done = 0
    if progress:
        progress(done, total)
    with contextlib.ExitStack() as stack:
        writers: dict[str, ShardWriter] = {}
        for hr in inputs:
            if limit is not None and done >= limit:
                break
            name = sanitise_part(hr.source + SR_SUFFIX)
            if name not in writers:
                writers[name] = stack.enter_context(ShardWriter(out, name, max_count=max_count,
                                                                update_manifest=False))
            writer = writers[name]
            key = make_key(name, hr.stem)
            if writer.has(key):
                summary.skipped += 1
            else:
                try:
                    writer.write(_sr_sample(hr, name, resample, image_format))
                    summary.written += 1
                    summary.sources[name] += 1
                except Rejected as e:
                    reject_file(out, key, Path(hr.ref), str(e), summary)
            done += 1
            if progress:
                progress(done, total)
    write_manifest(out)
    summary.seconds = time.perf_counter() - start
    return summary


def _sr_sample(hr: _HRSample, name: str, resample: str, image_format: str):
    """The SR sample of one HR full-body input (Rejected when it cannot be read)."""
    image, mask, orig, H, keypoints = hr.load()
    h, w = image.shape[:2]
    if h < 2:
        raise Rejected(f"image too small to halve ({w}x{h})")
    H = H if H is not None else full_image_homography(w, h)
    sr, H_sr, sr_mask = lower_half_sr(image, H, SR_FACTOR, resample, mask)
    height, width = sr.shape[:2]
    region = image_region(H_sr, width, height)
    fields: dict[str, Any] = {
        "kind": "lower", "tier": "SR", "H": H_sr, "region": region, "density": density(H_sr, width, height),
        "keypoints": keypoints_inside(keypoints, region), "smpl": None, "fit": None, "orig": orig,
        "derived": {"from": hr.ref, "rows": [h // 2, h], "factor": SR_FACTOR, "resample": resample},
    }
    try:
        return encode_sample(name, hr.stem, sr, fields, mask=sr_mask, ext=image_format)
    except ValueError as e:
        raise Rejected(f"invalid sample ({e})") from None
