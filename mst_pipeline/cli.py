"""`mst`: the Multi-Source Spatial Transformer command line.

Each command lives in its own module; this file only wires them into one Typer app. Commands
import their heavy dependencies (torch, mediapipe, bpy) lazily so `mst --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

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
    max_defects: int = typer.Option(200, help="Show at most this many defects (all are counted)."),
) -> None:
    """Check every shard of FOLDER against the shard spec and the manifest.

    Exit code 0: clean; 1: at least one defect; 2: unusable arguments (missing folder).
    """
    from mst_pipeline.validate import print_report, validate_folder

    if not folder.exists():
        err.print(f"[red]error:[/red] {folder} does not exist")
        raise typer.Exit(2)
    if not folder.is_dir():
        err.print(f"[red]error:[/red] {folder} is not a folder (give the folder that holds the .tar shards)")
        raise typer.Exit(2)
    report = validate_folder(folder)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, max_defects=max_defects)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def preview(
    folder: Path = typer.Argument(..., help="Shard folder."),
    out: Path = typer.Option(Path("preview.png"), "--out", "-o", help="PNG contact sheet to write."),
    n: int = typer.Option(64, "--n", help="Number of samples (spread over sources)."),
    tile: int = typer.Option(192, help="Tile size in pixels."),
    seed: int = typer.Option(0, help="Seed for picking samples."),
) -> None:
    """Contact sheet: every sample warped into the full-body canvas through its H.

    Faces should land on the head and hands at the wrists of the faint reference silhouette.
    """
    from mst_pipeline.preview import make_contact_sheet
    from mst_pipeline.shards import ShardError

    if not folder.is_dir():
        err.print(f"[red]error:[/red] {folder} is not a shard folder")
        raise typer.Exit(2)
    try:
        shown = make_contact_sheet(folder, out, n=n, tile=tile, seed=seed)
    except ShardError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    err.print(f"wrote {out} ({shown} samples)")


@app.command()
def synthetic(
    out: Path = typer.Argument(..., help="Shard folder to write."),
    n: int = typer.Option(32, "--n", help="Number of synthetic people."),
    res: int = typer.Option(256, help="Full-body image resolution."),
    seed: int = typer.Option(0, help="Random seed (same seed -> same shards)."),
) -> None:
    """Write a small multi-source set of synthetic figures with exact homographies.

    Sources: full-body images at RES, upper-body crops and face crops rendered at higher
    resolution. Useful to test the trainer and the tools without any dataset. Resumable.
    """
    from mst_pipeline.synthetic import write_synthetic

    counts = write_synthetic(out, n=n, res=res, seed=seed)
    err.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def main() -> None:
    app()
