"""The shard format `unitedhuman-shard/1`: the contract between `mst_pipeline` and `uh_train`.

`shards/README.md` is the prose specification; this module is its executable form. It depends on
numpy only, so `mst validate` runs without torch and the trainer reads shards without
`mst_pipeline`. Every check returns human-readable defect strings rather than raising, so a
validator can report all defects of a sample at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uh_train.format.geometry import density as density_of
from uh_train.format.geometry import full_image_homography, image_region

FORMAT = "unitedhuman-shard/1"
KINDS = ("full", "upper", "lower", "face", "hand")
TIERS = ("LR", "HR", "SR")
IMAGE_EXTS = ("jpg", "png")
# Keypoint groups stored in full-body space: name -> number of points (each x, y, confidence).
KEYPOINT_GROUPS = {"body": 25, "lhand": 21, "rhand": 21, "face": 70}
SMPL_SIZES = {"betas": 10, "pose": 72, "cam": 3, "cam_bar": 3}
# A region may extend beyond the unit square (a crop that includes background) but not absurdly.
REGION_BOUNDS = (-2.0, 3.0)
# `region` must equal H applied to the image corners within this many full-body units (0.1 px at
# density 1000), and `density` the density H implies within this relative tolerance.
REGION_TOLERANCE = 1e-4
DENSITY_TOLERANCE = 1e-3
# Plausible densities (source pixels per full-body unit): from a 1-px body to a 1-px fingernail.
DENSITY_RANGE = (1.0, 1e6)
# Largest image a sample may declare (pixels); readers refuse larger ones before decoding them.
MAX_IMAGE_PIXELS = 1 << 27
# A key part must fit the tar header: ustar stores `{source}/` in its 155-byte prefix and
# `{stem}.meta.json` (the longest member suffix, 10 bytes) in its 100-byte name field.
MAX_KEY_PART = 90
# Stems derived from file names stay this short, leaving room for a `-p{k}` person suffix.
DERIVED_STEM_CHARS = 80
# meta.json bounds: readers refuse larger, deeper or longer-numbered documents before building them
# (a 200,000-deep nesting overflows the parser's stack; a 5,000-digit integer exceeds Python's limit).
MAX_META_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 40
SHARD_NAME = re.compile(r"^(?P<source>[A-Za-z0-9_-]+)-(?P<part>\d{3})-(?P<index>\d{6})\.tar$")
# No dots inside key parts: WebDataset splits a member name at the first dot of its base name
# (`source/stem.img.jpg` -> key `source/stem`, field `img.jpg`), so a dot in a stem would break grouping.
_KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")


_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def shard_compression_defect(path: str | os.PathLike) -> str | None:
    """A shard is an uncompressed tar: None for one, else the one-line reason (a compressed file,
    which tar readers that guess the compression would otherwise accept)."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic):
            return (f"{os.path.basename(path)} is a {name}-compressed tar; a shard is an uncompressed tar: "
                    "decompress it under the same name")
    return None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (`orig.sha256`; also names checkpoint and feature files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_name(source: str, part: int, index: int) -> str:
    """File name of a shard: `{source}-{part:03d}-{index:06d}.tar`."""
    return f"{source}-{part:03d}-{index:06d}.tar"


def _map_to_key_alphabet(text: str) -> str:
    text = text.replace("\\", "/").strip("/").replace("/", "_")
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)


def sanitise_part(text: str) -> str:
    """Map a name the user chose (a source name) onto the key alphabet `[A-Za-z0-9_-]`.

    Path separators become `_`, dots and other characters `-`, so the result can never be `..`,
    absolute, or contain a second `/`. ValueError when nothing of the name is left or it is too long
    for a key part; stems of files use `file_stem`, which never fails.
    """
    text = _map_to_key_alphabet(text)
    if not text.strip("-_"):
        raise ValueError("cannot make a key part from an empty name")
    if len(text) > MAX_KEY_PART:
        raise ValueError(f"name is longer than {MAX_KEY_PART} characters")
    return text


