"""`uh-train`: Train the continuous-resolution generator from shards."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, rich_markup_mode="rich", help="Train the continuous-resolution generator from shards.")


@app.command()
def run() -> None:
    """Train the continuous-resolution generator from shards (not available in this version yet)."""
    typer.secho("uh-train is not available in this version yet.", fg="yellow", err=True)
    raise typer.Exit(3)


def main() -> None:
    app()
