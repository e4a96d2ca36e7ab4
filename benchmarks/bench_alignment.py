"""The MST against the truth: SMPLify-P on the upper-body and face views of `mst render-people`
(keypoints without pixels) and the corner error of H(α, ᾱ) against each view's true H, on the
demo's 24 people and 60 held out, for the default fit and the alternatives to its pose prior, with
the floor no fit of a face's keypoints can be expected to beat."""

from __future__ import annotations

import time

import numpy as np

from mst_pipeline.body import view_confidence
from mst_pipeline.fitting import MIN_STEPS
from mst_pipeline.fitting.smplify import SmplifyConfig, smplify_p

PRIOR_EPOCHS = 100  # as `just demo` trains its prior (a set this small then takes MIN_STEPS steps)


def _shared_chain_floor(model, n: int, seed: int) -> np.ndarray:
    """Where a face lands in full-body space when everything about the person is known except how
    the chain from the pelvis to the head (spine1-3, neck, head) shares the head's rotation: the
    true pose and shape with that chain replaced by five equal shares of its true total rotation
    (the best guess when the joints bend independently and alike, as the renders' do). Returns the
    face's shift [n] in full-body units, the error no fit of a face's keypoints can avoid."""
    from scipy.spatial.transform import Rotation

    from mst_pipeline.space import default_space
    from mst_pipeline.synthesis.people_plan import JOINT, plan_person, pose_person

    space, chain = default_space(model), [JOINT[j] for j in ("spine1", "spine2", "spine3", "neck", "head")]
    shifts = []
    for index in range(n):
        plan = plan_person(index, seed, model.num_betas, space.pitch)
        pose = np.array(plan.pose).reshape(24, 3)
        total = np.eye(3)
        for j in chain:
            total = total @ Rotation.from_rotvec(pose[j]).as_matrix()
        shared = pose.copy()
        shared[chain] = Rotation.from_matrix(total).as_rotvec() / len(chain)
        true = pose_person(model, plan, space)
        plan.pose = shared.reshape(72).tolist()
        guess = pose_person(model, plan, space)
        head = true.dominant == JOINT["head"]
        shifts.append(np.linalg.norm(guess.vertices[head, :2].mean(0) - true.vertices[head, :2].mean(0)))
    return np.array(shifts)