def name_hash(text: str) -> str:
    """8 hex digits naming TEXT (a relative path), stable across runs and machines."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def file_stem(relative: str, distinct: bool = False) -> str:
    """The key stem of the file at RELATIVE path (suffix removed): its sanitised form, or, when that
    is empty, longer than DERIVED_STEM_CHARS or (DISTINCT) taken by another file, the sanitised
    head followed by `-{name_hash(relative)}`. Any file name gives a valid stem; `orig.path` keeps
    the name itself."""
    text = _map_to_key_alphabet(relative)
    if text.strip("-_") and len(text) <= DERIVED_STEM_CHARS and not distinct:
        return text
    head = text[:DERIVED_STEM_CHARS - 9].strip("-_")
    return f"{head}-{name_hash(relative)}" if head else name_hash(relative)


def make_key(source: str, stem: str) -> str:
    return f"{sanitise_part(source)}/{sanitise_part(stem)}"


def key_defects(key: str) -> list[str]:
    """Defects of a sample key `{source}/{stem}` (empty when the key is valid)."""
    if not isinstance(key, str) or not key:
        return ["key is empty"]
    if key.startswith("/"):
        return [f"key {key!r} is an absolute path"]
    parts = key.split("/")
    if ".." in parts:
        return [f"key {key!r} contains '..'"]
    if len(parts) != 2:
        return [f"key {key!r} must have exactly one '/' (source/stem), has {len(parts) - 1}"]
    out = []
    for part in parts:
        if part in ("", ".", ".."):
            out.append(f"key {key!r} has an empty, '.' or '..' part")
        elif not _KEY_PART.match(part):
            out.append(f"key {key!r} has characters outside [A-Za-z0-9_-]")
        elif len(part) > MAX_KEY_PART:
            out.append(f"key {_short(key)} has a part longer than {MAX_KEY_PART} characters")
    return out


class MetaTooComplex(ValueError):
    """A meta.json beyond the bounds readers accept (size, nesting depth, length of a number)."""


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def loads_meta(data: bytes | str) -> Any:
    """Parse a meta.json within MAX_META_BYTES, MAX_JSON_DEPTH and MAX_NUMBER_CHARS; the one parser
    every reader of shards uses. MetaTooComplex (a ValueError) names the bound; other invalid JSON
    raises ValueError as `json.loads` does. NaN and Infinity parse (as Python's reader does); the
    schema check names the field that holds one."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_META_BYTES:
        raise MetaTooComplex(f"meta.json has {len(raw)} bytes, more than {MAX_META_BYTES}")
    skeleton = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    if steps.size and int(np.cumsum(steps).max()) > MAX_JSON_DEPTH:
        raise MetaTooComplex(f"meta.json is nested too deeply (more than {MAX_JSON_DEPTH} levels)")

    def number(text: str, convert):
        if len(text) > MAX_NUMBER_CHARS:
            raise MetaTooComplex(f"meta.json has a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        return convert(text)

    return json.loads(raw.decode("utf-8"), parse_int=lambda t: number(t, int), parse_float=lambda t: number(t, float))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _numbers(value: Any, shape: tuple[int | None, ...], name: str, errors: list[str]) -> np.ndarray | None:
    """`value` as a float64 array if it is nested JSON lists of exactly `shape` (None: any length
    >= 1) whose entries are finite numbers; otherwise append a defect and return None. Strings,
    booleans and deeper nesting are defects, never coerced (np.asarray would accept "1.0")."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    level = [value]
    for depth, n in enumerate(shape):
        if not all(isinstance(v, list) for v in level):
            errors.append(f"{name} is not a numeric array of shape {_shape_text(shape)}")
            return None
        lengths = {len(v) for v in level}
        if len(lengths) != 1 or (n is not None and lengths != {n}) or lengths == {0}:
            found = f"rows of lengths {sorted(lengths)}" if len(lengths) > 1 else \
                f"shape {[*_concrete_shape(value, depth), lengths.pop()]}"
            errors.append(f"{name} has {found}, expected {_shape_text(shape)}")
            return None
        level = [x for v in level for x in v]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in level):
        bad = next(x for x in level if not isinstance(x, (int, float)) or isinstance(x, bool))
        errors.append(f"{name} has a non-numeric entry ({type(bad).__name__} {_short(bad)})")
        return None
    arr = np.asarray(level, dtype=np.float64).reshape(_concrete_shape(value, len(shape)))
    if not np.all(np.isfinite(arr)):
        errors.append(f"{name} has non-finite values")
        return None
    return arr


def _concrete_shape(value: Any, depth: int) -> list[int]:
    out = []
    for _ in range(depth):
        out.append(len(value))
        value = value[0]
    return out


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if n is None else str(n) for n in shape) + "]"


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _matrix(value: Any, rows: int, cols: int, name: str, errors: list[str]) -> np.ndarray | None:
    return _numbers(value, (rows, cols), name, errors)


def _equilibrated(arr: np.ndarray, rounds: int = 8) -> np.ndarray:
    """ARR with its rows and columns scaled by positive factors until each one's largest entry is 1
    (Ruiz equilibration). Invertibility and the sign of the determinant are unchanged, but a large
    translation or a tiny pixel size no longer makes an invertible H look singular."""
    out = arr / (float(np.abs(arr).max()) or 1.0)  # no overflow for huge entries
    for _ in range(rounds):
        for axis in (1, 0):
            peak = np.abs(out).max(axis=axis, keepdims=True)
            out = out / np.where(peak > 0, np.sqrt(peak), 1.0)
    return out


def homography_defects(H: Any) -> list[str]:
    """H must be 3x3, finite, invertible with a positive determinant (no reflection)."""
    errors: list[str] = []
    arr = _matrix(H, 3, 3, "H", errors)
    if arr is None:
        return errors
    det = float(np.linalg.det(_equilibrated(arr)))  # same sign as det H, free of units and translation
    if abs(det) <= 1e-12:
        errors.append("H is singular (not invertible)")
    elif det < 0:
        errors.append(f"H has a negative determinant ({det:.3g}): it mirrors the image")
    return errors


def meta_defects(meta: Any) -> list[str]:
    """Schema check of a `meta.json` record. Returns every defect found (empty list: valid)."""
    if not isinstance(meta, dict):
        return ["meta.json is not a JSON object"]
    errors: list[str] = []
    if meta.get("format") != FORMAT:
        errors.append(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
    for name in ("source", "key"):
        if not isinstance(meta.get(name), str) or not meta.get(name):
            errors.append(f"{name} is missing or not a string")
    if isinstance(meta.get("key"), str) and meta.get("key"):
        errors += key_defects(meta["key"])
        if isinstance(meta.get("source"), str) and meta["key"].split("/")[0] != meta["source"]:
            errors.append(f"key {meta['key']!r} does not start with source {meta['source']!r}")
    if meta.get("kind") not in KINDS:
        errors.append(f"kind is {meta.get('kind')!r}, expected one of {', '.join(KINDS)}")
    if meta.get("tier") not in TIERS:
        errors.append(f"tier is {meta.get('tier')!r}, expected one of {', '.join(TIERS)}")
    if meta.get("image") not in IMAGE_EXTS:
        errors.append(f"image is {meta.get('image')!r}, expected 'jpg' or 'png'")
    for name in ("width", "height"):
        if not _is_positive_int(meta.get(name)):
            errors.append(f"{name} is {_short(meta.get(name))}, expected a positive integer")
    H = None
    if "H" not in meta:
        errors.append("H is missing")
    else:
        h_errors = homography_defects(meta["H"])
        errors += h_errors
        H = None if h_errors else np.asarray(meta["H"], dtype=np.float64)
    region_errors = _region_defects(meta.get("region"))
    errors += region_errors
    density = meta.get("density")
    density_ok = _is_number(density) and density > 0
    if not density_ok:
        errors.append(f"density is {_short(density)}, expected a positive number (pixels per full-body unit)")
    elif not DENSITY_RANGE[0] <= density <= DENSITY_RANGE[1]:
        errors.append(f"density is {density:.6g}, outside the plausible range [{DENSITY_RANGE[0]:g}, "
                      f"{DENSITY_RANGE[1]:g}] pixels per full-body unit")
    size_ok = all(_is_positive_int(meta.get(n)) for n in ("width", "height"))
    if size_ok and meta["width"] * meta["height"] > MAX_IMAGE_PIXELS:
        errors.append(f"image size {meta['width']}x{meta['height']} exceeds {MAX_IMAGE_PIXELS} pixels")
    elif H is not None and size_ok and not region_errors and density_ok:
        errors += geometry_defects(H, np.asarray(meta["region"], dtype=np.float64), float(density),
                                   meta["width"], meta["height"])
    errors += _keypoint_defects(meta.get("keypoints"))
    errors += _smpl_defects(meta.get("smpl"))
    errors += _fit_defects(meta.get("fit"))
    errors += _orig_defects(meta.get("orig"))
    if not isinstance(meta.get("has_mask"), bool):
        errors.append("has_mask is missing or not a boolean")
    return errors


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def geometry_defects(H: np.ndarray, region: np.ndarray, density: float, width: int, height: int) -> list[str]:
    """Consistency of a sample's geometry (fields already well-formed): H keeps the whole image on
    one side of the line at infinity, `region` is H applied to the image corners, `density` is the
    density H implies, and the region overlaps full-body space (else no patch can ever show it)."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    w = corners @ H[2, :2] + H[2, 2]
    if np.any(w <= 1e-12 * np.abs(H[2]).max()):
        return ["H sends part of the image through infinity (projective denominator <= 0 at a corner)"]
    errors: list[str] = []
    expected = image_region(H, width, height)
    scale = max(1.0, float(np.abs(expected).max()))
    if region.shape != expected.shape or not np.allclose(region, expected, rtol=0, atol=REGION_TOLERANCE * scale):
        errors.append(f"region is not H applied to the image corners (expected {np.round(expected, 4).tolist()})")
    implied = density_of(H, width, height)
    if not abs(density - implied) <= DENSITY_TOLERANCE * implied:
        errors.append(f"density is {density:.6g}, H implies {implied:.6g} pixels per full-body unit")
    x0, y0 = expected.min(axis=0)
    x1, y1 = expected.max(axis=0)
    if min(x1, 1.0) - max(x0, 0.0) <= 0 or min(y1, 1.0) - max(y0, 0.0) <= 0:
        errors.append(f"the image lies outside full-body space [0, 1]^2 (region bbox "
                      f"[{x0:.3g}, {y0:.3g}, {x1:.3g}, {y1:.3g}])")
    return errors


def _region_defects(region: Any) -> list[str]:
    errors: list[str] = []
    if region is None:
        return ["region is missing"]
    arr = _numbers(region, (None, 2), "region", errors)
    if arr is None:
        return errors
    if arr.shape[0] < 3:
        return [f"region has shape {list(arr.shape)}, expected [N>=3, 2]"]
    lo, hi = REGION_BOUNDS
    if arr.min() < lo or arr.max() > hi:
        errors.append(f"region leaves the sane bounds [{lo}, {hi}] of full-body space")
    x, y = arr[:, 0], arr[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    if area <= 1e-8:
        errors.append("region has zero area")
    return errors


def _keypoint_defects(kp: Any) -> list[str]:
    if kp is None:
        return []
    if not isinstance(kp, dict):
        return ["keypoints is not an object"]
    errors: list[str] = []
    for group, n in KEYPOINT_GROUPS.items():
        if group not in kp:
            errors.append(f"keypoints.{group} is missing")
            continue
        arr = _matrix(kp[group], n, 3, f"keypoints.{group}", errors)
        if arr is not None and (arr[:, 2].min() < 0 or arr[:, 2].max() > 1):
            errors.append(f"keypoints.{group} confidence outside [0, 1]")
    for group in kp:
        if group not in KEYPOINT_GROUPS:
            errors.append(f"keypoints has unknown group {group!r}")
    return errors


def _smpl_defects(smpl: Any) -> list[str]:
    if smpl is None:
        return []
    if not isinstance(smpl, dict):
        return ["smpl is not an object"]
    errors: list[str] = []
    for name, n in SMPL_SIZES.items():
        _numbers(smpl.get(name), (n,), f"smpl.{name}", errors)
    return errors


def _fit_defects(fit: Any) -> list[str]:
    if fit is None:
        return []
    if not isinstance(fit, dict):
        return ["fit is not an object"]
    errors: list[str] = []
    losses = fit.get("losses")
    if not isinstance(losses, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in losses.items()):
        errors.append("fit.losses must map names to finite numbers")
    for name in ("visible", "iterations"):
        v = fit.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            errors.append(f"fit.{name} is {v!r}, expected a non-negative integer")
    return errors


def _orig_defects(orig: Any) -> list[str]:
    if not isinstance(orig, dict):
        return ["orig is missing or not an object"]
    errors: list[str] = []
    path = orig.get("path")
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
        errors.append(f"orig.path is {path!r}, expected a relative path inside the dataset")
    sha = orig.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        errors.append("orig.sha256 is not a 64-digit lowercase hex digest")
    for name in ("width", "height"):
        v = orig.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            errors.append(f"orig.{name} is {v!r}, expected a positive integer")
    return errors


def region_bbox(region: Any) -> tuple[float, float, float, float]:
    arr = np.asarray(region, dtype=np.float64)
    return float(arr[:, 0].min()), float(arr[:, 1].min()), float(arr[:, 0].max()), float(arr[:, 1].max())


@dataclass
class ShardRecord:
    """A decoded shard sample, as the trainer and the tools see it.

    image: uint8 [h, w, 3]; mask: uint8 [h, w] (255 = valid) or None; H maps image pixel
    coordinates (centres at +0.5) to full-body space; keypoints: group -> float32 [n, 3].
    """

    key: str
    source: str
    kind: str
    tier: str
    image: np.ndarray
    mask: np.ndarray | None
    H: np.ndarray
    region: np.ndarray
    density: float
    keypoints: dict[str, np.ndarray] | None
    meta: dict[str, Any] = field(repr=False)

    @classmethod
    def from_parts(cls, meta: dict[str, Any], image: np.ndarray, mask: np.ndarray | None) -> ShardRecord:
        kp = meta.get("keypoints")
        return cls(
            key=meta["key"],
            source=meta["source"],
            kind=meta["kind"],
            tier=meta["tier"],
            image=image,
            mask=mask,
            H=np.asarray(meta["H"], dtype=np.float64),
            region=np.asarray(meta["region"], dtype=np.float64),
            density=float(meta["density"]),
            keypoints=None if kp is None else {g: np.asarray(v, dtype=np.float32) for g, v in kp.items()},
            meta=meta,
        )


def dumps_meta(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode("utf-8")


def aligned_full_body(record: ShardRecord) -> bool:
    """Whether a record is a sample of an aligned full-body set, whose padding of the unit square is
    part of the picture (white, as the set presents it): the one place that decides it, for the
    trainer (which views D's global head may call real) and the metrics (which patches count as
    known). The meta's `aligned` field decides (`mst align --aligned` writes it); for shards written
    before it existed, a `full` sample stored with the padded-identity H counts as aligned. A
    full-body photo placed by a fitted H is not: where its H leaves the square uncovered, the white
    there is not what the set shows; partial sources never are."""
    flag = record.meta.get("aligned") if record.meta else None
    if flag is not None:
        return bool(flag) and record.kind == "full"
    if record.kind != "full":
        return False
    h, w = record.image.shape[:2]
    return bool(np.allclose(record.H, full_image_homography(w, h), rtol=0, atol=1e-9))
