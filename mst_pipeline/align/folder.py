"""`mst align`: images of any source -> keypoints -> SMPLify-P -> H(α, ᾱ) -> shards (paper §3.1).

For each image of a dataset folder (jpg/png/webp, nested folders) the pipeline detects keypoints,
starts the body from them (or from PARE), fits SMPLify-P in batches, maps the image into full-body
space with H(α_opt, ᾱ) and writes a `unitedhuman-shard/1` sample: the image, H, the region it
covers, its density, the keypoints in full-body space and the fit. Images that fail (unreadable,
no person, too few keypoints, diverged fit, an H outside full-body space) go to `rejects.jsonl`
with their reason and the run continues. Any file name gives a sample key
(`mst_pipeline.detect.images.sample_stems`: a name that sanitises to nothing, one too long for a
tar header, or one whose key another file already has gets its path's hash as suffix; `orig.path`
keeps the name). Re-runs skip keys already in complete shards, and
`part=(k, n)` processes the k-th of n disjoint slices (a cluster job array).

An image is fitted for the person most fully visible in it (`mst_pipeline.detect.persons`); its
sample names that person (`person`) and the others (`other_people`: boxes and visible keypoints).
With `settings.person == "all"` each person becomes a sample of its own: the most visible keeps
the image's key, the k-th (k ≥ 1, in the same order) gets the stem `<stem>-p<k>`.

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
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.align.settings import AlignSettings
from mst_pipeline.body.keypoints import FROM_FACE, PersonKeypoints
from mst_pipeline.detect.images import IMAGE_EXTS, Rejected, list_images, sample_stems
from mst_pipeline.detect.pool import NO_DETECTOR, DetectedImage, batches, detections, fitting_input, image_detector
from mst_pipeline.fitting.pare.checkpoint import load_pare_checkpoint
from mst_pipeline.fitting.pare.start import pare_start
from mst_pipeline.fitting.smplify import FitInit, FitResult, smplify_p
from mst_pipeline.shards.rejects import reject_file
from mst_pipeline.shards.writer import ShardWriter, encode_sample, write_manifest
from mst_pipeline.space import DEFAULT_DENSITY, FullBodySpace, region_and_density
from uh_train.format.geometry import apply_homography, full_image_homography
from uh_train.format.spec import make_key, sha256_file

HR_FACTOR = 1.5  # an image denser than this many times the full-body set's density is HR


@dataclass
class AlignSummary:
    written: int = 0
    skipped: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    without_keypoints: int = 0  # aligned images kept although no keypoints were found
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Pure decisions


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


def fit_by_view(model, targets: np.ndarray, confidence: np.ndarray, init, prior, space: FullBodySpace,
                settings: AlignSettings, keypoints: list | None = None) -> list:
    """SMPLify-P of a batch, each image with the body model's keypoints placed as its detector places
    them in that image's view kind (`--kind`, else inferred; `mst_pipeline.body.view_confidence`) and
    without the detections the calibration found unusable in that kind (a face crop's guessed
    shoulders). KEYPOINTS (per row: the detected `PersonKeypoints`, the image's width and height)
    lets a kind read other points than the body's (`PersonKeypoints.targets`: a face crop's ears are
    its jaw line's). Images of one kind are fitted together; the results come back in the batch's
    order."""
    from mst_pipeline.body import view_confidence

    conf_min = settings.smplify.confidence
    kinds = [settings.kind or infer_kind(t, c >= conf_min) for t, c in zip(targets, confidence, strict=True)]
    fits: list = [None] * len(targets)
    for kind in dict.fromkeys(kinds):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        t, c = targets[rows], confidence[rows]
        if keypoints is not None and kind in FROM_FACE:  # this kind reads some points from the face
            t, c = (np.stack(a) for a in zip(*(fitting_input(*keypoints[i], kind=kind) for i in rows), strict=True))
        conf = view_confidence(model, kind, c)
        start = None if init is None else FitInit(init.cam[rows], init.global_orient[rows], init.body_pose[rows],
                                                  init.betas[rows])
        for i, fit in zip(rows, smplify_p(model, t, conf, prior=prior, mean_pitch=space.pitch,
                                          config=settings.smplify, init=start, device=settings.device),
                          strict=True):
            fits[i] = fit
    return fits


def infer_tier(image_density: float, space: FullBodySpace | None) -> str:
    """LR when the image is about as dense as the full-body set (None: the built-in space's
    density), HR when much denser."""
    reference = space.density if space is not None else DEFAULT_DENSITY
    return "HR" if image_density > HR_FACTOR * reference else "LR"


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


def align_folder(root: str | os.PathLike, out: str | os.PathLike, source: str, space: FullBodySpace | None, model,
                 settings: AlignSettings, prior=None, detector=None,
                 progress: Callable[[int, int], None] | None = None,
                 phase: Callable[[str], None] | None = None) -> AlignSummary:
    """Align every image of ROOT (this part's slice) into shards in OUT. See the module docstring.

    With `settings.workers` >= 1, detection (image decoding and keypoints) runs in that many
    processes, each building its detector once (or unpickling `detector` when one is given);
    results are consumed in file order, so the output equals a one-worker run. With
    `settings.overlay`, each newly aligned image also gets OVERLAY/<stem>.jpg (`mst_pipeline.align.overlay`).
    With `settings.aligned`, nothing is fitted: `model` and `prior` are unused and `space` (None:
    the built-in density) only sets the tier.
    """
    root, out = Path(root), Path(out)
    if not settings.aligned and (space is None or model is None):
        raise ValueError("fitted alignment needs a full-body space and a body model")
    if not settings.aligned:
        settings.provenance = provenance(space, prior, model)
    everything = list_images(root)
    if not everything:  # an empty slice of a full folder is fine, an empty folder is not
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
    files = list_images(root, settings.part)
    stems = sample_stems(everything, root)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = AlignSummary()
    if detector is None and settings.workers == 0:
        detector = image_detector(settings.detector, settings.keypoints_dir, root)
    pare = load_pare_checkpoint(settings.pare, settings.device, strict=True)[0] if settings.pare is not None else None
    try:
        with ShardWriter(out, source, part=settings.part[0], parts=settings.part[1], max_count=settings.max_count,
                         update_manifest=False) as writer:
            todo = []
            for path in files:
                if settings.person == "best" and writer.has(make_key(source, stems[path])):
                    summary.skipped += 1
                else:
                    todo.append(path)
            done = summary.skipped
            if progress:
                progress(done, len(files))
            tasks = [(path, stems[path], make_key(source, stems[path]), settings.aligned) for path in todo]
            spec = (settings.detector, settings.keypoints_dir, root)
            found_all = detections(tasks, settings.workers, detector, spec, settings.batch_size)
            with contextlib.closing(found_all) as detected:
                if settings.aligned:
                    done = _write_aligned(tasks, detected, writer, out, root, source, space, settings, summary,
                                          done, len(files), progress)
                else:
                    for batch in batches(tasks, settings.batch_size):
                        items = []
                        for j, (path, _, key, _) in enumerate(batch):
                            if phase:  # the bar counts images written; within a batch say what runs
                                phase(f"detecting {j + 1}/{len(batch)}")
                            found = next(detected)
                            if isinstance(found, Rejected):
                                reject_file(out, key, path.relative_to(root), str(found), summary)
                            elif settings.person == "all":
                                items += _every_person(found, source, root, writer, out, summary)
                            else:
                                items.append(found)
                        if items:
                            targets = np.stack([i.targets for i in items])
                            confidence = np.stack([i.confidence for i in items])
                            init, from_pare = None, np.zeros(len(items), dtype=bool)
                            if pare is not None:  # PARE's regression as the start (paper §3.1)
                                init, from_pare = pare_start(pare, model, [i.image for i in items], targets, confidence,
                                                             settings.smplify.confidence)
                            if phase:
                                phase(f"fitting {len(items)} (SMPLify-P)")
                            sized = [(i.keypoints, i.image.shape[1], i.image.shape[0]) for i in items]
                            fits = fit_by_view(model, targets, confidence, init, prior, space, settings, sized)
                            for fit, used in zip(fits, from_pare, strict=True):
                                fit.extra["init"] = "pare" if used else "keypoints"
                            aligned = []
                            for item, fit in zip(items, fits, strict=True):
                                try:
                                    sample = build_sample(item, fit, root, source, space, settings)
                                    _write(writer, sample)
                                    summary.written += 1
                                    summary.kinds[sample.meta["kind"]] += 1
                                    aligned.append((item, fit, sample.meta))
                                except Rejected as e:
                                    reject_file(out, item.key, item.path.relative_to(root), str(e), summary)
                            if settings.overlay is not None and aligned:
                                _write_overlays(settings.overlay, root, aligned, model, settings)
                        done += len(batch)
                        if phase:
                            phase("")
                        if progress:
                            progress(done, len(files))
    finally:  # also after an error: the manifest lists every sample kept
        write_manifest(out)
    summary.seconds = time.perf_counter() - start
    return summary


def _write(writer: ShardWriter, sample) -> None:
    """Write SAMPLE; Rejected (this file's reason, the run goes on) when it cannot be."""
    try:
        written = writer.write(sample)
    except ValueError as e:  # a member the tar format cannot hold; the writer cut it off
        raise Rejected(f"cannot be written to a shard ({e})") from None
    if not written:
        raise Rejected("duplicate key (already written)")


def _every_person(found: DetectedImage, source: str, root: Path, writer: ShardWriter, out: Path,
                  summary: AlignSummary) -> list[DetectedImage]:
    """One item per person of FOUND (`--person all`) whose sample is not written yet; a person with
    too few keypoints is rejected under its own key."""
    items = []
    for k in range(max(1, len(found.people))):
        stem = found.stem if k == 0 else f"{found.stem}-p{k}"
        key = make_key(source, stem)
        if writer.has(key):
            summary.skipped += 1
            continue
        try:
            items.append(found if k == 0 else found.as_person(k, stem, key))
        except Rejected as e:
            reject_file(out, key, found.path.relative_to(root), str(e), summary)
    return items


def _write_aligned(tasks: list, detected: Iterator, writer: ShardWriter, out: Path, root: Path, source: str,
                   space: FullBodySpace | None, settings: AlignSettings, summary: AlignSummary, done: int,
                   total: int, progress: Callable[[int, int], None] | None) -> int:
    """Write the aligned full-body images of TASKS as they are (no fit); returns the new `done`."""
    for path, _, key, _ in tasks:
        found = next(detected)
        try:
            if isinstance(found, Rejected):
                raise found
            _write(writer, build_aligned_sample(found, root, source, space, settings))
        except Rejected as e:
            reject_file(out, key, path.relative_to(root), str(e), summary)
        else:
            summary.written += 1
            summary.kinds["full"] += 1
            summary.without_keypoints += found.keypoints is None and settings.detector != NO_DETECTOR
        done += 1
        if progress:
            progress(done, total)
    return done


def _write_overlays(folder: Path, root: Path, aligned: list, model, settings: AlignSettings) -> None:
    """OVERLAY/<relative path>.jpg (`-p{k}` added for the k-th person) for each (item, fit, meta) of a
    batch, nested like the input; the meshes are posed together."""
    from mst_pipeline.align.overlay import fitted_bodies, overlay_picture, write_overlay

    vertices, joints = fitted_bodies(model, [fit for _, fit, _ in aligned], settings.device)
    faces = model.faces
    for (item, fit, meta), verts, joint in zip(aligned, vertices, joints, strict=True):
        loss = sum(fit.losses.values())
        legend = f"{meta['kind']} | {meta['tier']} | {fit.visible} visible | loss {loss:.3g}"
        picture = overlay_picture(item.image, item.keypoints.groups(), item.keypoints.targets()[:, :2],
                                  item.confidence >= settings.smplify.confidence, verts, joint, faces, legend)
        name = item.path.relative_to(root).with_suffix("").as_posix() + (f"-p{item.person}" if item.person else "")
        write_overlay(folder / f"{name}.jpg", picture)



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


def build_aligned_sample(item: DetectedImage, root: Path, source: str, space: FullBodySpace | None,
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
        **item.people_meta(),
    }
    try:
        return encode_sample(source, item.stem, item.image, fields, mask=item.mask, ext=ext,
                             encoded=encoded if item.mask is None else None)
    except ValueError as e:
        raise Rejected(f"invalid sample ({e})") from None


def provenance(space: FullBodySpace, prior, model) -> dict[str, Any]:
    """What a fitted sample was aligned with, for its meta (`aligned_with`): the space (by
    `FullBodySpace.digest`, and where it came from: "default" is the built-in one), the pose prior
    (by a hash of its weights; None: no prior) and the body model's keypoint convention
    (`mst_pipeline.body.conventions`; "model": its own points)."""
    import hashlib

    prior_hash = None
    if prior is not None:
        h = hashlib.sha256()
        for name, t in sorted(prior.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().numpy().tobytes())
        prior_hash = h.hexdigest()[:16]
    kp = getattr(model, "keypoints", None)
    return {"space": space.digest(), "space_source": space.source, "prior": prior_hash,
            "keypoints": f"{kp.convention}:{kp.digest()}" if kp is not None else "model"}


def build_sample(item: DetectedImage, fit: FitResult, root: Path, source: str, space: FullBodySpace,
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
        "aligned_with": settings.provenance,
        **item.people_meta(),
    }
    try:
        return encode_sample(source, item.stem, item.image, fields, mask=item.mask, ext=ext)
    except ValueError as e:
        raise Rejected(f"invalid sample ({e})") from None


def _pad(betas: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[:min(n, len(betas))] = betas[:n]
    return out


