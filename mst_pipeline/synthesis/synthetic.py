"""A small multi-source set of synthetic figures with exact homographies (`mst synthetic`).

Each figure is defined once in full-body space (the unit square, docs/mst.md, "Geometry") and rasterised into
several views: a full-body portrait at the base resolution, an upper-body crop and a face crop at
higher pixel density. Because a view is an exact scale+translation of full-body space, every
sample's H is known exactly, which makes the set a ground truth for the shard tools, the
trainer's patch sampler and the preview. Fine shirt stripes carry detail that only the
high-density sources resolve, so multi-source training has something to learn from them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.progress import Progress

from mst_pipeline.shards.writer import ShardWriter, encode_image, encode_sample
from uh_train.format.geometry import apply_homography, density, full_image_homography, image_region, scale_translate

SUPERSAMPLE = 3

# BODY_25 slots (OpenPose order).
BODY25 = ("nose", "neck", "rshoulder", "relbow", "rwrist", "lshoulder", "lelbow", "lwrist", "midhip",
          "rhip", "rknee", "rankle", "lhip", "lknee", "lankle", "reye", "leye", "rear", "lear",
          "lbigtoe", "lsmalltoe", "lheel", "rbigtoe", "rsmalltoe", "rheel")


@dataclass
class Figure:
    joints: dict[str, np.ndarray]  # name -> (x, y) in full-body space
    head_centre: np.ndarray
    head_radius: float
    limb: float  # limb half-thickness, full-body units
    skin: tuple[int, int, int]
    shirt: tuple[int, int, int]
    stripe: tuple[int, int, int]
    trousers: tuple[int, int, int]
    hair: tuple[int, int, int]
    background: tuple[int, int, int]
    stripe_period: float


def random_figure(rng: np.random.Generator) -> Figure:
    """A figure standing in the central strip, head top near y=0.04, feet near y=0.96."""
    top, feet = 0.04 + rng.uniform(-0.01, 0.02), 0.96 + rng.uniform(-0.01, 0.01)
    height = feet - top
    cx = 0.5 + rng.uniform(-0.02, 0.02)
    hr = height * rng.uniform(0.055, 0.065)
    head = np.array([cx, top + hr])
    neck = np.array([cx, top + 2 * hr + 0.01])
    shoulder_w = height * rng.uniform(0.10, 0.13)
    hip_y = top + height * 0.53
    hip_w = height * rng.uniform(0.06, 0.08)
    j: dict[str, np.ndarray] = {"neck": neck, "midhip": np.array([cx, hip_y])}
    upper_arm, forearm = height * 0.17, height * 0.15
    for side, sign in (("r", -1.0), ("l", 1.0)):
        sh = np.array([cx + sign * shoulder_w, neck[1] + 0.015])
        # arm elevation from hanging down (0) to horizontal (pi/2)
        a1 = rng.uniform(0.15, 1.2)
        a2 = a1 + rng.uniform(-0.3, 0.6)
        el = sh + upper_arm * np.array([sign * np.sin(a1), np.cos(a1)])
        wr = el + forearm * np.array([sign * np.sin(a2), np.cos(a2)])
        hip = np.array([cx + sign * hip_w, hip_y])
        spread = rng.uniform(0.0, 0.12)
        kn = hip + height * 0.22 * np.array([sign * np.sin(spread), np.cos(spread)])
        an = np.array([kn[0] + sign * rng.uniform(0.0, 0.02), feet - 0.02])
        j.update({f"{side}shoulder": sh, f"{side}elbow": el, f"{side}wrist": wr, f"{side}hip": hip,
                  f"{side}knee": kn, f"{side}ankle": an,
                  f"{side}heel": an + np.array([-sign * 0.005, 0.015]),
                  f"{side}bigtoe": an + np.array([sign * 0.005, 0.02]) + np.array([0.0, 0.0]),
                  f"{side}smalltoe": an + np.array([sign * 0.02, 0.018])})
    j["nose"] = head + np.array([0.0, hr * 0.2])
    j["reye"] = head + np.array([-hr * 0.35, -hr * 0.1])
    j["leye"] = head + np.array([hr * 0.35, -hr * 0.1])
    j["rear"] = head + np.array([-hr * 0.95, 0.0])
    j["lear"] = head + np.array([hr * 0.95, 0.0])

    def colour(lo: int, hi: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(lo, hi, size=3))

    skin_tone = rng.uniform(0.35, 1.0)
    skin = (int(230 * skin_tone + 20), int(180 * skin_tone + 20), int(150 * skin_tone + 15))
    return Figure(
        joints=j, head_centre=head, head_radius=hr, limb=height * rng.uniform(0.022, 0.03), skin=skin,
        shirt=colour(20, 235), stripe=colour(20, 235), trousers=colour(10, 160), hair=colour(5, 120),
        background=colour(170, 250), stripe_period=rng.uniform(0.006, 0.012),
    )


def keypoints(fig: Figure, region: np.ndarray) -> dict[str, np.ndarray]:
    """BODY_25 in full-body space, confidence 1 where the joint lies inside the view's region."""
    x0, y0 = region.min(axis=0)
    x1, y1 = region.max(axis=0)
    body = np.zeros((25, 3))
    for i, name in enumerate(BODY25):
        p = fig.joints[name]
        body[i, :2] = p
        body[i, 2] = float(x0 <= p[0] <= x1 and y0 <= p[1] <= y1)
    return {"body": body, "lhand": np.zeros((21, 3)), "rhand": np.zeros((21, 3)), "face": np.zeros((70, 3))}


