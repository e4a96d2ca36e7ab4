"""`mst synthetic`, `mst render-people`, `mst render-hands`, `mst derive-sr`: the data the project makes."""

from __future__ import annotations

from pathlib import Path

import typer

from mst_pipeline.cli.app import app, err
from uh_train.format import cli_args


@app.command(cls=cli_args.Command, epilog=cli_args.examples(
    "mst synthetic --out shards/synthetic --n 32",
    "mst synthetic --out tiny/ --n 6 --size 64",
))
def synthetic(
    ctx: typer.Context,
    old_out: Path | None = typer.Argument(None, metavar="OUT", hidden=True, callback=cli_args.folder_to_write),
    out: Path | None = typer.Option(None, "--out", "-o", help="Shard folder to write. Required.",
                                    callback=cli_args.folder_to_write),
    n: int = typer.Option(32, "--n", help="Number of synthetic people.", callback=cli_args.at_least_one),
    size: int = typer.Option(256, "--size", help="Side of the full-body images in px (16 to 4096).",
                             callback=cli_args.number(16, high=4096)),
    old_size: int | None = typer.Option(None, "--res", hidden=True, callback=cli_args.number(16, high=4096)),
    seed: int = typer.Option(0, help="Random seed (same seed -> same shards)."),
) -> None:
    """Write a small multi-source set of synthetic figures with exact homographies.

    Sources: full-body images of --size px, upper-body crops and face crops rendered at higher
    resolution. Useful to test the trainer and the tools without any dataset. Resumable.
    """
    from mst_pipeline.shards.writer import ShardError
    from mst_pipeline.synthesis.synthetic import write_synthetic

    out = cli_args.renamed(ctx, "out", old_out, "OUT", required=True)
    size = cli_args.renamed(ctx, "size", old_size, "--res")
    try:
        counts = write_synthetic(out, n=n, res=size, seed=seed)
    except (ShardError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    err.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command("render-people", cls=cli_args.Command, epilog=cli_args.examples(
    "mst render-people --out people/ --n 32 --size 256",
    "mst render-people --out people/ --n 8 --space space.json --poses space.npz",
))
def render_people(
    ctx: typer.Context,
    old_out: Path | None = typer.Argument(None, metavar="OUT", hidden=True, callback=cli_args.folder_to_write),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder to write: full/, upper/, face/ images with "
                                    "OpenPose JSON, and truth.jsonl. Required.", callback=cli_args.folder_to_write),
    n: int = typer.Option(32, "--n", help="Number of people (indices 0..N-1)."),
    size: int = typer.Option(256, "--size", help="Side of the full-body images in px (square, at least 32); the "
                             "upper-body views are about 3x and the face views 8x as dense.",
                             callback=cli_args.number(32)),
    old_size: int | None = typer.Option(None, "--res", hidden=True, callback=cli_args.number(32)),
    seed: int = typer.Option(0, help="Random seed: the same seed and index give identical images."),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file; default: the open model."),
    poses: Path | None = typer.Option(None, help=".npz of poses (`pose` [N, 72]), e.g. `mst space`'s; "
                                      "default: the built-in standing-pose prior."),
    space: Path | None = typer.Option(None, help="`mst space` output whose average camera frames the full "
                                      "images; default: the built-in full-body space."),
) -> None:
    """Render people from the body model with exact homographies (ground truth for the MST).

    Varied shapes, standing poses and clothing colours; full-body images of --size px, upper-body and
    face views at higher pixel density, each with its ground-truth keypoints as
    [bold]NAME_keypoints.json[/bold] (for [bold]mst align --detector openpose-json[/bold]) and its
    exact H in OUT/truth.jsonl. Deterministic per index, resumable (existing images are kept).
    """
    from mst_pipeline.synthesis.people import render_people as run

    out = cli_args.renamed(ctx, "out", old_out, "OUT", required=True)
    size = cli_args.renamed(ctx, "size", old_size, "--res")
    try:
        summary = run(out, n=n, res=size, seed=seed, body_model=body_model, poses_file=poses, space_file=space)
    except (ValueError, RuntimeError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    coverage = ", ".join(f"{k} {v:.0%}" for k, v in summary.coverage.items())
    err.print(f"wrote {out}: rendered {summary.rendered} images, skipped {summary.skipped} already done in "
              f"{summary.seconds:.0f} s" + (f" (person covers {coverage})" if coverage else ""))


@app.command("render-hands", epilog=cli_args.examples(
    "mst render-hands --out shards/hands --n 7000 --size 512 --hand-poses hand_poses.npz "
    "--backgrounds shards/deepfashion",
    "mst render-hands --out hands/ --n 4 --size 64 --engine cycles --samples 4",
))
def render_hands(
    ctx: typer.Context,
    out: Path = typer.Option(Path("shards"), "--out", "-o", help="Shard folder to write (source 'hands').",
                             callback=cli_args.folder_to_write),
    n: int = typer.Option(7000, "--n", help="Number of hands (indices 0..N-1).", callback=cli_args.at_least_one),
    size: int = typer.Option(512, "--size", help="Side of the images in px (square, 16 to 4096).",
                             callback=cli_args.number(16, high=4096)),
    old_size: int | None = typer.Option(None, "--res", hidden=True, callback=cli_args.number(16, high=4096)),
    seed: int = typer.Option(0, help="Random seed: the same seed and index give identical image bytes."),
    workers: int = typer.Option(1, "--workers", parser=cli_args.workers, metavar="N|auto",
                                help="Blender processes rendering in parallel (at least 1: Blender never runs in "
                                "the main process; auto: one per CPU core).", callback=cli_args.at_least_one),
    engine: str = typer.Option("auto", help="auto | cycles | eevee | workbench. auto: EEVEE with a GPU, "
                               "else Cycles with few samples on the CPU."),
    samples: int = typer.Option(16, help="Render samples (Cycles, EEVEE).", callback=cli_args.at_least_one),
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
    max_count: int = typer.Option(500, help="Samples per shard.", callback=cli_args.at_least_one),
    timeout: float = typer.Option(300.0, help="Seconds before a render is abandoned (rejected).",
                                  callback=cli_args.positive),
) -> None:
    """Render synthetic hands with Blender at the full-body set's average camera (paper App. A).

    Each hand (forearm + hand of the posed body model, fingers posed from --hand-poses) is composited
    over a background patch; mask.png covers the composite (the hand's alpha over generated fabric),
    H is exact. Deterministic per index, resumable (done keys are skipped), failed renders go to
    OUT/rejects.jsonl.
    """
    from mst_pipeline.synthesis.hands import RenderSettings, blender_command
    from mst_pipeline.synthesis.hands import render_hands as run

    size = cli_args.renamed(ctx, "size", old_size, "--res")
    if engine not in ("auto", "cycles", "eevee", "workbench"):
        err.print(f"[red]error:[/red] --engine must be auto, cycles, eevee or workbench, not {engine!r}")
        raise typer.Exit(2)
    if image_format not in ("jpg", "png"):
        err.print(f"[red]error:[/red] --format must be jpg or png, not {image_format!r}")
        raise typer.Exit(2)
    settings = RenderSettings(res=size, engine=engine, samples=samples, image_format=image_format,
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


@app.command("derive-sr", epilog=cli_args.examples(
    "mst derive-sr shards/shhq --from shhq --out shards/shhq_sr",
    "mst derive-sr shhq/ --out shards/shhq_sr --limit 5000",
))
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
