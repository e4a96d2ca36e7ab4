"""`mst align`: a folder of images into full-body space and shards (paper §3.1)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer

from mst_pipeline.cli.app import app, check_fit_inputs, err, usable_device
from mst_pipeline.detect.quiet import DivertedStderr
from mst_pipeline.fitting import FIT_BATCH
from uh_train.format import cli_args


def _part(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--part must look like k/n (e.g. 0/4), not {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise typer.BadParameter(f"--part k/n needs 0 <= k < n, got {text!r}")
    return k, n


@app.command(epilog=cli_args.examples(
    "mst align deepfashion/ --out shards/ --space space.json --prior prior.ckpt",
    "mst align shhq/ --aligned --tier HR --out shards/",
    "mst align photos/ --out shards/ --overlay checks/ --workers 4",
))
def align(
    ctx: typer.Context,
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
                                              "default: next to each image.", callback=cli_args.existing_folder),
    prior: Path | None = typer.Option(None, help="Pose prior (VPoser V02_05 snapshot or `mst fit-prior` file)."),
    pare: Path | None = typer.Option(None, help="PARE checkpoint (pare_checkpoint.ckpt) to start SMPLify-P "
                                     "from; default: the keypoint start."),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file; default: the open model."),
    device: str = typer.Option("auto", help="Torch device for the fits: auto (cuda when there is a GPU, else "
                               "cpu), cpu, cuda, cuda:1.", callback=cli_args.torch_device_or_auto),
    batch: int = typer.Option(FIT_BATCH, "--batch", help="Images fitted together (64: batched L-BFGS's speed-up "
                              "over per-image fits is 17-26x there, 6.5x at 16).", callback=cli_args.at_least_one),
    batch_size: int | None = typer.Option(None, "--batch-size", hidden=True, callback=cli_args.at_least_one),
    iterations: int = typer.Option(400, help="SMPLify-P iterations per image.", callback=cli_args.at_least_one),
    optimizer: str = typer.Option("batched-lbfgs", help="batched-lbfgs | adam | lbfgs."),
    prior_target: str = typer.Option("complete", help="θ̂, the pose the unseen joints are pulled to: complete "
                                     "(the prior's reconstruction of the pose with the unseen joints at its "
                                     "typical pose) | reconstruct (its reconstruction of the current pose, as the "
                                     "paper)."),
    symmetric_prior: bool = typer.Option(True, "--symmetric-prior/--plain-prior", help="θ̂ made left-right "
                                         "symmetric (the mean of the pose's and its mirror image's reconstruction), "
                                         "so a prior's sideways lean cannot move face crops sideways; "
                                         "--plain-prior: the prior's own reconstruction, as the paper."),
    part: str = typer.Option("0/1", help="k/n: process the k-th of n disjoint slices (job arrays)."),
    max_count: int = typer.Option(1000, help="Samples per shard.", callback=cli_args.at_least_one),
    overlay: Path | None = typer.Option(None, help="Folder for a check picture per aligned image (DIR/<stem>.jpg): "
                                        "keypoints, fitted joints and body silhouette.",
                                        callback=cli_args.folder_to_write),
    workers: int = typer.Option(0, "--workers", parser=cli_args.workers, metavar="N|auto",
                                help="Processes decoding images and detecting keypoints while the main process "
                                "fits (0: the main process does both; auto: one per CPU core)."),
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
    from mst_pipeline.align.settings import AlignSettings
    from mst_pipeline.fitting.smplify import PRIOR_MODES, SmplifyConfig
    from uh_train.format import spec as shardspec
    from uh_train.format.spec import sanitise_part

    check_fit_inputs(dataset, pare)
    batch = cli_args.renamed(ctx, "batch", batch_size, "--batch-size")
    for name, value, allowed in (("kind", kind, shardspec.KINDS), ("tier", tier, shardspec.TIERS),
                                 ("optimizer", optimizer, ("batched-lbfgs", "adam", "lbfgs")),
                                 ("prior-target", prior_target, PRIOR_MODES)):
        if value is not None and value not in allowed:
            err.print(f"[red]error:[/red] --{name} must be one of {', '.join(allowed)}, not {value!r}")
            raise typer.Exit(2)
    try:  # the rules of a fitted run and of --aligned live in AlignSettings
        settings = AlignSettings(kind=kind, tier=tier, detector=detector, keypoints_dir=keypoints_dir,
                                 batch_size=batch, device=device, part=_part(part), max_count=max_count,
                                 smplify=SmplifyConfig(iterations=iterations, optimizer=optimizer,
                                                       prior_mode=prior_target,
                                                       prior_symmetric=symmetric_prior),
                                 pare=pare, prior=prior, overlay=overlay, workers=workers, aligned=aligned,
                                 person=person)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    settings.device = "cpu" if aligned else usable_device(device)  # nothing is fitted with --aligned
    try:
        src = sanitise_part(source or dataset.resolve().name)
    except ValueError as e:
        err.print(f"[red]error:[/red] source name {source or dataset.resolve().name!r}: {e}; give one made of "
                  "[A-Za-z0-9_-] with --source")
        raise typer.Exit(2) from None
    log = out / "logs" / "align.log"
    diverted = None if verbose else DivertedStderr(log)
    with contextlib.ExitStack() as stack:
        if diverted is not None:  # third-party C++ writes to descriptor 2: keep it off the terminal
            err.file = stack.enter_context(diverted)
            stack.callback(setattr, err, "file", None)
        summary = _align_run(dataset, out, src, settings, space, body_model, diverted)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.kinds.items())) or "none"
    err.print(f"wrote {out}: {summary.written} aligned ({kinds}), {summary.skipped} already done, "
              f"{summary.rejected} rejected in {summary.seconds:.0f} s")
    if settings.kind is None and not settings.aligned and len(summary.kinds) > 1:
        top = summary.kinds.most_common(1)[0][0]
        err.print(f"[yellow]warning:[/yellow] the kind was inferred image by image and differs in this folder "
                  f"({kinds}); a folder of one kind of crop (e.g. faces) should be aligned with --kind "
                  f"(e.g. --kind {top}), or its images split by kind")
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


def builtin_notice(no_space: bool, no_prior: bool) -> str | None:
    """The one line `mst align` prints when it falls back on a built-in: which, and what it means."""
    parts = []
    if no_space:
        parts.append("no --space: the built-in full-body space (ô = 0°, ᾱ of the mean body at rest), so images "
                     "land where an upright mean body's would, not where your full-body set puts people")
    if no_prior:
        parts.append("no --prior: joints no keypoint sees are pulled to rest (θ̂ = 0)")
    if not parts:
        return None
    return "note: " + "; ".join(parts) + " (measure them with `mst space` and `mst fit-prior`)"


def _align_run(dataset: Path, out: Path, source: str, settings, space: Path | None, body_model: Path | None,
               diverted: DivertedStderr | None):
    """`mst align`'s work after its settings are checked: loads the body model, the space and the
    prior, then aligns; exits 1 with the error (and the last lines of the libraries' output when
    DIVERTED holds it) when the run cannot go on."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mst_pipeline.align.folder import align_folder
    from mst_pipeline.body import load_body_model
    from mst_pipeline.detect import BackendUnavailable
    from mst_pipeline.fitting.prior import load_prior
    from mst_pipeline.shards.writer import ShardError
    from mst_pipeline.space import load_space

    def fail(e: Exception) -> typer.Exit:
        err.print(f"[red]error:[/red] {e}")
        for line in diverted.captured()[-20:] if diverted is not None else []:
            err.print(f"  | {line}", markup=False, highlight=False)
        return typer.Exit(1)

    try:
        if settings.aligned:  # nothing is fitted: no body model; the space only sets the tier
            model, pose_prior = None, None
            fb_space = load_space(space) if space else None
        else:
            model = load_body_model(body_model, detector=settings.detector).to(settings.device)
            fb_space = load_space(space, model)
            pose_prior = load_prior(settings.prior, settings.device) if settings.prior else None
    except (ValueError, RuntimeError, OSError) as e:
        raise fail(e) from None
    if not settings.aligned:
        notice = builtin_notice(space is None, settings.prior is None)
        if notice:
            err.print(notice, markup=False, highlight=False)
    columns = (TextColumn("align"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn(), TextColumn("{task.fields[phase]}"))
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("align", total=None, rate="", phase="")
        t0 = [time.perf_counter(), None]

        def progress(done: int, total: int) -> None:
            if t0[1] is None:
                t0[1] = done
            rate = (done - t0[1]) / max(1e-9, time.perf_counter() - t0[0])
            bar.update(task, completed=done, total=total, rate=f"{rate:.2f} img/s")

        try:
            return align_folder(dataset, out, source, fb_space, model, settings, prior=pose_prior, progress=progress,
                                phase=lambda text: bar.update(task, phase=text))
        except (BackendUnavailable, RuntimeError, ValueError, ShardError) as e:  # incl. a busy output, a worker
            # that cannot start
            raise fail(e) from None