def _render_alignment(model) -> list[str]:
    """The demo's MST check without its pixels: 24 `mst render-people` people at 128 px; the space
    and the pose prior from their full views and their mirror images (`mst space`, `mst fit-prior
    --epochs 100`); then SMPLify-P of the upper-body and face views and the corner error of
    H(α, ᾱ) against their true H, on the same 24 people and on 60 others (seed 1) fitted against
    the same space and prior; with and without the mirror images, θ̂ either way, and no prior."""
    from mst_pipeline.fitting.prior import train_prior
    from mst_pipeline.fitting.space_fit import feet_pitch, mean_pitch, space_from_fits
    from mst_pipeline.synthesis.people_truth import corner_error, truth_views

    views = truth_views(model, 24, seed=0, res=128)
    held_out = truth_views(model, 60, seed=1, res=128, kinds=("upper", "face"))
    full = [v for v in views if v["view"] == "full"]
    u, c = np.stack([v["targets"] for v in full]), np.stack([v["confidence"] for v in full])
    pitch, spread = mean_pitch(feet_pitch(model, u, c), "feet")
    fits = smplify_p(model, u, c, mean_pitch=pitch)
    poses = np.array([f.pose for f in fits])
    space = space_from_fits(np.array([f.cam for f in fits]), poses, np.array([f.betas for f in fits]),
                            np.full(len(fits), 128.0), "full", pitch=pitch, spread=spread)
    prior, _ = train_prior(poses, epochs=PRIOR_EPOCHS)
    one_sided, _ = train_prior(poses, epochs=PRIOR_EPOCHS, mirror=False)
    configs = {  # label: (fit settings, pose prior)
        "default (batched L-BFGS, 400 iterations, Geman-McClure, shape pull 1e-2, θ̂ the prior's symmetric "
        "reconstruction of the pose with the unseen joints at its typical pose, prior trained with mirror images)":
            (SmplifyConfig(), prior),
        "prior trained on the fitted poses alone (`--no-mirror`; otherwise the default)": (SmplifyConfig(), one_sided),
        "θ̂ the reconstruction of the current pose (`--prior-target reconstruct`, Eq. 1 as written; otherwise "
        "the default)": (SmplifyConfig(prior_mode="reconstruct"), prior),
        "the same with the prior trained on the fitted poses alone":
            (SmplifyConfig(prior_mode="reconstruct"), one_sided),
        "no pose prior (θ̂ = 0; otherwise the default)": (SmplifyConfig(), None),
    }
    lines = [
        "**Upper-body and face renders against their true H** (corner error, % of full-body space; "
        f"the space and a {PRIOR_EPOCHS}-epoch prior from the full views of 24 people as `just demo` makes them; "
        "keypoints as `mst render-people` writes them; *demo set*: those 24 people's views, *held out*: "
        "the views of 60 other people; *floor*: the error of a guess that knows each person's true pose "
        "and shape except how the five joints from the pelvis to the head share the head's rotation, "
        "and shares it equally (the best guess for the renders, whose joints bend independently and "
        "alike): about what a fit that sees only the face can reach; *rejected*: fits refused as implausible, "
        "left out of mean and worst):",
        "",
        "| fit | people | view | mean | worst | rejected | mean reprojection | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, (cfg, fit_prior) in configs.items():
        for people, vset in (("demo set (24)", views), ("held out (60)", held_out)):
            for kind in ("upper", "face"):
                vs = [v for v in vset if v["view"] == kind]
                t0 = time.perf_counter()
                fits = smplify_p(model, np.stack([v["targets"] for v in vs]),
                                 np.stack([v["confidence"] for v in vs]), prior=fit_prior,
                                 mean_pitch=space.pitch, config=cfg)
                sec = time.perf_counter() - t0
                err = np.array([corner_error(space.homography(f.cam, v["width"], v["height"]), v["H"], v["width"],
                                             v["height"]) if f.ok else np.inf for f, v in zip(fits, vs, strict=True)])
                ok = err[np.isfinite(err)]  # a rejected fit (`FitResult.failure`) is counted, not averaged
                lines.append(f"| {label} | {people} | {kind} | {100 * ok.mean():.2f} % | {100 * ok.max():.2f} % | "
                             f"{len(err) - len(ok)} | {np.mean([f.reprojection for f in fits]):.4f} | {sec:.0f} |")
    for people, n, seed in (("demo set (24)", 24, 0), ("held out (60)", 60, 1)):
        floor = _shared_chain_floor(model, n, seed)
        lines.append(f"| floor: the true pose and shape, the pelvis-to-head chain sharing its rotation equally "
                     f"| {people} | face | {100 * floor.mean():.2f} % | {100 * floor.max():.2f} % | – | – | – |")
    return lines + [""]


TRUE_PITCH_DEG = 4.0  # the renders' camera pitch (the known truth ô is measured against)
SEEDS, PEOPLE = (0, 1), 24  # 48 people over two seeds: the mean pitch of 24 scatters by about 1°, of 48 by 0.7°
OTHER_PITCHES_DEG = (0.0, 2.0, 6.0)  # the rest of 0-6°, by the lead row's recipe (`_other_pitches`)
SIZES = (256, 128)  # full views at 256 px (the side the pitch response is calibrated at) and at 128 px as the demo's


def _rendered(model, seeds, n, res, pitch):
    """`mst render-people`'s full, upper and face views of N people per seed, in memory: dicts with
    image, H, width, height, view, person, and the keypoints the renders' own files hold (targets
    [37, 2] normalised, confidence [37]), in the model's current convention."""
    from mst_pipeline.space import default_space, pixels_to_normalised
    from mst_pipeline.synthesis import mesh_render
    from mst_pipeline.synthesis.people import render_view, view_geometry
    from mst_pipeline.synthesis.people_plan import plan_person, pose_person, views
    from uh_train.format.geometry import apply_homography

    mesh_render.start()
    space = default_space(model)
    space.pitch = pitch
    out = []
    for seed in seeds:
        for index in range(n):
            plan = plan_person(index, seed, model.num_betas, pitch)
            geom = pose_person(model, plan, space)
            for view in views(geom, plan, res):
                g = view_geometry(model, plan, space, geom, view.name)  # the keypoint files' points
                points = np.concatenate([g.body25, g.hands["left"], g.hands["right"]])
                image, _ = render_view(geom, model.faces, plan, view)
                px = apply_homography(np.linalg.inv(view.H), points)
                inside = (px[:, 0] >= 0) & (px[:, 0] <= view.width) & (px[:, 1] >= 0) & (px[:, 1] <= view.height)
                out.append({"person": (seed, index), "view": view.name, "image": image, "H": view.H,
                            "width": view.width, "height": view.height,
                            "targets": np.where(inside[:, None], pixels_to_normalised(px, view.width, view.height), 0),
                            "confidence": inside.astype(np.float64)})
    return out


def _detected(detector, views):
    """The default detector's fitting input for each view, as a fit of its kind reads it (None where it
    finds no person)."""
    from mst_pipeline.detect.base import DetectionError
    from mst_pipeline.detect.persons import rank_people
    from mst_pipeline.detect.pool import fitting_input

    out = []
    for v in views:
        try:
            people = rank_people(detector(v["image"], None), v["width"], v["height"])
        except DetectionError:
            people = []
        out.append(fitting_input(people[0].keypoints, v["width"], v["height"], v["view"]) if people else None)
    return out


def _mst_run(model, views, inputs, res, true_pitch=None, min_steps=MIN_STEPS, config=None):
    """`mst space` on the full views (RES px), `mst fit-prior --epochs 100 --min-steps MIN_STEPS`, then
    SMPLify-P of the upper and face views (CONFIG, default: the CLI's): (ô in degrees, {kind: corner
    errors [n]}, {person: {kind: fitted/true scale}}). TRUE_PITCH (radians): use it as ô instead of
    measuring it (what the pitch's error costs)."""
    from mst_pipeline.fitting.prior import train_prior
    from mst_pipeline.fitting.space_fit import image_pitches, mean_pitch, space_from_fits
    from mst_pipeline.synthesis.people_truth import corner_error

    full = [(v, i) for v, i in zip(views, inputs, strict=True) if v["view"] == "full" and i is not None]
    u = np.stack([i[0] for _, i in full])
    c = view_confidence(model, "full", np.stack([i[1] for _, i in full]))  # as `mst space` and `mst align`
    pitch = mean_pitch(*image_pitches(model, u, c))[0] if true_pitch is None else true_pitch
    fits = [f for f in smplify_p(model, u, c, mean_pitch=pitch) if f.ok]
    poses = np.array([f.pose for f in fits])
    space = space_from_fits(np.array([f.cam for f in fits]), poses, np.array([f.betas for f in fits]),
                            np.full(len(fits), float(res)), "full", pitch=pitch)
    prior, _ = train_prior(poses, epochs=PRIOR_EPOCHS, min_steps=min_steps)
    errors, scales = {}, {}
    for kind in ("upper", "face"):
        pairs = [(v, i) for v, i in zip(views, inputs, strict=True) if v["view"] == kind]
        seen = [(v, i) for v, i in pairs if i is not None]
        c = view_confidence(model, kind, np.stack([i[1] for _, i in seen]))
        fits = smplify_p(model, np.stack([i[0] for _, i in seen]), c, prior=prior,
                         mean_pitch=space.pitch, config=config or SmplifyConfig())
        err = [np.inf] * (len(pairs) - len(seen))  # no person found: a miss
        for f, (v, _) in zip(fits, seen, strict=True):
            H = space.homography(f.cam, v["width"], v["height"])
            err.append(corner_error(H, v["H"], v["width"], v["height"]) if f.ok else np.inf)
            if f.ok:
                scales.setdefault(v["person"], {})[kind] = H[0, 0] / v["H"][0, 0]
        errors[kind] = np.array(err)
    return float(np.degrees(pitch)), errors, scales


def _error_cells(errors) -> str:
    """Table cells "upper mean | upper worst | face mean | face worst | misses" of `_mst_run`'s errors
    (a miss is inf: counted, not averaged)."""
    finite = {k: e[np.isfinite(e)] for k, e in errors.items()}
    misses = sum(int((~np.isfinite(e)).sum()) for e in errors.values())
    return (f"{100 * finite['upper'].mean():.2f} % | {100 * finite['upper'].max():.2f} % | "
            f"{100 * finite['face'].mean():.2f} % | {100 * finite['face'].max():.2f} % | {misses}")


def _detector_alignment(model) -> list[str]:
    """The MST as a user runs it: the default detector (mediapipe) on renders with a known camera
    pitch, against the renders' own keypoint files; both with the body model's keypoints in the
    convention of the keypoints' source (`mst_pipeline.body.conventions`)."""
    from mst_pipeline.body import use_convention
    from mst_pipeline.detect import make_detector

    t0 = time.perf_counter()
    rows = []
    for res in SIZES:
        use_convention(model, "openpose-json")
        views = _rendered(model, SEEDS, PEOPLE, res, np.radians(TRUE_PITCH_DEG))
        use_convention(model, "mediapipe")
        detected = _detected(make_detector("mediapipe"), views)
        rows.append((f"default detector (mediapipe), {res} px", *_mst_run(model, views, detected, res)))
        rows.append((f"the same with ô set to the truth, {res} px",
                     *_mst_run(model, views, detected, res, np.radians(TRUE_PITCH_DEG))))
        if res == SIZES[0]:  # θ̂ and the prior's training length, which a large set's prior differs in
            plain = SmplifyConfig(prior_mode="reconstruct")
            rows.append((f"the same with θ̂ the reconstruction of the current pose (`--prior-target reconstruct`), "
                         f"{res} px", *_mst_run(model, views, detected, res, config=plain)))
            rows.append((f"default detector, a prior of {PRIOR_EPOCHS} steps (`--min-steps 0`), {res} px",
                         *_mst_run(model, views, detected, res, min_steps=0)))
            rows.append((f"the same with θ̂ the reconstruction of the current pose, {res} px",
                         *_mst_run(model, views, detected, res, min_steps=0, config=plain)))
        use_convention(model, "openpose-json")
        rows.append((f"renders' own keypoint files (openpose-json), {res} px",
                     *_mst_run(model, views, [(v["targets"], v["confidence"]) for v in views], res)))
    lines = [
        f"**The MST as a user runs it** ({len(SEEDS) * PEOPLE} people of `mst render-people` over seeds "
        f"{', '.join(map(str, SEEDS))}, full views at {' and '.join(map(str, SIZES))} px, camera pitch "
        f"{TRUE_PITCH_DEG:.1f}°; `mst space` "
        f"on the full views, a {PRIOR_EPOCHS}-epoch prior (unless a row says otherwise), then SMPLify-P of the "
        "upper-body and face views at the CLI's defaults; corner error of H(α, ᾱ) against the true H in % of "
        "full-body space; a view whose "
        "person the detector misses counts as a miss; *face scale*: per person, the face crop's fitted "
        "scale over the upper-body crop's, each relative to its truth):",
        "",
        "| keypoints | ô (truth " + f"{TRUE_PITCH_DEG:.1f}°) | upper mean | upper worst | face mean | face worst | "
        "misses | face scale / upper scale: mean, worst |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, pitch, errors, scales in rows:
        both = np.array([s["face"] / s["upper"] for s in scales.values() if len(s) == 2])
        worst = both[np.argmax(np.abs(both - 1))] if len(both) else np.nan
        lines.append(f"| {label} | {pitch:+.2f}° | {_error_cells(errors)} | {both.mean():.3f}, {worst:.3f} |")
    use_convention(model, "openpose-json")
    return lines + ["", f"({time.perf_counter() - t0:.0f} s)", ""]


def _other_pitches(model) -> list[str]:
    """The lead row (default detector, 256 px, the CLI's defaults) for the same people rendered at
    the other camera pitches of 0-6°."""
    from mst_pipeline.body import use_convention
    from mst_pipeline.detect import make_detector

    t0 = time.perf_counter()
    lines = [
        f"**The same at other camera pitches** (the lead row's people, detector and defaults at {SIZES[0]} px; "
        f"{TRUE_PITCH_DEG:.0f}° is the table above):",
        "",
        "| camera pitch | ô | upper mean | upper worst | face mean | face worst | misses |",
        "|---|---|---|---|---|---|---|",
    ]
    for deg in OTHER_PITCHES_DEG:
        use_convention(model, "openpose-json")
        views = _rendered(model, SEEDS, PEOPLE, SIZES[0], np.radians(deg))
        use_convention(model, "mediapipe")
        pitch, errors, _ = _mst_run(model, views, _detected(make_detector("mediapipe"), views), SIZES[0])
        lines.append(f"| {deg:.0f}° | {pitch:+.2f}° | {_error_cells(errors)} |")
    use_convention(model, "openpose-json")
    return lines + ["", f"({time.perf_counter() - t0:.0f} s)", ""]


def _photo_face_scales(model, photos) -> list[tuple[str, float, float]]:
    """Per photo (an upper-body portrait): the face's scale from a face crop cut from it over the
    scale from the photo itself, (name, with the model's own keypoints, calibrated). Both images go
    through the default detector and SMPLify-P in the built-in space; the crop is a square of 2.2×
    the detected head's extent around it, so its true H is the photo's H shifted: the ratio of the
    two fits' scales should be 1."""
    from PIL import Image

    from mst_pipeline.body import use_convention
    from mst_pipeline.detect import make_detector
    from mst_pipeline.detect.persons import rank_people
    from mst_pipeline.detect.pool import fitting_input
    from mst_pipeline.space import default_space

    detector = make_detector("mediapipe")
    out = []
    for path in photos:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        kp = rank_people(detector(image, path), w, h)[0].keypoints
        head = kp.body[[0, 15, 16, 17, 18]]
        head = head[head[:, 2] >= 0.5, :2]
        centre, half = 0.5 * (head.min(0) + head.max(0)), 1.1 * float(np.ptp(head, axis=0).max())
        x0, y0 = (int(max(c - half, 0)) for c in centre)
        x1, y1 = int(min(centre[0] + half, w)), int(min(centre[1] + half, h))
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        crop_kp = rank_people(detector(crop, path), x1 - x0, y1 - y0)[0].keypoints
        ratios = []
        for backend in (None, "mediapipe"):
            if backend is None:
                model.use_keypoints(None)
            else:
                use_convention(model, backend)
            space = default_space(model)
            scales = []
            for pts, (iw, ih), kind in ((kp, (w, h), "upper"), (crop_kp, (x1 - x0, y1 - y0), "face")):
                u, c = fitting_input(pts, iw, ih, kind if backend else None)  # before: the body's ears everywhere
                c = view_confidence(model, kind, c)
                (fit,) = smplify_p(model, u[None], c[None], mean_pitch=space.pitch)
                scales.append(space.homography(fit.cam, iw, ih)[0, 0])
            ratios.append(scales[1] / scales[0])
        out.append((path.name, *ratios))
    use_convention(model, "openpose-json")
    return out


def _real_photos(model) -> list[str]:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from stage_plan import installed_photos

    rows = _photo_face_scales(model, installed_photos())
    lines = ["**Real photographs** (the upper-body portraits that ship inside installed packages, through the "
             "default detector; *face scale*: the face's scale in full-body space from a face crop cut from the "
             "photo over the scale from the photo itself; 1 is right):", "",
             "| photo | model's own keypoints | calibrated keypoints (mediapipe) |", "|---|---|---|"]
    lines += [f"| {name} | {own:.3f} | {cal:.3f} |" for name, own, cal in rows]
    return lines + [""]


def run() -> str:
    from mst_pipeline.body import load_body_model

    lines = ["## The MST against rendered truth", "",
             "`.venv/bin/python scripts/bench.py alignment` — open default body model, CPU.", ""]
    model = load_body_model()
    return "\n".join(lines + _detector_alignment(model) + _other_pitches(model) + _real_photos(model)
                     + _render_alignment(model))


if __name__ == "__main__":
    print(run())
