"""The one Typer app of `mst` and the console its commands report on; the commands register
themselves on it from the modules of `mst_pipeline.cli`. `mst --help` lists them by pipeline stage
(`STAGES`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from typer.core import TyperGroup

from uh_train.format import cli_args

# The commands in pipeline order, under the heading of their stage in `mst --help` (docs/cli.md).
STAGES: dict[str, tuple[str, ...]] = {
    "Align images into full-body space": ("align", "space", "fit-prior"),
    "Add sources": ("derive-sr", "fit-hands", "render-hands"),
    "Make data without a dataset": ("render-people", "synthetic"),
    "Body models": ("body-model",),
    "Check shards": ("validate", "preview"),
}
ORDER = tuple(name for names in STAGES.values() for name in names)


class PipelineOrder(TyperGroup):
    """A group that lists its commands in pipeline order, each under its stage's heading."""

    def list_commands(self, ctx) -> list[str]:
        for stage, names in STAGES.items():
            for name in names:
                if name in self.commands:
                    self.commands[name].rich_help_panel = stage
        return sorted(self.commands, key=lambda name: ORDER.index(name) if name in ORDER else len(ORDER))


app = typer.Typer(
    cls=PipelineOrder,
    add_completion=False,
    rich_markup_mode="rich",
    no_args_is_help=True,
    help="Multi-Source Spatial Transformer: align human images of many sources into one full-body "
    "image space and write [bold]unitedhuman-shard/1[/bold] shards for [bold]uh-train[/bold].",
    epilog=cli_args.examples(
        "mst align deepfashion/ --out shards/",
        "mst synthetic --out shards/synthetic --n 32",
        "mst validate shards/synthetic",
    ),
)
err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _options(version: bool = cli_args.version_option("mst")) -> None:
    pass


def usable_device(device: str) -> str:
    """--device as the torch device the command runs on ('auto': CUDA when there is a GPU, else the
    CPU); exits 2 with one line when torch cannot use it here."""
    import torch

    device = cli_args.resolve_device(device, torch)
    if (problem := cli_args.device_problem(device, torch)) is not None:
        err.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(2)
    return device


def check_fit_inputs(dataset: Path, pare: Path | None) -> None:
    """Exit 2 unless DATASET is a folder and --pare, when given, a file (`mst align`, `mst space`)."""
    if not dataset.is_dir():
        err.print(f"[red]error:[/red] {dataset} is not a folder of images")
        raise typer.Exit(2)
    if pare is not None and not pare.is_file():
        err.print(f"[red]error:[/red] --pare {pare} is not a file (the PARE .ckpt)")
        raise typer.Exit(2)
