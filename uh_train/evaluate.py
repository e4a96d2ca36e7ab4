"""`uh-eval`: Compute FID, patch-FID, keypoint-FID and precision/recall."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, rich_markup_mode="rich", help="Compute FID, patch-FID, keypoint-FID and precision/recall.")


@app.command()
def run() -> None:
    """Compute FID, patch-FID, keypoint-FID and precision/recall (not available in this version yet)."""
    typer.secho("uh-eval is not available in this version yet.", fg="yellow", err=True)
    raise typer.Exit(3)


def main() -> None:
    app()
