"""`uh-view CKPT`: open a checkpoint in the browser and browse its people at any resolution.

    uh-view CKPT [--port 8000] [--device auto] [--host 127.0.0.1] [--shards DIR] [--size 512] [--out views]
"""

from __future__ import annotations

from pathlib import Path

import typer

from uh_train.format import cli_args

app = typer.Typer(add_completion=False, rich_markup_mode="rich",
                  help="Browse a checkpoint's generated people in the browser, zooming from the body to a face.")

LOCAL = "127.0.0.1"


@app.command(epilog=cli_args.examples(
    "uh-view checkpoints/learned-tiny.safetensors",
    "uh-view runs/s2/network-latest.safetensors --shards shards/synthetic --device cuda --size 768",
    "uh-view runs/s2/network-latest.safetensors --port 8001 --out saved-views/",
))
def view(
    ctx: typer.Context,
    ckpt: Path = typer.Argument(..., help="Our .safetensors checkpoint or a network-snapshot-*.pkl."),
    port: int = typer.Option(8000, help="Port to listen on.", min=1, max=65535),
    host: str = typer.Option(LOCAL, help="Address to bind; anything but 127.0.0.1 lets other machines in."),
    device: str = typer.Option("auto", help="Torch device: auto (cuda when there is a GPU, else cpu), cpu, cuda, "
                               "cuda:1, mps.", callback=cli_args.torch_device_or_auto),
    size: int = typer.Option(512, help="Side of each panel in px, a multiple of the patch resolution r.",
                             callback=cli_args.at_least_one),
    mode: str = typer.Option("single", help="uh-generate's --mode: single (one pass, fast) or stitched."),
    shards: Path | None = typer.Option(None, help="Shard folder: show a real sample in the same window."),
    which: str | None = typer.Option(None, help="Network in the checkpoint (default G_ema, else G)."),
    out: Path = typer.Option(Path("views"), "--out", "-o", help="Where 'save this view' writes its folders.",
                             callback=cli_args.folder_to_write),
    old_out: Path | None = typer.Option(None, "--save-dir", hidden=True, callback=cli_args.folder_to_write),
    cache_mb: float = typer.Option(256.0, help="Memory for recently rendered views (MiB).",
                                   callback=cli_args.positive),
    version: bool = cli_args.version_option("uh-view"),
) -> None:
    """Serve the viewer page at http://HOST:PORT/ (and GET /view.png?seed=&psi=&v=VX,VY&s=&size=)."""
    from uh_train.render import MODES, device_problem, resolve_device

    save_dir = cli_args.renamed(ctx, "out", old_out, "--save-dir")
    if mode not in MODES:
        raise typer.BadParameter(f"choose one of {MODES}", param_hint="--mode")
    if not ckpt.exists():
        raise typer.BadParameter(f"checkpoint {ckpt} not found (a file, or a uh-train run folder)", param_hint="CKPT")
    if shards is not None and not shards.is_dir():
        raise typer.BadParameter(f"{shards} is not a folder", param_hint="--shards")
    from uh_train.checkpoint import CheckpointError, load_generator

    from .queue import ViewCache
    from .real import RealSamples
    from .server import Viewer, make_server

    device = resolve_device(device)
    if (problem := device_problem(device)) is not None:
        raise typer.BadParameter(problem, param_hint="--device")
    try:
        G = load_generator(ckpt, device=device, which=which)
    except CheckpointError as e:
        typer.secho(f"uh-view: error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    r = G.img_resolution
    if size % r:
        raise typer.BadParameter(f"{size} is not a multiple of the patch resolution {r}", param_hint="--size")
    real = None
    if shards is not None:
        try:
            real = RealSamples(shards)
        except (FileNotFoundError, OSError, ValueError) as e:
            typer.secho(f"uh-view: error: {e}", fg="red", err=True)
            raise typer.Exit(1) from None
    viewer = Viewer(G=G, ckpt=ckpt, device=device, mode=mode, save_dir=save_dir, size=size,
                    cache=ViewCache(int(cache_mb * 2**20)), real=real)
    if host != LOCAL:
        typer.secho(f"uh-view: warning: listening on {host}: anyone who can reach this machine on port {port} can use "
                    "the viewer (render on its device, write into its save folder)", fg="yellow", err=True)
    server = make_server(viewer, host, port)
    server.start()
    shown = f"{len(real)} real samples, " if real else ""
    typer.echo(f"uh-view: {ckpt} (r = {r}, {shown}{mode} on {device}) at http://{host}:{port}/  (Ctrl-C to stop)")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        typer.echo("uh-view: stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
