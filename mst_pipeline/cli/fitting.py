"""`mst space`, `mst fit-prior`, `mst fit-hands`: what the fits measure and learn from a full-body set."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import typer

from mst_pipeline.cli.app import app, check_fit_inputs, err, usable_device
from mst_pipeline.detect.quiet import DivertedStderr
from mst_pipeline.fitting import FIT_BATCH, MIN_STEPS
from uh_train.format import cli_args


@app.command("space", epilog=cli_args.examples(
    "mst space shhq/ --out space.json",
    "mst space shhq/ --out space.json --pare pare_checkpoint.ckpt --device cuda",
))
def space_cmd(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="Folder of full-body images."),
    out: Path = typer.Option(Path("space.json"), "--out", "-o", help="Space file to write (+ .npz of poses).",
                             callback=cli_args.file_to_write),
    detector: str = typer.Option("mediapipe", help="Keypoints: mediapipe | openpose-json | mmpose."),
    keypoints_dir: Path | None = typer.Option(None, help="Folder of OpenPose JSON files (openpose-json)."),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file; default: the open model."),
    device: str = typer.Option("auto", help="Torch device for the fits: auto (cuda when there is a GPU, else "
                               "cpu), cpu, cuda, cuda:1.", callback=cli_args.torch_device_or_auto),
    batch: int = typer.Option(FIT_BATCH, "--batch", help="Images fitted together (64: batched L-BFGS's speed-up "
                              "over per-image fits is 17-26x there, 6.5x at 16).", callback=cli_args.at_least_one),
    batch_size: int | None = typer.Option(None, "--batch-size", hidden=True, callback=cli_args.at_least_one),
    iterations: int = typer.Option(400, help="SMPLify-P iterations per image.", callback=cli_args.at_least_one),
    pare: Path | None = typer.Option(None, help="PARE checkpoint (pare_checkpoint.ckpt): start the fits from "
                                     "PARE and take the mean pitch from its global orientations; default: the "
                                     "keypoint start, and the pitch from the keypoints' posture through the "
                                     "detector's calibrated response (else from the feet)."),
    pitch: float | None = typer.Option(None, "--pitch", help="The mean camera pitch ô in degrees (positive: "
                                       "looking down), when it is known: used as it is instead of measured. The "
                                       "measured mean of 24 images scatters by about 1° (docs/mst.md, "
                                       "\"Mean pitch\")."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' own messages (mediapipe, "
                                 "TFLite, absl) on the terminal; by default they go to OUT with suffix .log."),
) -> None:
    """Fit a full-body dataset and store its average camera ᾱ, mean pitch and fitted poses.

    The mean pitch ô is measured first (from the keypoints' posture through the detector's
    calibrated pitch response, from the feet without one, or from PARE with --pare) and its spread
    is recorded in the space file; the fits then use Eq. 1's pitch term towards it.
    """
    from mst_pipeline.body import load_body_model
    from mst_pipeline.fitting.smplify import SmplifyConfig
    from mst_pipeline.fitting.space_fit import build_space

    check_fit_inputs(dataset, pare)
    batch = cli_args.renamed(ctx, "batch", batch_size, "--batch-size")
    device = usable_device(device)
    diverted = None if verbose else DivertedStderr(out.with_suffix(".log"))
    with contextlib.ExitStack() as stack:
        if diverted is not None:  # as `mst align`: the keypoint models' C++ messages go to the log
            err.file = stack.enter_context(diverted)
            stack.callback(setattr, err, "file", None)
        try:
            model = load_body_model(body_model, detector=detector).to(device)
            result, rejected = build_space(dataset, model, detector=detector, keypoints_dir=keypoints_dir,
                                           device=device, batch_size=batch,
                                           config=SmplifyConfig(iterations=iterations), pare=pare,
                                           pitch=None if pitch is None else math.radians(pitch))
        except (ValueError, RuntimeError, OSError) as e:
            err.print(f"[red]error:[/red] {e}")
            for line in diverted.captured()[-20:] if diverted is not None else []:
                err.print(f"  | {line}", markup=False, highlight=False)
            raise typer.Exit(1) from None
    result.save(out)
    s, tx, ty = result.cam_bar
    spread = result.pitch_spread or {}
    how = f"from {spread.get('from', '?')} of {spread.get('count', 0)} images"
    if "std" in spread:
        how += f", std {spread['std']:.4f}"
    err.print(f"wrote {out}: {result.count} images fitted ({rejected} rejected), cam_bar ({s:.4f}, {tx:.4f}, "
              f"{ty:.4f}), mean pitch {result.pitch:.4f} rad ({how}), density {result.density:.0f}")
    if diverted is not None and diverted.kept:
        err.print(f"{diverted.kept} lines of messages from the libraries (the keypoint models) in "
                  f"{out.with_suffix('.log')}; --verbose shows them")


@app.command("fit-prior", epilog=cli_args.examples(
    "mst fit-prior space.json --out prior.ckpt",
    "mst fit-prior poses.npz --out prior.ckpt --epochs 400 --device cuda",
))
def fit_prior(
    ctx: typer.Context,
    poses: Path = typer.Argument(..., help="`mst space` output (space.json with its .npz) or an .npz with "
                                 "`pose` [N, 72] or [N, 63]."),
    out: Path = typer.Option(Path("prior.ckpt"), "--out", "-o", help="Prior checkpoint (VPoser snapshot layout).",
                             callback=cli_args.file_to_write),
    epochs: int = typer.Option(200, help="Training epochs (more when a small set's epochs would take fewer than "
                               "--min-steps steps).", callback=cli_args.at_least_one),
    min_steps: int = typer.Option(MIN_STEPS, "--min-steps", min=0, help="Fewest optimiser steps: a set no larger "
                                  "than a batch takes one step per epoch, and a prior of a few hundred steps "
                                  "reproduces its poses poorly."),
    batch: int = typer.Option(256, "--batch", help="Poses per training step.", callback=cli_args.at_least_one),
    batch_size: int | None = typer.Option(None, "--batch-size", hidden=True, callback=cli_args.at_least_one),
    lr: float = typer.Option(1e-3, help="Adam learning rate.", callback=cli_args.positive),
    kl_weight: float = typer.Option(5e-3, help="Weight of the KL term.", callback=cli_args.non_negative),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="Torch device: auto (cuda when there is a GPU, else cpu), cpu, cuda, "
                               "cuda:1.", callback=cli_args.torch_device_or_auto),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file whose vertices the reconstruction "
                                           "loss compares; default: the open model."),
    vertex_step: int = typer.Option(16, min=1, help="Compare every N-th vertex of the mesh (1: all; fewer is "
                                    "faster)."),
    mirror: bool = typer.Option(True, "--mirror/--no-mirror", help="Also train on each pose's left-right mirror "
                                "image, so the prior has no sideways bias a small pose set happens to have."),
) -> None:
    """Train the VPoser-v2-architecture pose prior on the full-body set's fitted poses (App. B).

    Loss as VPoser's: 4 · mean L1 distance between the body-model vertices of the decoded and the
    input pose + KL-weight · KL.
    """
    import numpy as np

    from mst_pipeline.body import load_body_model
    from mst_pipeline.fitting.prior import save_prior, train_prior
    from mst_pipeline.space import load_space

    batch = cli_args.renamed(ctx, "batch", batch_size, "--batch-size")
    device = usable_device(device)
    try:
        if poses.suffix == ".json":
            data = load_space(poses).poses
            if data is None:
                raise ValueError(f"{poses} lists no fitted poses (run `mst space` on a full-body set)")
        else:
            with np.load(poses, allow_pickle=False) as z:
                data = z["pose"]
        body = load_body_model(body_model)
        prior, stats = train_prior(data, epochs=epochs, batch_size=batch, lr=lr, kl_weight=kl_weight,
                                   seed=seed, device=device, body=body, vertex_step=vertex_step, mirror=mirror,
                                   min_steps=min_steps)
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    save_prior(prior, out, meta={"poses": str(poses.name), "epochs": stats.epochs, "steps": stats.steps,
                                 "num_poses": stats.num_poses,
                                 "mirrored": stats.mirrored, "loss": "vertices", "num_vertices": stats.num_vertices})
    err.print(f"wrote {out}: {stats.num_poses} poses{' and their mirror images' if stats.mirrored else ''}, "
              f"{stats.epochs} epochs ({stats.steps} steps), vertex error "
              f"{stats.final_reconstruction:.4f} (L1, {stats.num_vertices} vertices), KL {stats.final_kl:.2f}")


@app.command("fit-hands", epilog=cli_args.examples(
    "mst fit-hands shards/shhq --out hand_poses.npz",
))
def fit_hands(
    shards: list[Path] = typer.Argument(..., help="Shard folders written by `mst align` (the full-body set); "
                                        "their hand keypoints are fitted."),
    out: Path = typer.Option(Path("hand_poses.npz"), "--out", "-o", help="Hand pose set to write (.npz)."),
    body_model: Path | None = typer.Option(None, help="Body model with a finger skeleton; default: the open model."),
    min_points: int = typer.Option(15, help="Fit a hand only with at least this many confident keypoints (of 21)."),
    min_confidence: float = typer.Option(0.3, help="Keypoint confidence below which a keypoint is ignored."),
    max_error: float = typer.Option(0.06, help="Drop fits whose RMS reprojection error exceeds this many hand "
                                    "sizes."),
    iterations: int = typer.Option(300, help="Optimiser steps per hand."),
) -> None:
    """Fit finger poses to the hand keypoints of aligned shards, for `mst render-hands --hand-poses`.

    Each confident hand (OpenPose's 21 keypoints) is fitted with the body model's finger skeleton
    (15 joints; flexion, abduction and the thumb's twist) seen by its own orthographic camera.
    """
    from mst_pipeline.body import load_body_model
    from mst_pipeline.body.fingers import finger_rigs
    from mst_pipeline.fitting.hand_poses import fit_hand_poses

    try:
        model = load_body_model(body_model)
        rigs = finger_rigs(model, log=lambda m: err.print(m))
        if rigs is None:
            raise ValueError("this body model has no finger skeleton; fitting finger poses needs the open default "
                             "model")
        t0 = time.perf_counter()
        counts = fit_hand_poses(shards, out, model, rigs, min_points=min_points, min_confidence=min_confidence,
                                max_error=max_error, iterations=iterations, log=lambda m: err.print(m))
    except (ValueError, RuntimeError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    err.print(f"wrote {out}: {counts['kept']} hand poses of {counts['hands']} hands ({counts['dropped']} fits "
              f"dropped) in {time.perf_counter() - t0:.0f} s")
