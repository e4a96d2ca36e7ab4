"""The one Typer app of `mst` and the console its commands report on; the commands register
themselves on it from the modules of `mst_pipeline.cli`."""

from __future__ import annotations

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