def render(fig: Figure, H: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rasterise the figure into an image whose pixel -> full-body map is H (scale+translation)."""
    ss = SUPERSAMPLE
    to_px = np.linalg.inv(H)

    def px(p: np.ndarray) -> tuple[float, float]:
        q = apply_homography(to_px, np.asarray(p)[None])[0] * ss
        return float(q[0]), float(q[1])

    unit = abs(to_px[0, 0]) * ss  # pixels per full-body unit in the supersampled canvas
    W, Hh = width * ss, height * ss
    img = Image.new("RGB", (W, Hh), fig.background)
    draw = ImageDraw.Draw(img)
    j = fig.joints

    def capsule(a: np.ndarray, b: np.ndarray, r: float, colour: tuple[int, int, int], d=draw) -> None:
        pa, pb, rp = px(a), px(b), r * unit
        d.line([pa, pb], fill=colour, width=max(1, int(round(2 * rp))))
        for p in (pa, pb):
            d.ellipse([p[0] - rp, p[1] - rp, p[0] + rp, p[1] + rp], fill=colour)

    for side in "rl":  # legs and feet
        capsule(j[f"{side}hip"], j[f"{side}knee"], fig.limb * 1.3, fig.trousers)
        capsule(j[f"{side}knee"], j[f"{side}ankle"], fig.limb * 1.1, fig.trousers)
        capsule(j[f"{side}heel"], j[f"{side}smalltoe"], fig.limb * 0.6, (40, 30, 30))
    # torso with stripes: drawn into a mask, stripes computed in full-body coordinates
    torso = [j["rshoulder"], j["lshoulder"], j["lhip"] + [fig.limb, 0], j["rhip"] - [fig.limb, 0]]
    mask = Image.new("L", (W, Hh), 0)
    ImageDraw.Draw(mask).polygon([px(p) for p in torso], fill=255)
    ys = (np.arange(Hh) + 0.5) / ss
    fy = H[1, 1] * ys + H[1, 2]
    stripes = (np.sin(2 * np.pi * fy / fig.stripe_period) > 0)[:, None, None]
    pattern = np.where(stripes, np.array(fig.stripe, np.uint8), np.array(fig.shirt, np.uint8))
    pattern = np.broadcast_to(pattern, (Hh, W, 3)).copy()
    img.paste(Image.fromarray(pattern), (0, 0), mask)
    for side in "rl":  # arms over the torso
        capsule(j[f"{side}shoulder"], j[f"{side}elbow"], fig.limb, fig.shirt)
        capsule(j[f"{side}elbow"], j[f"{side}wrist"], fig.limb * 0.8, fig.skin)
        capsule(j[f"{side}wrist"], j[f"{side}wrist"], fig.limb * 1.3, fig.skin)
    capsule(j["neck"], fig.head_centre, fig.limb * 0.9, fig.skin)
    hc, hr = px(fig.head_centre), fig.head_radius * unit
    draw.ellipse([hc[0] - hr, hc[1] - hr * 1.1, hc[0] + hr, hc[1] + hr * 1.05], fill=fig.skin)
    draw.chord([hc[0] - hr * 1.05, hc[1] - hr * 1.2, hc[0] + hr * 1.05, hc[1] + hr * 0.6], 180, 360, fill=fig.hair)
    er = max(0.5, hr * 0.12)
    for eye in ("reye", "leye"):
        e = px(j[eye])
        draw.ellipse([e[0] - er, e[1] - er, e[0] + er, e[1] + er], fill=(30, 20, 20))
    n = px(j["nose"])
    draw.line([(n[0] - hr * 0.3, n[1] + hr * 0.35), (n[0] + hr * 0.3, n[1] + hr * 0.35)],
              fill=(150, 50, 50), width=max(1, int(hr * 0.08)))
    return np.asarray(img.resize((width, height), Image.Resampling.BOX))


def views(fig: Figure, res: int, rng: np.random.Generator) -> list[tuple[str, str, np.ndarray, int, int]]:
    """(source, kind, H, width, height) of each view of a figure."""
    out = [("synth_full", "full", full_image_homography(res // 2, res), res // 2, res)]
    # upper body: head to hips at 2.5x the full-body density, with a jittered crop
    d_up = 2.5 * res
    top = fig.head_centre[1] - 2 * fig.head_radius + rng.uniform(-0.02, 0.0)
    left = fig.joints["neck"][0] - 0.2 + rng.uniform(-0.02, 0.02)
    w_up, h_up = int(0.4 * d_up), int(0.5 * d_up)
    out.append(("synth_upper", "upper", scale_translate(1 / d_up, 1 / d_up, left, top), w_up, h_up))
    # face: a square around the head at 4x the full-body density
    d_face = 4.0 * res
    side = 5 * fig.head_radius
    c = fig.head_centre + rng.uniform(-0.2, 0.2, size=2) * fig.head_radius
    n_face = int(side * d_face)
    out.append(("synth_face", "face",
                scale_translate(1 / d_face, 1 / d_face, c[0] - side / 2, c[1] - side / 2), n_face, n_face))
    return out


def write_synthetic(out: str | Path, n: int = 32, res: int = 256, seed: int = 0,
                    max_count: int = 200) -> dict[str, int]:
    """Write n figures x 3 sources into `out`. Resumable: keys already in complete shards are skipped."""
    out = Path(out)
    writers = {s: ShardWriter(out, s, max_count=max_count, update_manifest=False)
               for s in ("synth_full", "synth_upper", "synth_face")}
    counts = dict.fromkeys(writers, 0)
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("rendering synthetic figures", total=n)
            for i in range(n):
                rng = np.random.default_rng([seed, i])
                fig = random_figure(rng)
                for source, kind, H, w, h in views(fig, res, rng):
                    stem = f"fig{i:06d}"
                    writer = writers[source]
                    if writer.has(f"{source}/{stem}"):
                        counts[source] += 1
                        continue
                    image = render(fig, H, w, h)
                    region = image_region(H, w, h)
                    data = encode_image(image, "png")
                    fields = {
                        "kind": kind, "tier": "LR" if kind == "full" else "HR", "H": H, "region": region,
                        "density": density(H, w, h), "keypoints": keypoints(fig, region),
                        "smpl": None, "fit": None,
                        "orig": {"path": f"synthetic/{source}/{stem}.png",
                                 "sha256": hashlib.sha256(data).hexdigest(), "width": w, "height": h},
                    }
                    writer.write(encode_sample(source, stem, image, fields, ext="png"))
                    counts[source] += 1
                progress.advance(task)
    finally:
        for writer in writers.values():
            writer.close()
        from mst_pipeline.shards.writer import write_manifest

        write_manifest(out)
    return counts
