"""`uh-generate`: Render images or patches at any resolution from a checkpoint."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, rich_markup_mode="rich", help="Render images or patches at any resolution from a checkpoint.")


@app.command()
def run() -> None:
    """Render images or patches at any resolution from a checkpoint (not available in this version yet)."""
    typer.secho("uh-generate is not available in this version yet.", fg="yellow", err=True)
    raise typer.Exit(3)


def main() -> None:
    app()
