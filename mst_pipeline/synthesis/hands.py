"""`mst render-hands`: synthetic hands rendered with Blender in full-body space (paper App. A).

For each index the command poses the body model (a pose from a pose set, or the built-in arm
prior; fingers from a fitted hand pose set, or a procedural curl), cuts out the forearm and hand,
and maps the mesh into full-body space with the full-body set's average weak-perspective camera ᾱ
(`mst_pipeline.space`, paper Eq. 2). Blender renders it orthographically over a square crop of
full-body space, so the image pixel -> full-body map is a known scale + translation: each
sample's H is exact. The RGBA render is composited onto a real image patch (`--backgrounds DIR`:
photos or aligned shards), and `mask.png` covers the whole composite, which is the training
image; over the generated fabric fallback the mask is the hand's alpha.

Blender runs in worker subprocesses (`blender_scripts/render_hands.py --serve`), so a crash in
one render costs that sample only: it goes to `rejects.jsonl` and the worker is restarted. Every
random choice of a sample comes from `numpy.random.default_rng([seed, index])`, so the same seed
and index give identical image bytes, and a re-run skips keys already in complete shards.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mst_pipeline.body import load_body_model
from mst_pipeline.body.poses import load_pose_set
from mst_pipeline.shards.rejects import append_reject
from mst_pipeline.shards.writer import ShardWriter, encode_sample, write_manifest
from mst_pipeline.space import FullBodySpace, crop_camera, load_space
from mst_pipeline.synthesis.backgrounds import (
    Backgrounds,
    background_name,
    composite,
    fabric_background,
    find_backgrounds,
    list_photos,
)
from mst_pipeline.synthesis.blender import BlenderWorker, RenderError, blender_command, gpu_present, scratch_folder
from mst_pipeline.synthesis.hand_geometry import HandGeometry, HandPlan, hand_crop, plan_hand, pose_hand
from uh_train.format.geometry import density, image_region, square_homography

SOURCE = "hands"
MIN_COVERAGE = 0.005  # a render whose hand covers less of the image than this is rejected


@dataclass
class RenderSettings:
    res: int = 512
    engine: str = "auto"  # auto | cycles | eevee | workbench
    samples: int = 16
    image_format: str = "jpg"
    threads: int = 0  # per worker; 0 = CPU cores / workers
    timeout: float = 300.0
    hdr: str | None = None


@dataclass
class RunSummary:
    rendered: int = 0
    skipped: int = 0
    rejected: int = 0
    seconds: float = 0.0
    render_seconds: list[float] = field(default_factory=list)


def hand_stem(index: int) -> str:
    return f"hand{index:06d}"


def build_sample(plan: HandPlan, geom: HandGeometry, crop: tuple[float, float, float], rgba: np.ndarray,
                 rgba_bytes: bytes, space: FullBodySpace, settings: RenderSettings, engine: str,
                 backgrounds: Backgrounds | None = None):
    """Composite the render and build the shard sample (exact H: pixel -> crop of full-body space).

    Over a real patch (BACKGROUNDS) the whole composite is the training image: the mask covers
    the hand and every real background pixel. Over the generated fabric only the hand counts.
    """
    res = settings.res
    x0, y0, side = crop
    coverage = float(rgba[..., 3].mean()) / 255.0
    if coverage < MIN_COVERAGE:
        raise RenderError(f"the hand covers only {coverage:.2%} of the image")
    rng = np.random.default_rng(plan.background_seed)
    if plan.background:
        if backgrounds is None:
            backgrounds = Backgrounds([plan.background])
        bg, real = backgrounds.patch(plan.background, side, res, rng)
    else:
        bg, real = fabric_background(res, rng), None
    image, mask = composite(rgba, bg, real)
    H = square_homography(x0, y0, side, res)
    region = image_region(H, res, res)
    lo, hi = region.min(axis=0), region.max(axis=0)

    def visible(p: np.ndarray) -> np.ndarray:
        return np.all((p >= lo) & (p <= hi), axis=-1).astype(np.float64)

    body = np.concatenate([geom.body25, visible(geom.body25)[:, None]], axis=1)
    hand = np.zeros((21, 3))
    hand[list(geom.hand_slots), :2] = geom.hand_keypoints
    hand[list(geom.hand_slots), 2] = visible(geom.hand_keypoints)
    empty = np.zeros((21, 3))
    keypoints = {"body": body, "lhand": hand if plan.side == "left" else empty,
                 "rhand": hand if plan.side == "right" else empty, "face": np.zeros((70, 3))}
    betas10 = np.zeros(10)
    betas10[: min(10, len(plan.betas))] = plan.betas[:10]
    stem = hand_stem(plan.index)
    fields = {
        "kind": "hand", "tier": "HR", "H": H, "region": region, "density": density(H, res, res),
        "keypoints": keypoints,
        "smpl": {"betas": betas10, "pose": plan.pose, "cam": crop_camera(space.cam_bar, x0, y0, side),
                 "cam_bar": list(space.cam_bar)},
        "fit": None,
        "orig": {"path": f"{SOURCE}/{stem}.png", "sha256": hashlib.sha256(rgba_bytes).hexdigest(),
                 "width": res, "height": res},
        "render": {"engine": engine, "samples": settings.samples, "side": plan.side,
                   "fingers": "fitted" if plan.fingers is not None else "curl",
                   "finger_pose": plan.finger_source, "curl": plan.curl if plan.fingers is None else None,
                   "coverage": coverage, "texture": Path(plan.texture).name if plan.texture else None,
                   "background": background_name(plan.background)},
    }
    return encode_sample(SOURCE, stem, image, fields, mask=mask, ext=settings.image_format)


def render_hands(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    settings: RenderSettings | None = None,
    workers: int = 1,
    model: Any = None,
    body_model: str | os.PathLike | None = None,
    space_file: str | os.PathLike | None = None,
    poses_file: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
    textures: str | os.PathLike | None = None,
    hand_poses_file: str | os.PathLike | None = None,
    worker_command: Sequence[str] | None = None,
    max_count: int = 500,
    progress: bool = True,
    on_written: Callable[[str], None] | None = None,
) -> RunSummary:
    """Render hands 0..n-1 into shards `hands-000-*.tar` of OUT. Resumable and deterministic.

    MODEL: a loaded body model (else BODY_MODEL's file or the open default). BACKGROUNDS: a
    folder of photos or of aligned shards (upper-body samples) to composite onto; without it a
    generated fabric. HAND_POSES_FILE: finger poses from `mst fit-hands` (else the procedural
    curl). Failed renders are appended to OUT/rejects.jsonl and the run goes on.
    """
    import torch

    settings = settings or RenderSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    engine = settings.engine
    if engine == "auto":
        engine = "eevee" if gpu_present() else "cycles"
    if settings.hdr is not None and not Path(settings.hdr).is_file():
        raise ValueError(f"HDR file {settings.hdr} does not exist")
    background_set, texture_files = find_backgrounds(backgrounds), list_photos(textures)
    background_items = background_set.items if background_set is not None else []
    model = model if model is not None else load_body_model(body_model)
    space = load_space(space_file, model)
    poses = load_pose_set(poses_file) if poses_file is not None else None
    hand_poses = rigs = None
    if hand_poses_file is not None:
        from mst_pipeline.body.fingers import finger_rigs
        from mst_pipeline.fitting.hand_poses import load_hand_poses

        hand_poses = load_hand_poses(hand_poses_file)
        rigs = finger_rigs(model)
        if rigs is None:
            raise ValueError("--hand-poses needs a body model with a finger skeleton (the open default model); "
                             "this SMPL-format model has none")
    workers = max(1, int(workers))
    threads = settings.threads or max(1, (os.cpu_count() or 1) // workers)
    summary = RunSummary()
    torch.set_num_threads(1)  # the mesh work is small; leave the cores to Blender
    command = list(worker_command) if worker_command else blender_command()
    writer = ShardWriter(out, SOURCE, part=0, max_count=max_count, update_manifest=False)
    todo = [i for i in range(n) if not writer.has(f"{SOURCE}/{hand_stem(i)}")]
    summary.skipped = n - len(todo)
    lock = threading.Lock()
    local = threading.local()
    all_workers: list[BlenderWorker] = []
    tmp = scratch_folder(out)

    def worker() -> BlenderWorker:
        if not hasattr(local, "worker"):
            with lock:
                local.worker = BlenderWorker(command, tmp / f"worker-{len(all_workers)}.log", settings.timeout)
                all_workers.append(local.worker)
        return local.worker

    def render_one(index: int):
        plan = plan_hand(index, seed, model.num_betas, space.pitch, poses, texture_files, background_items, hand_poses)
        with lock:  # torch and the model are shared between threads
            geom = pose_hand(model, plan, space, rigs)
        crop = hand_crop(geom, plan)
        mesh = tmp / f"{hand_stem(index)}.npz"
        np.savez(mesh, vertices=geom.vertices.astype(np.float32), faces=geom.faces.astype(np.int32))
        png = tmp / f"{hand_stem(index)}.png"
        job = {"mesh": str(mesh), "out": str(png), "res": settings.res, "crop": list(crop), "engine": engine,
               "samples": settings.samples, "threads": threads, "seed": plan.render_seed, "skin": list(plan.skin),
               "texture": plan.texture, "hdr": settings.hdr, "light": plan.light}
        try:
            seconds = worker().render(job)
            rgba_bytes = png.read_bytes()
        finally:
            mesh.unlink(missing_ok=True)
            png.unlink(missing_ok=True)
        rgba = np.asarray(Image.open(io.BytesIO(rgba_bytes)).convert("RGBA"))
        if rgba.shape != (settings.res, settings.res, 4):
            raise RenderError(f"render has shape {list(rgba.shape)}, expected {settings.res}x{settings.res} RGBA")
        sample = build_sample(plan, geom, crop, rgba, rgba_bytes, space, settings, engine, background_set)
        return sample, seconds

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with writer, Progress(*columns, disable=not progress, transient=True) as bar, \
                ThreadPoolExecutor(max_workers=workers) as pool:
            task = bar.add_task(f"rendering hands ({engine}, {settings.res} px)", total=len(todo))
            futures = {pool.submit(render_one, i): i for i in todo}
            for fut in as_completed(futures):
                index = futures[fut]
                try:
                    sample, seconds = fut.result()
                except Exception as e:  # noqa: BLE001 - every failure of one sample is a reject
                    append_reject(out, {"key": f"{SOURCE}/{hand_stem(index)}", "index": index,
                                         "error": f"{type(e).__name__}: {e}"})
                    summary.rejected += 1
                else:
                    writer.write(sample)
                    summary.rendered += 1
                    summary.render_seconds.append(seconds)
                    if on_written is not None:
                        on_written(sample.key)
                bar.advance(task)
    finally:
        for w in all_workers:
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        write_manifest(out)
    summary.seconds = time.perf_counter() - start
    return summary
