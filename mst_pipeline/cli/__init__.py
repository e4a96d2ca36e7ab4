"""`mst`: the Multi-Source Spatial Transformer command line.

One Typer app (`app`), its commands grouped by pipeline stage: `shards` (validate, preview),
`synthesis` (synthetic, render-people, render-hands, derive-sr), `fitting` (space, fit-prior,
fit-hands), `align` (align) and `body` (the body-model group). Commands import their heavy
dependencies (torch, mediapipe, bpy) lazily so `mst --help` stays fast.
"""

from __future__ import annotations

from mst_pipeline.cli import align, body, fitting, shards, synthesis  # noqa: F401  (they register the commands)
from mst_pipeline.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
