"""`mst validate` and `mst preview`: checking shards and looking at them."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mst_pipeline.cli.app import app, err
from uh_train.format import cli_args


@app.command(epilog=cli_args.examples(
    "mst validate shards/",
    "mst validate shards/ --json --workers 0",
))
def validate(
    folder: Path = typer.Argument(..., help="Shard folder to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
    max_defects: int = typer.Option(200, help="Show at most this many defects (all are counted).",
                                    callback=cli_args.non_negative),
    workers: int = typer.Option("auto", "--workers", parser=cli_args.workers, metavar="N|auto",
                                help="Processes checking shards (0 or 1: the main process checks them; auto: one "
                                "per CPU core)."),
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
    report = validate_folder(folder, workers=max(1, workers))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, max_defects=max_defects)
    raise typer.Exit(0 if report.ok else 1)


@app.command(epilog=cli_args.examples(
    "mst preview shards/ --out preview.png --n 64",
))
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
