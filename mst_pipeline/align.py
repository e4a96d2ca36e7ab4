"""`mst align`: images of any source -> keypoints -> SMPLify-P -> H(α, ᾱ) -> shards (paper §3.1).

For each image of a dataset folder (jpg/png/webp, nested folders) the pipeline detects keypoints,
starts the body from them (or from PARE), fits SMPLify-P in batches, maps the image into full-body
space with H(α_opt, ᾱ) and writes a `unitedhuman-shard/1` sample: the image, H, the region it
covers, its density, the keypoints in full-body space and the fit. Images that fail (unreadable,
no person, too few keypoints, diverged fit, an H outside full-body space) go to `rejects.jsonl`
with their reason and the run continues (so do files whose sample key another file already has:
`a.png`/`a.jpg`). Re-runs skip keys already in complete shards, and
`part=(k, n)` processes the k-th of n disjoint slices (a cluster job array).

An *aligned* full-body set (`settings.aligned`, `mst align --aligned`: SHHQ-like photos, one
person centred from head to feet) is full-body space itself (paper §3.1: only partial images are
transformed). Its images enter as they are: the padded-identity H
(`uh_train.format.geometry.full_image_homography`), no fit, no resampling, the original file's bytes
stored when they decode to the same pixels; keypoints are still detected (for keypoint-centred
patches) and an image without them is kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import signal
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.detect import BackendUnavailable, DetectionError, PersonKeypoints, make_detector
from mst_pipeline.pare import load_pare_checkpoint, pare_start
from mst_pipeline.shards import ShardWriter, encode_sample, write_manifest
from mst_pipeline.smplify import FitResult, SmplifyConfig, smplify_p
from mst_pipeline.space import DEFAULT_DENSITY, FullBodySpace, pixels_to_normalised, region_and_density
from uh_train.format.geometry import apply_homography, full_image_homography
from uh_train.format.spec import make_key, sha256_file

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
KINDS = ("full", "upper", "lower", "face", "hand")
TIERS = ("LR", "HR", "SR")
HR_FACTOR = 1.5  # an image denser than this many times the full-body set's density is HR


@dataclass
class AlignSettings:
    kind: str | None = None  # None: inferred per image from its visible keypoints
    tier: str | None = None  # None: from the image's density relative to the space
    detector: str = "mediapipe"
    keypoints_dir: Path | None = None
    batch_size: int = 16
    device: str = "cpu"
    part: tuple[int, int] = (0, 1)
    max_count: int = 1000
    smplify: SmplifyConfig = field(default_factory=SmplifyConfig)
    overlay: Path | None = None  # folder for a check picture per newly aligned image
    workers: int = 1  # detection processes feeding the batched fits (1: detect inline)
    pare: Path | None = None  # PARE checkpoint to start SMPLify-P from; None: the keypoint start
    aligned: bool = False  # an aligned full-body set: padded-identity H, no fit (see the module docstring)


@dataclass
class AlignSummary:
    written: int = 0
    skipped: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    without_keypoints: int = 0  # aligned images kept although no keypoints were found
    seconds: float = 0.0


class Rejected(Exception):
    """An image that cannot be aligned; the message is the reason written to rejects.jsonl."""


# ---------------------------------------------------------------------------------------------
# Pure decisions


def list_images(root: Path, part: tuple[int, int] = (0, 1)) -> list[Path]:
    """Images under ROOT (sorted relative paths), the k-th of n disjoint slices by a stable hash."""
    k, n = part
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"part must be k/n with 0 <= k < n, got {k}/{n}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    return [p for p in files if zlib.crc32(p.relative_to(root).as_posix().encode()) % n == k]


def stem_of(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def key_collisions(files: list[Path], root: Path, source: str) -> dict[Path, Path]:
    """{path: the path that keeps its key} for files whose sample key another file already has.

    Keys map the relative path onto [A-Za-z0-9_-] (`dup.jpg`/`dup.png`, `a.b.png`/`a-b.png` and
    `sub/x.png`/`sub_x.png` share one), so the first of each group in sorted order keeps the key and
    the others are rejected by name. FILES must be the whole folder, not one --part slice: partners
    may fall into different slices.
    """
    owner: dict[str, Path] = {}
    lost = {}
    for path in sorted(files):
        key = make_key(source, stem_of(path, root))
        if key in owner:
            lost[path] = owner[key]
        else:
            owner[key] = path
    return lost


def infer_kind(targets: np.ndarray, visible: np.ndarray) -> str:
    """Which part of the body an image shows, from its visible fitting targets ([37, 2], [37])."""
    v = visible
    face = v[[0, 15, 16, 17, 18]].sum()
    shoulders = v[[2, 5]].sum()
    hips = v[[8, 9, 12]].sum()
    legs = v[[10, 11, 13, 14]].sum()
    hands = v[25:].sum()
    if legs >= 2 and (face >= 1 or shoulders >= 1) and hips >= 1:
        return "full"
    if legs >= 2 and face == 0 and shoulders == 0:
        return "lower"
    if shoulders >= 2 or (shoulders >= 1 and (hips >= 1 or v[[3, 6]].any())):
        return "upper"
    if face >= 2:
        return "face"
    if hands >= 2:
        return "hand"
    return "upper" if shoulders >= 1 else "face"


def infer_tier(image_density: float, space: FullBodySpace | None) -> str:
    """LR when the image is about as dense as the full-body set (None: the built-in space's
    density), HR when much denser."""
    reference = space.density if space is not None else DEFAULT_DENSITY
    return "HR" if image_density > HR_FACTOR * reference else "LR"


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


def fitting_input(kp: PersonKeypoints, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(targets [37,2] in normalised coordinates, confidence [37]) with points outside the image
    (incl. the padding of non-square images) given confidence 0."""
    t = kp.targets()
    xy, conf = t[:, :2], t[:, 2].copy()
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
    conf[~inside | ~np.all(np.isfinite(xy), axis=1)] = 0.0
    return pixels_to_normalised(np.nan_to_num(xy), width, height), conf


