"""`uh-generate`: render images or zoomed patches at any resolution from a checkpoint.

    uh-generate --ckpt C --seeds 0-7 --size 2048 --truncation 0.8 --out DIR [--mode stitched|single]
                [--patch VX,VY --scale S] [--device auto|cpu|cuda]
    uh-generate --init random --preset small --size 512 --seeds 0-3 --out DIR      (smoke test)
    uh-generate import-snapshot network-snapshot.pkl --out G.safetensors

C is our safetensors checkpoint or a StyleGAN3 / AnyRes / UnitedHuman snapshot pickle (read without
executing its embedded code). Writes `seedNNNN.png` per seed and `grid.png`.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import typer

from uh_train.format import cli_args
from uh_train.format.atomic import atomic_write_bytes

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    help="Render images or zoomed patches at any resolution from a checkpoint; [bold]uh-generate "
    "import-snapshot[/bold] converts a snapshot pickle.",
    epilog=cli_args.examples(
        "uh-generate --ckpt runs/s2/network-latest.safetensors --seeds 0-7 --size 256 --out gen/",
        "uh-generate --ckpt runs/s2/network-latest.safetensors --seeds 5 --patch 0.5,0.1 --scale 8 --out face/",
        "uh-generate --init random --preset small --size 512 --seeds 0-3 --out smoke/",
    ),
)


MAX_SEEDS = 10_000  # per run: each is a PNG file and a cell of grid.png


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]; seeds in [0, 2^32) (NumPy's RandomState), at most MAX_SEEDS."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d{1,20})\s*(?:-\s*(\d{1,20})\s*)?", part)
        if not m:
            raise typer.BadParameter(f"cannot read seed range {part!r}; use e.g. 0-7 or 1,5,9", param_hint="--seeds")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise typer.BadParameter(f"empty seed range {part!r}", param_hint="--seeds")
        if hi >= 1 << 32:
            raise typer.BadParameter(f"seed {hi} is outside [0, 2^32); use seeds up to {(1 << 32) - 1}",
                                     param_hint="--seeds")
        ranges.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > MAX_SEEDS:
        raise typer.BadParameter(f"{text} names {count} seeds; at most {MAX_SEEDS} per run (split the range "
                                 "over several runs)", param_hint="--seeds")
    return [seed for lo, hi in ranges for seed in range(lo, hi + 1)]


def parse_point(text: str) -> tuple[float, float]:
    try:
        vx, vy = (float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected VX,VY in full-body space [0,1]^2, got {text!r}") from None
    return vx, vy


def write_png(path: Path, array) -> None:
    """Write a uint8 [H, W, 3] array as PNG, atomically (temporary file in the folder, then rename)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def sample_grid(images: list, cell: int = 256):
    """Images (uint8 [H, W, 3]) resized to at most `cell` px, in a near-square grid."""
    import numpy as np
    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    side = min(cell, images[0].shape[0])
    grid = np.full((rows * side, cols * side, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        small = np.asarray(Image.fromarray(img).resize((side, side), Image.LANCZOS))
        grid[(i // cols) * side : (i // cols + 1) * side, (i % cols) * side : (i % cols + 1) * side] = small
    return grid


def thumbnail(image, cell: int = 256):
    """An image (uint8 [H, W, 3]) reduced to at most `cell` px for grid.png, so the grid holds no full images."""
    import numpy as np
    from PIL import Image

    if image.shape[0] <= cell:
        return image
    return np.asarray(Image.fromarray(image).resize((cell, cell), Image.LANCZOS))


def random_generator(preset: str, seed: int, device: str):
    """An untrained generator of a preset, with w_avg set to the mean w of 1000 latents."""
    import torch

    from .networks import Generator, get_preset

    torch.manual_seed(seed)
    G = Generator(get_preset(preset).generator).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping.w_avg.copy_(G.mapping(torch.randn(1000, G.z_dim))[:, 0].mean(dim=0))
    return G.to(device)


@app.callback(invoke_without_command=True)
def render(
    ctx: typer.Context,
    ckpt: Path | None = typer.Option(None, help="Our .safetensors checkpoint or a network-snapshot-*.pkl."),
    init: str = typer.Option("checkpoint", help="'checkpoint' (use --ckpt) or 'random' (untrained --preset)."),
    preset: str = typer.Option("small", help="Preset for --init random: paper, small or tiny."),
    which: str | None = typer.Option(None, help="Network in the checkpoint (default G_ema, else G)."),
    seeds: str = typer.Option("0-7", help="Which latents: seeds, e.g. 0-7 or 1,4,9-12 (one image each)."),
    size: int | None = typer.Option(
        None, help="Output size in px, a multiple of the patch resolution r (default 4r, or r with --patch).",
        callback=cli_args.at_least_one),
    truncation: float = typer.Option(1.0, help="Truncation psi (1 = none).", callback=cli_args.number()),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder for seedNNNN.png and grid.png. "
                                    "Required.", callback=cli_args.folder_to_write),
    mode: str = typer.Option("stitched", help="stitched: r x r patches at s = size/r; single: one pass."),
    patch: str | None = typer.Option(None, help="VX,VY: render only the square of side 1/--scale around it."),
    scale: float = typer.Option(1.0, help="With --patch: zoom; the region's side is 1/scale of the image.",
                                callback=cli_args.positive),
    max_gib: float = typer.Option(4.0, help="Memory for one single-mode pass; larger images go in blocks.",
                                  callback=cli_args.positive),
    device: str = typer.Option("auto", help="Torch device: auto (cuda when there is a GPU, else cpu), cpu, cuda, "
                               "cuda:1, mps.", callback=cli_args.torch_device_or_auto),
    version: bool = cli_args.version_option("uh-generate"),
) -> None:
    """Render images (or one zoomed region) for a list of seeds."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .render import MODES, available_bytes, largest_size, render_seed, seed_bytes

    if out is None:
        raise cli_args.missing(ctx, "out")
    if mode not in MODES:
        raise typer.BadParameter(f"choose one of {MODES}", param_hint="--mode")
    center = parse_point(patch) if patch else (0.5, 0.5)
    if not all(0 <= v <= 1 for v in center):
        raise typer.BadParameter(f"{patch} is not a point of full-body space [0,1]^2", param_hint="--patch")
    seed_list = parse_seeds(seeds)
    from .render import device_problem, resolve_device

    device = resolve_device(device)
    if (problem := device_problem(device)) is not None:
        raise typer.BadParameter(problem, param_hint="--device")
    if init == "random":
        from .networks import PRESETS

        if preset not in PRESETS:
            raise typer.BadParameter(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}",
                                     param_hint="--preset")
        G = random_generator(preset, 0, device)
    elif init == "checkpoint":
        if ckpt is None or not ckpt.exists():
            raise typer.BadParameter(f"checkpoint {ckpt} not found; pass --ckpt FILE or --init random",
                                     param_hint="--ckpt")
        from .checkpoint import CheckpointError, load_generator

        try:
            G = load_generator(ckpt, device=device, which=which)
        except CheckpointError as e:
            typer.secho(f"uh-generate: error: {e}", fg="red", err=True)
            raise typer.Exit(1) from None
    else:
        raise typer.BadParameter("use 'checkpoint' or 'random'", param_hint="--init")
    r = G.img_resolution
    region_scale = scale if patch else 1.0
    size = size or (r if patch else 4 * r)
    if size % r:
        raise typer.BadParameter(f"{size} is not a multiple of the patch resolution {r}", param_hint="--size")
    need, have = seed_bytes(G, size), available_bytes(device)
    if have is not None and need > have:
        raise typer.BadParameter(
            f"{size} needs about {need / (1 << 30):.3g} GiB to render one image but {have / (1 << 30):.3g} GiB is "
            f"available on {device}; use --size {largest_size(G, have)} or less", param_hint="--size")
    out.mkdir(parents=True, exist_ok=True)
    tiles = (size // r) ** 2
    images = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=False) as progress:
        task = progress.add_task(f"{mode} {size}px", total=len(seed_list) * tiles)
        for seed in seed_list:
            array = render_seed(G, seed, truncation, size, center=center, scale=region_scale, mode=mode,
                                max_bytes=int(max_gib * (1 << 30)), on_block=lambda n: progress.advance(task, n))
            write_png(out / f"seed{seed:04d}.png", array)
            images.append(thumbnail(array))
    write_png(out / "grid.png", sample_grid(images))
    typer.echo(f"wrote {len(images)} images of {size}x{size} px and grid.png to {out}")


@app.command("import-snapshot", cls=cli_args.Command, epilog=cli_args.examples(
    "uh-generate import-snapshot network-snapshot.pkl --out G.safetensors",
    "uh-generate import-snapshot network-snapshot.pkl --out G.safetensors --which G",
))
def import_snapshot_cmd(
    ctx: typer.Context,
    pkl: Path = typer.Argument(..., exists=True, dir_okay=False, help="network-snapshot-*.pkl"),
    old_out: Path | None = typer.Argument(None, metavar="OUT", hidden=True, callback=cli_args.file_to_write),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output .safetensors checkpoint. Required.",
                                    callback=cli_args.file_to_write),
    which: str = typer.Option("G_ema", help="Network to convert."),
) -> None:
    """Convert a StyleGAN3 / AnyRes / UnitedHuman snapshot's generator to our checkpoint format,
    without executing the code embedded in the pickle."""
    from .checkpoint import CheckpointError, import_snapshot

    out = cli_args.renamed(ctx, "out", old_out, "OUT", required=True)
    try:
        cfg = import_snapshot(pkl, out, which=which)
    except CheckpointError as e:
        typer.secho(f"uh-generate: error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out} (r={cfg.img_resolution}, {cfg.num_layers} layers, scale conditioning {cfg.scale_norm})")


def main() -> None:
    app()
