"""`uh-train`: the command line of the trainer. `uh-train --shards ... --out RUN` trains (its options
are the app's own, so `uh-train --help` lists them; `uh-train run ...`, the older spelling, is a
hidden command with the same options), `uh-train import-snapshot` converts a snapshot. Its defaults
are `TrainConfig`'s and the presets' (`uh_train.networks.presets`), shown in --help."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from uh_train.format import cli_args
from uh_train.networks.presets import PRESETS
from uh_train.training.config import TrainConfig, default, parse_views
from uh_train.training.monitor import console

EXAMPLES = cli_args.examples(
    "uh-train --shards shards/synthetic --out runs/s1 --stage 1 --preset tiny",
    "uh-train --shards shards/synthetic --out runs/s2 --stage 2 --preset tiny --teacher runs/s1",
    "uh-train --shards shards/shhq --out runs/s1 --preset paper --kimg 25000 --batch 32",
)

app = typer.Typer(add_completion=False, rich_markup_mode="rich", no_args_is_help=True,
                  help="Train the continuous-resolution UnitedHuman generator from shards (resumes automatically "
                  "when OUT holds a checkpoint); [bold]uh-train import-snapshot[/bold] converts a snapshot pickle.",
                  epilog=EXAMPLES)


def _per_preset(name: str, fmt=lambda v: f"{v:g}", of=lambda p: p.training) -> str:
    """'per preset: paper 32, small 16, tiny 8' for a preset default (shown as the option's default)."""
    return "per preset: " + ", ".join(f"{p} {fmt(getattr(of(PRESETS[p]), name))}" for p in PRESETS)


def _parse_mix(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, w = item.partition("=")
        try:
            out[name] = float(w)
        except ValueError:
            raise typer.BadParameter(f"--mix expects SOURCE=WEIGHT, got {item!r}") from None
        if not name or not math.isfinite(out[name]) or out[name] < 0:
            raise typer.BadParameter(f"--mix expects SOURCE=WEIGHT with a finite weight >= 0, got {item!r}")
    return out


def train_cmd(
    ctx: typer.Context,
    shards: list[Path] | None = typer.Option(None, "--shards", show_default=False,
                                             help="Shard folder(s); repeat for several sources. Required."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (checkpoints, samples, log, "
                                    "TensorBoard). Required.", callback=cli_args.folder_to_write),
    stage: int = typer.Option(default("stage"), "--stage", min=1, max=2,
                              help="1: full-body images; 2: multi-source patches."),
    teacher: Path | None = typer.Option(None, "--teacher", help="Stage-1 generator (stage 2's teacher and start)."),
    preset: str = typer.Option(default("preset"), "--preset",
                               help=f"{' | '.join(PRESETS)} (network size and the defaults below)."),
    res: int | None = typer.Option(None, "--res", help="Patch resolution r of the networks.",
                                   show_default=_per_preset("img_resolution", of=lambda p: p.generator),
                                   callback=cli_args.power_of_two),
    kimg: float | None = typer.Option(None, "--kimg", callback=cli_args.positive, show_default=_per_preset("kimg"),
                                      help="Training length in thousands of real images."),
    batch: int | None = typer.Option(None, "--batch", callback=cli_args.at_least_one, show_default=_per_preset("batch"),
                                     help="Global batch: real images per step."),
    batch_gpu: int | None = typer.Option(None, "--batch-gpu", help="Per-process batch (accumulates gradients when "
                                         "smaller).", show_default="--batch / processes",
                                         callback=cli_args.at_least_one),
    snapshot_kimg: float | None = typer.Option(None, "--snapshot-kimg", callback=cli_args.positive,
                                               show_default=_per_preset("snapshot_kimg"),
                                               help="Checkpoint interval in kimg."),
    lpips: str = typer.Option(default("lpips"), "--lpips", help="auto | on | off: LPIPS in the teacher pixel loss."),
    lambda_p: float = typer.Option(default("lambda_p"), "--lambda-p", callback=cli_args.non_negative,
                                   help="Stage 2: weight λ_p of the teacher pixel loss (Eq. 8, 10)."),
    lambda_cr: float = typer.Option(default("lambda_cr"), "--lambda-cr", callback=cli_args.non_negative,
                                    help="Weight λ_cr of D's consistency term (Eq. 9, 10)."),
    mix: list[str] = typer.Option([], "--mix", help="Per-source mixing weight SOURCE=W (repeatable)."),
    view: list[str] = typer.Option([], "--view", help="Per-source patch sampling (stage 2), repeatable: "
                                   "SOURCE:scale=log-uniform|uniform-size,s_min=1,s_max=8,keypoints=0.5,jitter=0.25 "
                                   "(any subset; see docs/training.md)."),
    precision: str | None = typer.Option(None, "--precision", show_default=_per_preset("precision", str),
                                         help="fp32 | bf16 | auto: the networks' arithmetic (auto: bf16 on a GPU, "
                                              "fp32 on a CPU)."),
    cutmix_prob: float = typer.Option(default("cutmix_prob"), "--cutmix-prob", min=0.0, max=1.0,
                                      help="Share of whole real views whose CutMix image D trains on (partial "
                                           "patches always; U-Net GAN: 0.5)."),
    cutmix_ramp_kimg: float = typer.Option(default("cutmix_ramp_kimg"), "--cutmix-ramp-kimg",
                                           callback=cli_args.non_negative,
                                           help="Grow that share linearly from 0 over this many kimg (0: from the "
                                                "start)."),
    cutmix_global: bool = typer.Option(default("cutmix_global"), "--cutmix-global/--no-cutmix-global",
                                       help="CutMix images count as fakes to D's global head too (U-Net GAN)."),
    aug: str = typer.Option(default("aug"), "--aug", help="none | ada: adaptive augmentation of what D sees "
                                                          "(StyleGAN2-ADA's heuristic; the paper's runs: none)."),
    ada_target: float = typer.Option(default("ada_target"), "--ada-target",
                                     help="--aug ada: the target of E[sign(D(real))]."),
    ada_kimg: float = typer.Option(default("ada_kimg"), "--ada-kimg", callback=cli_args.positive,
                                   help="--aug ada: p may go from 0 to 1 in this many kimg."),
    ema_kimg: float | None = typer.Option(None, "--ema-kimg", callback=cli_args.positive,
                                          show_default="batch x 10 / 32, as StyleGAN3",
                                          help="Half-life of G_ema in kimg."),
    whole_prob: float = typer.Option(default("whole_prob"), "--whole-prob", min=0.0, max=1.0,
                                     help="Stage 2: probability that a full-body sample is seen whole at T = identity "
                                          "(the rest are patches at sampled (v, s))."),
    diverge_limit: float = typer.Option(default("diverge_limit"), "--diverge-limit", callback=cli_args.non_negative,
                                        help="Stop when an adversarial loss term stays above this for --diverge-steps "
                                             "steps in a row, naming the last snapshot in bounds (0: never)."),
    diverge_steps: int = typer.Option(default("diverge_steps"), "--diverge-steps", callback=cli_args.at_least_one,
                                      help="Steps in a row above --diverge-limit that stop the run."),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror",
                                       show_default=_per_preset("mirror", lambda v: "on" if v else "off"),
                                       help="x-flip half of the samples."),
    seed: int = typer.Option(default("seed"), "--seed"),
    workers: int = typer.Option(default("workers"), "--workers", parser=cli_args.workers, metavar="N|auto",
                                help="Data loader processes (0: the main process loads the data; auto: one per CPU "
                                     "core)."),
    device: str = typer.Option(default("device"), "--device", help="auto (cuda when there is a GPU, else cpu) | cpu "
                               "| cuda | cuda:N (torchrun: each process its own GPU).",
                               callback=cli_args.torch_device_or_auto),
    gamma: float = typer.Option(default("r1_gamma"), "--gamma", help="R1 weight.", callback=cli_args.non_negative),
    share_fakes: bool = typer.Option(default("share_fakes"), "--share-fakes/--no-share-fakes",
                                     help="D trains on the G step's fakes (one render per step), or renders its "
                                          "own from fresh z as StyleGAN3 does (slower)."),
    compile_networks: bool = typer.Option(default("compile"), "--compile", help="torch.compile G and D (pays on a "
                                          "GPU; compiling takes minutes on a CPU)."),
    no_teacher: bool = typer.Option(False, "--no-teacher",
                                    help="Stage 2 without a stage-1 teacher: new networks, no pixel loss (Eq. 8)."),
    teacher_any_stage: bool = typer.Option(False, "--teacher-any-stage",
                                           help="paper preset: accept a stage-2 network as the teacher."),
    new_d: bool = typer.Option(False, "--new-d", help="paper preset: start stage 2 with a new D when the teacher "
                                                      "has no stage-1 training state next to it."),
    allow_config_change: bool = typer.Option(default("allow_config_change"), "--allow-config-change",
                                             help="Resume even if settings differ from the checkpoint's "
                                                  "(the changes are recorded in run.json)."),
    version: bool = cli_args.version_option("uh-train"),
) -> None:
    """Train (resumes automatically when OUT holds a checkpoint)."""
    if ctx.invoked_subcommand is not None:
        return
    from uh_train.train import train

    if not shards:
        raise cli_args.missing(ctx, "shards")
    if out is None:
        raise cli_args.missing(ctx, "out")
    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r} ({', '.join(PRESETS)})", param_hint="--preset")
    if lpips not in ("auto", "on", "off"):
        raise typer.BadParameter("--lpips must be auto, on or off")
    for folder in shards:
        if not folder.is_dir():
            console.print(f"[red]error:[/red] shard folder {folder} does not exist")
            raise typer.Exit(2)
    if device != "auto":
        from uh_train.render import device_problem

        if (problem := device_problem(device)) is not None:
            console.print(f"[red]error:[/red] {problem}")
            raise typer.Exit(2)
    if teacher is not None and not teacher.exists():
        console.print(f"[red]error:[/red] teacher checkpoint {teacher} does not exist")
        raise typer.Exit(2)
    try:
        parse_views(view, 0.5)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--view") from None
    # kimg, batch, snapshot_kimg and mirror left None: TrainConfig takes the preset's.
    try:  # TrainConfig checks what no single option can (config_problems)
        cfg = TrainConfig(
            shards=[str(s) for s in shards], out=str(out), stage=stage, teacher=str(teacher) if teacher else None,
            preset=preset, res=res, kimg=kimg, batch=batch, batch_gpu=batch_gpu, snapshot_kimg=snapshot_kimg,
            lambda_p=lambda_p, lambda_cr=lambda_cr, ema_kimg=ema_kimg, precision=precision,
            aug=aug, ada_target=ada_target, ada_kimg=ada_kimg,
            cutmix_prob=cutmix_prob, cutmix_ramp_kimg=cutmix_ramp_kimg, cutmix_global=cutmix_global,
            lpips=lpips, mix=_parse_mix(mix), seed=seed, workers=workers, device=device, r1_gamma=gamma,
            views=list(view), mirror=mirror, whole_prob=whole_prob, diverge_limit=diverge_limit,
            diverge_steps=diverge_steps, allow_config_change=allow_config_change, share_fakes=share_fakes,
            teacher_any_stage=teacher_any_stage, new_d=new_d,
            compile=compile_networks,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if stage == 2 and teacher is None and not no_teacher:
        console.print("[red]error:[/red] stage 2 needs --teacher (the stage-1 run folder or its network): it starts "
                      "from stage 1 and learns from its images (Eq. 8); --no-teacher trains stage 2 from new "
                      "networks without the teacher's loss")
        raise typer.Exit(2)
    try:
        summary = train(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    if summary.get("stopped"):  # stopped by a signal after a checkpoint: 128 + its number, as the shell reports it
        import signal

        raise typer.Exit(128 + signal.Signals[summary["stopped"]].value)
    console.print(f"done: {summary['steps']} steps, {summary['kimg']:.3f} kimg -> {out}")


# `uh-train` trains; `uh-train run` (hidden) is the spelling of the versions whose training options sat
# under a `run` command, kept for scripts.
app.callback(invoke_without_command=True)(train_cmd)
app.command("run", hidden=True, epilog=EXAMPLES)(train_cmd)


@app.command("import-snapshot", cls=cli_args.Command, epilog=cli_args.examples(
    "uh-train import-snapshot network-snapshot.pkl --out G.safetensors",
))
def import_snapshot_cmd(
    ctx: typer.Context,
    pkl: Path = typer.Argument(..., help="StyleGAN3 / AnyRes / UnitedHuman network-snapshot .pkl"),
    old_out: Path | None = typer.Argument(None, metavar="OUT", hidden=True, callback=cli_args.file_to_write),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output .safetensors generator checkpoint. Required.",
                                    callback=cli_args.file_to_write),
) -> None:
    """Convert a snapshot pickle into our checkpoint format without executing its embedded code."""
    from uh_train.checkpoint import import_snapshot

    out = cli_args.renamed(ctx, "out", old_out, "OUT", required=True)
    try:
        import_snapshot(pkl, out)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"wrote {out}")


def main() -> None:
    app()