def keypoints_in_space(kp: PersonKeypoints, H: np.ndarray) -> dict[str, np.ndarray]:
    """Keypoint groups mapped to full-body space (confidence kept; unknown points at 0, 0, 0)."""
    out = {}
    for name, arr in kp.groups().items():
        xy = apply_homography(H, arr[:, :2])
        conf = np.clip(arr[:, 2], 0, 1)
        xy[conf <= 0] = 0.0
        out[name] = np.concatenate([xy, conf[:, None]], 1)
    return out


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _Item:
    path: Path
    stem: str
    key: str
    image: np.ndarray
    keypoints: PersonKeypoints | None  # None: an aligned image where none were found
    targets: np.ndarray | None  # fitting targets (None for aligned images: nothing is fitted)
    confidence: np.ndarray | None


MAX_PIXELS = 1 << 27  # 134 M pixels (16384 x 8192): larger "images" are decompression bombs, not photos


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [h, w, 3] with EXIF orientation applied; Rejected for any file that cannot be read.

    The size is checked from the header before any pixel is decoded; a corrupt EXIF block (which
    Pillow may fail on with any exception type) only loses the rotation, never the image.
    """
    import warnings

    from PIL import Image, ImageOps

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
                arr = np.asarray(upright.convert("RGB"))
    except Rejected:
        raise
    except Image.DecompressionBombError as e:
        raise Rejected(f"image too large ({e})") from None
    except Exception as e:  # noqa: BLE001 - any failure to decode one file is that file's reject reason
        raise Rejected(f"unreadable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if arr.ndim != 3 or arr.shape[0] < 8 or arr.shape[1] < 8:
        raise Rejected(f"image too small ({arr.shape[1]}x{arr.shape[0]})")
    return arr


def align_folder(root: str | os.PathLike, out: str | os.PathLike, source: str, space: FullBodySpace | None, model,
                 settings: AlignSettings, prior=None, detector=None,
                 progress: Callable[[int, int], None] | None = None) -> AlignSummary:
    """Align every image of ROOT (this part's slice) into shards in OUT. See the module docstring.

    With `settings.workers` > 1, detection (image decoding and keypoints) runs in that many
    processes, each building its detector once (or unpickling `detector` when one is given);
    results are consumed in file order, so the output equals a one-worker run. With
    `settings.overlay`, each newly aligned image also gets OVERLAY/<stem>.jpg (`mst_pipeline.overlay`).
    With `settings.aligned`, nothing is fitted: `model` and `prior` are unused and `space` (None:
    the built-in density) only sets the tier.
    """
    root, out = Path(root), Path(out)
    if settings.workers < 1:
        raise ValueError(f"workers must be at least 1, got {settings.workers}")
    if settings.aligned and (settings.kind or "full") != "full":
        raise ValueError(f"an aligned full-body set holds kind 'full', not {settings.kind!r}")
    if settings.aligned and (settings.overlay is not None or settings.pare is not None):
        raise ValueError("an aligned full-body set is not fitted: overlays and a PARE start do not apply")
    if not settings.aligned and (space is None or model is None):
        raise ValueError("fitted alignment needs a full-body space and a body model")
    if not settings.aligned and settings.detector == NO_DETECTOR:
        raise ValueError(f"detector {NO_DETECTOR!r} only applies to an aligned full-body set (fits need keypoints)")
    everything = list_images(root)
    if not everything:  # an empty slice of a full folder is fine, an empty folder is not
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
    files = list_images(root, settings.part)
    collisions = key_collisions(everything, root, source)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = AlignSummary()
    if detector is None and settings.workers == 1:
        detector = _make_detector(settings.detector, settings.keypoints_dir, root)
    pare = load_pare_checkpoint(settings.pare, settings.device, strict=True)[0] if settings.pare is not None else None
    try:
        with ShardWriter(out, source, part=settings.part[0], max_count=settings.max_count,
                         update_manifest=False) as writer:
            todo = []
            for path in files:
                if path in collisions:
                    _reject(out, make_key(source, stem_of(path, root)), path.relative_to(root),
                            f"key collision (same sample key as {collisions[path].relative_to(root).as_posix()}; "
                            "rename one of the two files)", summary)
                elif writer.has(make_key(source, stem_of(path, root))):
                    summary.skipped += 1
                else:
                    todo.append(path)
            done = summary.skipped + summary.rejected
            if progress:
                progress(done, len(files))
            tasks = [(path, stem_of(path, root), make_key(source, stem_of(path, root)), settings.aligned)
                     for path in todo]
            with contextlib.closing(_detections(tasks, settings, detector, root)) as detections:
                if settings.aligned:
                    done = _write_aligned(tasks, detections, writer, out, root, source, space, settings, summary,
                                          done, len(files), progress)
                else:
                    for batch in _batches(tasks, settings.batch_size):
                        items = []
                        for path, _, key, _ in batch:
                            found = next(detections)
                            if isinstance(found, Rejected):
                                _reject(out, key, path.relative_to(root), str(found), summary)
                            else:
                                items.append(found)
                        if items:
                            targets = np.stack([i.targets for i in items])
                            confidence = np.stack([i.confidence for i in items])
                            init, from_pare = None, np.zeros(len(items), dtype=bool)
                            if pare is not None:  # PARE's regression as the start (paper §3.1)
                                init, from_pare = pare_start(pare, model, [i.image for i in items], targets, confidence,
                                                             settings.smplify.confidence)
                            fits = smplify_p(model, targets, confidence, prior=prior, mean_pitch=space.pitch,
                                             config=settings.smplify, init=init, device=settings.device)
                            for fit, used in zip(fits, from_pare, strict=True):
                                fit.extra["init"] = "pare" if used else "keypoints"
                            aligned = []
                            for item, fit in zip(items, fits, strict=True):
                                try:
                                    sample = build_sample(item, fit, root, source, space, settings)
                                    if not writer.write(sample):
                                        raise Rejected("duplicate key (already written)")
                                    summary.written += 1
                                    summary.kinds[sample.meta["kind"]] += 1
                                    aligned.append((item, fit, sample.meta))
                                except Rejected as e:
                                    _reject(out, item.key, item.path.relative_to(root), str(e), summary)
                            if settings.overlay is not None and aligned:
                                _write_overlays(settings.overlay, aligned, model, settings)
                        done += len(batch)
                        if progress:
                            progress(done, len(files))
    finally:  # also after an error: the manifest lists every sample kept
        write_manifest(out)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_aligned(tasks: list, detections: Iterator, writer: ShardWriter, out: Path, root: Path, source: str,
                   space: FullBodySpace | None, settings: AlignSettings, summary: AlignSummary, done: int,
                   total: int, progress: Callable[[int, int], None] | None) -> int:
    """Write the aligned full-body images of TASKS as they are (no fit); returns the new `done`."""
    for path, _, key, _ in tasks:
        found = next(detections)
        try:
            if isinstance(found, Rejected):
                raise found
            if not writer.write(build_aligned_sample(found, root, source, space, settings)):
                raise Rejected("duplicate key (already written)")
        except Rejected as e:
            _reject(out, key, path.relative_to(root), str(e), summary)
        else:
            summary.written += 1
            summary.kinds["full"] += 1
            summary.without_keypoints += found.keypoints is None and settings.detector != NO_DETECTOR
        done += 1
        if progress:
            progress(done, total)
    return done


def _write_overlays(folder: Path, aligned: list, model, settings: AlignSettings) -> None:
    """OVERLAY/<stem>.jpg for each (item, fit, meta) of a batch; the meshes are posed together."""
    from mst_pipeline.overlay import fitted_bodies, overlay_picture, write_overlay

    vertices, joints = fitted_bodies(model, [fit for _, fit, _ in aligned], settings.device)
    faces = model.faces
    for (item, fit, meta), verts, joint in zip(aligned, vertices, joints, strict=True):
        loss = sum(fit.losses.values())
        legend = f"{meta['kind']} | {meta['tier']} | {fit.visible} visible | loss {loss:.3g}"
        picture = overlay_picture(item.image, item.keypoints.groups(), item.keypoints.targets()[:, :2],
                                  item.confidence >= settings.smplify.confidence, verts, joint, faces, legend)
        write_overlay(folder / f"{item.stem}.jpg", picture)


def _batches(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), max(1, n)):
        yield items[i:i + max(1, n)]


NO_DETECTOR = "none"  # aligned sets only: store no keypoints


def _make_detector(name: str, keypoints_dir: Path | None, root: Path):
    return None if name == NO_DETECTOR else make_detector(name, keypoints_dir, root)


def _detect(path: Path, stem: str, key: str, detector, aligned: bool = False) -> _Item:
    if aligned:
        return _read_aligned(path, stem, key, detector)
    image = read_image(path)
    h, w = image.shape[:2]
    try:
        kp = detector(image, path)
    except DetectionError as e:
        raise Rejected(str(e)) from None
    except BackendUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - a detector crash on one image must not end the run
        raise Rejected(f"keypoint detection failed ({type(e).__name__}: {e})") from None
    targets, conf = fitting_input(kp, w, h)
    if (conf >= 0.3).sum() < 3:
        raise Rejected(f"too few keypoints ({int((conf >= 0.3).sum())} visible, need 3)")
    return _Item(path, stem, key, image, kp, targets, conf)


def _read_aligned(path: Path, stem: str, key: str, detector) -> _Item:
    """An aligned full-body image and, when the detector finds them, its keypoints; nothing here
    rejects an image except an unreadable file or a landscape shape (no fit depends on them)."""
    image = read_image(path)
    h, w = image.shape[:2]
    if (defect := aligned_shape_defect(w, h)) is not None:
        raise Rejected(defect)
    kp = None
    if detector is not None:
        try:
            kp = detector(image, path)
        except BackendUnavailable:
            raise
        except Exception:  # noqa: BLE001 - no person found, a malformed JSON: the image is kept without keypoints
            kp = None
    return _Item(path, stem, key, image, kp, None, None)


def stored_bytes(path: Path, image: np.ndarray) -> tuple[bytes | None, str]:
    """(the file's bytes, shard image type) when they decode to exactly IMAGE (8-bit RGB JPEG or PNG,
    no EXIF rotation); else (None, "png"): IMAGE is then stored losslessly as PNG."""
    from PIL import Image, UnidentifiedImageError

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            kind = {"JPEG": "jpg", "PNG": "png"}.get(im.format or "")
            same = kind is not None and im.mode == "RGB" and np.array_equal(np.asarray(im), image)
    except (UnidentifiedImageError, OSError, ValueError):
        same = False
    return (data, kind) if same else (None, "png")


def build_aligned_sample(item: _Item, root: Path, source: str, space: FullBodySpace | None,
                         settings: AlignSettings):
    """The shard sample of an aligned full-body image: padded-identity H, the original pixels, no fit."""
    h, w = item.image.shape[:2]
    H = full_image_homography(w, h)
    region, dens = region_and_density(H, w, h)
    encoded, ext = stored_bytes(item.path, item.image)
    fields: dict[str, Any] = {
        "kind": "full", "tier": settings.tier or infer_tier(dens, space), "H": H, "region": region,
        "density": dens, "keypoints": keypoints_in_space(item.keypoints, H) if item.keypoints is not None else None,
        "smpl": None, "fit": None, "aligned": True,
        "orig": {"path": item.path.relative_to(root).as_posix(), "sha256": sha256_file(item.path),
                 "width": w, "height": h},
        "detector": settings.detector,
    }
    try:
        return encode_sample(source, item.stem, item.image, fields, ext=ext, encoded=encoded)
    except ValueError as e:
        raise Rejected(f"invalid sample ({e})") from None


def build_sample(item: _Item, fit: FitResult, root: Path, source: str, space: FullBodySpace,
                 settings: AlignSettings):
    """The shard sample of one fitted image; Rejected when the fit failed or H leaves full-body space."""
    if not fit.ok:
        raise Rejected(fit.failure or "fit failed")
    h, w = item.image.shape[:2]
    H = space.homography(fit.cam, w, h)
    region, dens = region_and_density(H, w, h)
    visible = item.confidence >= settings.smplify.confidence
    kind = settings.kind or infer_kind(item.targets, visible)
    tier = settings.tier or infer_tier(dens, space)
    ext = "png" if item.path.suffix.lower() == ".png" else "jpg"
    fields: dict[str, Any] = {
        "kind": kind, "tier": tier, "H": H, "region": region, "density": dens,
        "keypoints": keypoints_in_space(item.keypoints, H),
        "smpl": {"betas": _pad(fit.betas, 10), "pose": fit.pose, "cam": fit.cam, "cam_bar": list(space.cam_bar)},
        "fit": {"losses": fit.losses, "visible": fit.visible, "iterations": fit.iterations,
                "reprojection_px": fit.reprojection * max(w, h) / 2, "converged": fit.converged,
                "init": fit.extra.get("init", "keypoints")},
        "orig": {"path": item.path.relative_to(root).as_posix(), "sha256": sha256_file(item.path),
                 "width": w, "height": h},
        "detector": settings.detector,
    }
    try:
        return encode_sample(source, item.stem, item.image, fields, ext=ext)
    except ValueError as e:
        raise Rejected(f"invalid sample ({e})") from None


def _pad(betas: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[:min(n, len(betas))] = betas[:n]
    return out


def _reject(out: Path, key: str, rel: Path, reason: str, summary: AlignSummary) -> None:
    """Append one line to OUT/rejects.jsonl (flushed and synced, so a crash keeps it)."""
    record = {"key": key, "path": rel.as_posix(), "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(out / "rejects.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    summary.rejected += 1
    summary.reasons[reason.split(" (")[0]] += 1


def read_rejects(out: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out) / "rejects.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Detection workers (`--workers N`)

WORKER_QUEUE = 2  # tasks queued per worker, so it never waits for the next one


def _detections(tasks: list[tuple[Path, str, str, bool]], settings: AlignSettings, detector,
                root: Path) -> Iterator[_Item | Rejected]:
    """The detection result of each (path, stem, key, aligned) task, in task order."""
    if settings.workers == 1:
        for path, stem, key, aligned in tasks:
            try:
                found: _Item | Rejected = _detect(path, stem, key, detector, aligned)
            except Rejected as e:
                found = e
            except BackendUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 - as in a worker: this image's reason, the run goes on
                found = Rejected(f"detection failed ({type(e).__name__}: {e})")
            yield found
        return
    spec = detector if detector is not None else (settings.detector, settings.keypoints_dir, root)
    # Read ahead by two batches so the workers keep decoding while the main process fits.
    window = max(2 * settings.batch_size, 2 * WORKER_QUEUE * settings.workers)
    yield from _DetectionPool(settings.workers, spec, window).results(tasks)


def _worker_main(conn, spec) -> None:
    """A detection process: builds its detector once, then answers tasks (index, path, stem, key, aligned)
    in the order received with (index, (status, payload)); a task of None ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        detector = _make_detector(*spec) if isinstance(spec, tuple) else spec
    except BackendUnavailable as e:
        conn.send((None, ("unavailable", str(e))))
        return
    conn.send((None, ("ready", None)))
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the main process is gone
            return
        if task is None:
            return
        index, path, stem, key, aligned = task
        try:
            result = ("item", _detect(path, stem, key, detector, aligned))
        except Rejected as e:
            result = ("rejected", str(e))
        except BackendUnavailable as e:
            result = ("unavailable", str(e))
        except Exception as e:  # noqa: BLE001 - reported as this image's reason, the worker goes on
            result = ("rejected", f"detection failed in a worker ({type(e).__name__}: {e})")
        conn.send((index, result))


@dataclass
class _Worker:
    process: Any
    conn: Any
    queued: deque = field(default_factory=deque)  # task indices sent and not yet answered, in order
    ready: bool = False


class _DetectionPool:
    """N detection processes fed by a dispatch thread of the main process.

    Each worker answers its tasks in order, so when one dies (a crash in native code, the OOM
    killer) the oldest unanswered task is the image that killed it: that image is rejected, the
    rest of its queue goes back to the front of the line and a fresh worker takes its place.
    'forkserver' (or 'spawn') starts workers from a clean process: mediapipe and torch do not
    survive a fork after they have started threads.
    """

    def __init__(self, workers: int, spec, window: int) -> None:
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if self.ctx.get_start_method() == "forkserver":
            # The server imports this module (numpy, torch) once; each worker then starts in a fork
            # of it, before any detector or thread exists.
            self.ctx.set_forkserver_preload([__name__])
        self.n, self.spec, self.window = workers, spec, window
        self.cond = threading.Condition()
        self.answers: dict[int, _Item | Rejected] = {}
        self.consumed = 0  # next task index the consumer waits for
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def results(self, tasks: list[tuple[Path, str, str, bool]]) -> Iterator[_Item | Rejected]:
        thread = threading.Thread(target=self._dispatch, args=(tasks,), name="align-detection", daemon=True)
        thread.start()
        try:
            for i in range(len(tasks)):
                with self.cond:
                    while i not in self.answers and self.error is None:
                        self.cond.wait()
                    if i not in self.answers:
                        raise self.error
                    found = self.answers.pop(i)
                    self.consumed = i + 1
                yield found
        finally:
            self.stop.set()
            thread.join()

    def _dispatch(self, tasks: list[tuple[Path, str, str, bool]]) -> None:
        pending = deque(range(len(tasks)))
        workers: list[_Worker] = []
        try:
            workers = [self._start() for _ in range(min(self.n, len(tasks)))]
            while not self.stop.is_set() and (pending or any(w.queued for w in workers)):
                for w in workers:
                    while (pending and len(w.queued) < WORKER_QUEUE
                           and pending[0] < self.consumed + self.window):
                        i = pending.popleft()
                        w.conn.send((i, *tasks[i]))
                        w.queued.append(i)
                ready = set(wait([w.conn for w in workers] + [w.process.sentinel for w in workers], timeout=0.1))
                for k, w in enumerate(workers):
                    if w.conn in ready or w.process.sentinel in ready:
                        if not self._receive(w):
                            workers[k] = self._replace(w, tasks, pending)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            with self.cond:
                self.error = e
                self.cond.notify_all()
        finally:
            for w in workers:
                self._shut(w)

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker_main, args=(child, self.spec), daemon=True)
        process.start()
        child.close()  # the worker holds the only other end: its death reads as EOF here
        return _Worker(process, parent)

    def _receive(self, w: _Worker) -> bool:
        """Take every answer waiting from W; False when W has died."""
        try:
            while w.conn.poll():
                index, (status, payload) = w.conn.recv()
                if status == "unavailable":
                    raise BackendUnavailable(payload)
                if index is None:
                    w.ready = True
                    continue
                assert index == w.queued[0], (index, list(w.queued))
                w.queued.popleft()
                with self.cond:
                    self.answers[index] = Rejected(payload) if status == "rejected" else payload
                    self.cond.notify_all()
        except (EOFError, OSError):
            return False
        return w.process.is_alive()

    def _replace(self, w: _Worker, tasks: list, pending: deque) -> _Worker:
        w.process.join(5)
        code = w.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if not w.ready:
            raise RuntimeError(f"a detection worker exited while starting ({how}); "
                               "run with --workers 1 to see the error")
        culprit = w.queued.popleft() if w.queued else None
        pending.extendleft(reversed(w.queued))  # the rest of its queue goes first to the next worker
        self._shut(w)
        if culprit is not None:
            with self.cond:
                self.answers[culprit] = Rejected(f"detection worker crashed on this image ({how})")
                self.cond.notify_all()
        return self._start()

    @staticmethod
    def _shut(w: _Worker) -> None:
        if not w.queued:  # idle: let it exit; a busy one (an interrupted run) is stopped at once
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(None)
            w.process.join(5)
        if w.process.is_alive():
            w.process.terminate()
            w.process.join(5)
        w.conn.close()
