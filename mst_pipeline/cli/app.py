"""The one Typer app of `mst` and the console its commands report on; the commands register
themselves on it from the modules of `mst_pipeline.cli`."""

from __future__ import annotations

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


def check_fit_inputs(dataset: Path, pare: Path | None) -> None:
    """Exit 2 unless DATASET is a folder and --pare, when given, a file (`mst align`, `mst space`)."""
    if not dataset.is_dir():
        err.print(f"[red]error:[/red] {dataset} is not a folder of images")
        raise typer.Exit(2)
    if pare is not None and not pare.is_file():
        err.print(f"[red]error:[/red] --pare {pare} is not a file (the PARE .ckpt)")
        raise typer.Exit(2)
